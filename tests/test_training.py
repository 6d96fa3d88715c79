"""Training on real images with tiny budgets: outputs, reproducibility, resume, errors."""

import csv
import json

import pytest
import torch

from conftest import tiny_class_tree
from wbc.errors import WbcError
from wbc.modelio import load_model
from wbc.training import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return tiny_class_tree(tmp_path_factory.mktemp("tree"), per_class=10)


def _cfg(tree, out, **kw):
    base = dict(data=[str(tree)], out=str(out), arch="asghar-cnn", epochs=2, batch_size=8, val_fraction=0.3,
                progress=False, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_a_complete_run(tree, tmp_path):
    res = train(_cfg(tree, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("model.safetensors", "history.csv", "curves.png", "split.csv", "run.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(rows[0])
    model, info = load_model(run)
    assert info.classes == ["eosinophil", "lymphocyte", "neutrophil"] == res.classes
    assert info.arch == "asghar-cnn" and info.preprocess.img_size == 100
    assert info.temperature > 0 and info.training["n_train"] + info.training["n_val"] == 30
    split = list(csv.DictReader(open(run / "split.csv")))
    train_groups = {r["group"] or r["path"] for r in split if r["split"] == "train"}
    val_groups = {r["group"] or r["path"] for r in split if r["split"] == "val"}
    assert not train_groups & val_groups


def test_same_seed_same_weights(tree, tmp_path):
    train(_cfg(tree, tmp_path / "a", epochs=1, precision="fp32"))
    train(_cfg(tree, tmp_path / "b", epochs=1, precision="fp32"))
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_continues_from_checkpoint(tree, tmp_path):
    train(_cfg(tree, tmp_path / "r", epochs=1, schedule="constant"))
    with pytest.raises(WbcError, match="not empty"):
        train(_cfg(tree, tmp_path / "r", epochs=2, schedule="constant"))
    res = train(_cfg(tree, tmp_path / "r", epochs=2, schedule="constant", resume=True))
    assert res.epochs_run == 2
    rows = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["result"]["epochs_run"] == 2


def test_fixed_input_models_reject_other_sizes(tree, tmp_path):
    with pytest.raises(WbcError, match="fixed input of 102x102"):
        train(_cfg(tree, tmp_path / "x", arch="risodkar-cnn", img_size=64))


def test_pretrained_backbone_learns_quickly(tmp_path):
    """MobileNetV2 from its offline ImageNet weights learns real cells in a few short epochs."""
    tree = tiny_class_tree(tmp_path / "t", per_class=24)
    res = train(_cfg(tree, tmp_path / "m", arch="mobilenet_v2", img_size=96, epochs=4, lr=1e-3, batch_size=16,
                     val_fraction=0.25))
    assert res.best_val_accuracy > 0.6, res  # chance is 1/3


def test_monitor_accuracy_keeps_the_most_accurate_epoch(tree, tmp_path):
    res = train(_cfg(tree, tmp_path / "acc", epochs=3, monitor="val_accuracy"))
    rows = list(csv.DictReader(open(tmp_path / "acc" / "history.csv")))
    accs = [float(r["val_accuracy"]) for r in rows]
    assert res.best_epoch == accs.index(max(accs)) + 1
    assert res.best_val_accuracy == pytest.approx(max(accs), abs=1e-4)


def test_fast_recipe_from_the_cli(tree, tmp_path):
    from wbc.cli import main
    out = tmp_path / "fast"
    assert main(["-q", "train", "--fast", "--data", str(tree), "--max-per-class", "4", "--out", str(out)]) == 0
    cfg = json.loads((out / "run.json").read_text())["config"]
    assert cfg["arch"] == "mobilenet_v2" and cfg["img_size"] == 128 and cfg["lr"] == 3e-4
    assert cfg["preprocess"]["crop"] == 0.7 and cfg["class_weights"] and cfg["pretrained"]
    model, info = load_model(out)
    assert info.preprocess.img_size == 128 and info.preprocess.crop == 0.7


def test_train_without_arch_or_fast_is_a_clear_error(tree, tmp_path, capsys):
    from wbc.cli import main
    assert main(["train", "--data", str(tree), "--out", str(tmp_path / "x")]) == 2
    assert "--arch" in capsys.readouterr().err


def test_max_per_class_caps_each_source_on_its_own(tmp_path):
    # a big source of one class must not crowd the other source's images of that class out of the cap
    from wbc.training import prepare_split
    big = tiny_class_tree(tmp_path / "big", per_class=12, classes=("neutrophil",))
    small = tiny_class_tree(tmp_path / "small", per_class=4, classes=("lymphocyte", "neutrophil"))
    # distinct files in the small source (tiny_class_tree copies the same first images)
    for f in (small / "neutrophil").iterdir():
        f.rename(f.with_name("s_" + f.name))
    cfg = TrainConfig(data=[str(big), str(small)], out=str(tmp_path / "o"), arch="asghar-cnn", val_fraction=0.25,
                      max_per_class=5, cap_each_source=True, seed=0, progress=False)
    train_recs, _ = prepare_split(cfg)
    per_source = {}
    for r in train_recs:
        key = ("small" if "/small/" in str(r.path) else "big", r.label)
        per_source[key] = per_source.get(key, 0) + 1
    assert per_source[("big", "neutrophil")] == 5
    assert 1 <= per_source[("small", "neutrophil")] <= 4 and ("small", "lymphocyte") in per_source


def test_cap_each_source_needs_a_cap_and_is_wired_to_the_cli(tmp_path):
    from wbc.cli import _train_config, build_parser
    from wbc.training import prepare_split
    with pytest.raises(WbcError, match="--max-per-class"):
        prepare_split(TrainConfig(data=[str(tiny_class_tree(tmp_path / "t", per_class=4))], out=str(tmp_path / "o"),
                                  arch="asghar-cnn", cap_each_source=True, progress=False))
    args = build_parser().parse_args(["train", "--data", "a", "--data", "b", "--arch", "asghar-cnn",
                                      "--max-per-class", "5", "--cap-each-source", "--out", "o"])
    cfg = _train_config(args, args.arch, args.out)
    assert cfg.cap_each_source and cfg.max_per_class == 5


def test_refit_trains_on_train_and_val_and_keeps_the_last_epoch(tree, tmp_path):
    """--refit: the final fit after the recipe was chosen; the val split joins training, nothing is held out."""
    files = sorted(tree.rglob("*.jpg")) + sorted(tree.rglob("*.png"))
    man = tmp_path / "m.csv"
    man.write_text("path,label,split\n" + "".join(
        f"{f},{f.parent.name},{('val', 'test')[i % 2] if i % 5 == 0 else 'train'}\n" for i, f in enumerate(files)))
    n_test = sum(1 for i in range(len(files)) if i % 10 == 5)
    res = train(_cfg(man, tmp_path / "r", epochs=2, refit=True, monitor="val_accuracy"))
    rows = list(csv.DictReader(open(tmp_path / "r" / "split.csv")))
    assert {r["split"] for r in rows} == {"train"} and len(rows) == len(files) - n_test  # train + val, not test
    assert res.n_val == 0 and res.best_epoch == res.epochs_run == 2  # the last epoch of the fixed schedule
    assert res.temperature == 1.0  # nothing held out to fit it on (wbc calibrate --from-model carries one over)
    with pytest.raises(WbcError, match="--refit"):
        train(_cfg(man, tmp_path / "x", refit=True, val_data=[str(man)]))


def test_mixstyle_changes_training_not_the_saved_network(tree, tmp_path):
    """--mixstyle trains the same architecture (nothing added to the saved model) along another path; an
    architecture without known stages is a clear error."""
    train(_cfg(tree, tmp_path / "plain", epochs=1, precision="fp32"))
    train(_cfg(tree, tmp_path / "mix", epochs=1, precision="fp32", mixstyle=1.0))
    a, _ = load_model(tmp_path / "plain")
    b, info = load_model(tmp_path / "mix")
    assert list(a.state_dict()) == list(b.state_dict())
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert info.training["config"]["mixstyle"] == 1.0
    assert not b._forward_hooks and all(not m._forward_hooks for m in b.modules())
    with pytest.raises(WbcError, match="--mixstyle: MixStyle does not know the stages of Inception3"):
        train(_cfg(tree, tmp_path / "inc", arch="inception_v3", pretrained=False, mixstyle=0.5, img_size=75))
    assert not (tmp_path / "inc").exists()  # refused before anything was written
    with pytest.raises(WbcError, match=r"--mixstyle is a probability in \[0, 1\], got 1.5"):
        train(_cfg(tree, tmp_path / "p", mixstyle=1.5))


@pytest.mark.parametrize("arch", ["asghar-cnn", "knn"])
def test_a_start_that_fails_on_bad_images_leaves_no_run_folder(tmp_path, arch):
    """Fix the file, run the same command again: no leftover folder asks for --resume (which has nothing to resume)."""
    import shutil
    data = tiny_class_tree(tmp_path / "data", per_class=6)
    bad = data / "neutrophil" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    with pytest.raises(WbcError, match="broken.jpg"):
        train(_cfg(data, out, arch=arch, epochs=1))
    assert not out.exists()
    bad.unlink()
    train(_cfg(data, out, arch=arch, epochs=1))
    rows = list(csv.DictReader(open(out / "split.csv")))
    assert len(rows) == 18 and not any("broken" in r["path"] for r in rows)
    shutil.rmtree(out)
    bad.write_bytes(b"not a jpeg")  # --skip-bad: the split lists the images trained on, not the skipped one
    train(_cfg(data, out, arch=arch, epochs=1, skip_bad=True))
    assert not any("broken" in r["path"] for r in csv.DictReader(open(out / "split.csv")))
