"""wbc adapt: few-shot adaptation to a shifted domain, on real PBC cells with a synthetic stain shift."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PBC, need_shared
from wbc.adapt import MIN_BN_IMAGES, AdaptConfig, _head, adapt, head_mode, pick_shots, restricted_accuracy
from wbc.errors import WbcError
from wbc.cli import main
from wbc.data import ImageRecord
from wbc.inference import Predictor
from wbc.modelio import default_model_path, load_model, read_info

CLASSES = ("lymphocyte", "neutrophil", "eosinophil", "monocyte")


def _shift(path, dst, order=(2, 0, 1)):
    """A different 'lab': channels rotated and darkened (a stain and camera the model never saw)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    out = np.clip(rgb[..., list(order)] * 0.8, 0, 255).astype(np.uint8)
    Image.fromarray(out).save(dst)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    need_shared()
    root = tmp_path_factory.mktemp("lab")
    for c in CLASSES:
        files = sorted((PBC / c).glob("*.jpg"))[100:116]
        for split, chunk in (("shots", files[:8]), ("test", files[8:])):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for f in chunk:
                _shift(f, root / split / c / f"{f.stem}.png")
    return root


@pytest.fixture(scope="module")
def unlabelled_lab(tmp_path_factory):
    """Another 'lab' for the label-free methods: 128 unlabelled cells in one flat folder, 96 labelled test cells."""
    need_shared()
    root = tmp_path_factory.mktemp("unlabelled_lab")
    (root / "flat").mkdir()
    for c in CLASSES:
        files = sorted((PBC / c).glob("*.jpg"))
        (root / "test" / c).mkdir(parents=True)
        for f in files[100:124]:
            _shift(f, root / "test" / c / f"{f.stem}.png", order=(1, 2, 0))
        for f in files[200:232]:  # no labels anywhere: names carry no class
            _shift(f, root / "flat" / f"cell{len(list((root / 'flat').iterdir())):03d}.png", order=(1, 2, 0))
    return root


def _accuracy(model, folder) -> float:
    pred = Predictor(model)
    paths = sorted(folder.rglob("*.png"))
    probs = np.stack([p for _, p in pred.predict_paths(paths)])
    restricted = [pred.classes.index(c) for c in CLASSES]
    guess = [CLASSES[i] for i in probs[:, restricted].argmax(1)]
    return float(np.mean([g == p.parent.name for g, p in zip(guess, paths)]))


def test_adaptation_recovers_accuracy_on_a_shifted_lab(lab, tmp_path):
    before = _accuracy(None, lab / "test")
    s = adapt(AdaptConfig(data=[str(lab / "shots")], out=str(tmp_path / "a"), shots=8, head="refit", progress=False))
    after = _accuracy(tmp_path / "a" / "model.safetensors", lab / "test")
    assert after >= before + 0.15, (before, after)
    assert s["shots"] == 32 and s["batchnorm_layers_reestimated"] > 10
    info = read_info(tmp_path / "a" / "model.safetensors")
    assert info.classes == read_info(default_model_path()).classes  # classes not given keep their rows
    assert info.training["adaptation"]["per_class"] == {c: 8 for c in sorted(CLASSES)}
    assert json.loads((tmp_path / "a" / "adapt.json").read_text())["temperature"] > 0
    # the unknown threshold is re-fitted on the lab's cells (new BatchNorm statistics and head move every energy)
    assert info.unknown_threshold == s["unknown_threshold"] is not None
    assert info.unknown_threshold != read_info(default_model_path()).unknown_threshold
    # the bundled model is an ensemble: every member's head was re-fitted
    adapted, original = load_model(tmp_path / "a" / "model.safetensors")[0], load_model(None)[0]
    assert len(adapted.members) == 2
    for new, old in zip(adapted.members, original.members):
        assert not torch.equal(_head(new).weight, _head(old).weight)


@pytest.mark.parametrize("bn", [False, True])
def test_auto_head_follows_the_held_out_shots(lab, tmp_path, bn):
    """--head auto re-fits the head only when re-fitted heads beat the kept one on shots they did not see."""
    s = adapt(AdaptConfig(data=[str(lab / "shots")], out=str(tmp_path / "a"), shots=8, bn=bn, head="auto",
                          progress=False))
    c = s["head_choice"]
    assert c["mode"] == "auto" and 0 <= c["accuracy_kept"] <= 1 and 0 <= c["crossfit_accuracy_refit"] <= 1
    assert s["head_refit"] == (c["crossfit_accuracy_refit"] > c["accuracy_kept"])
    adapted, original = load_model(tmp_path / "a" / "model.safetensors")[0], load_model(None)[0]
    same = [torch.equal(_head(new).weight, _head(old).weight) for new, old in zip(adapted.members, original.members)]
    assert same == [not s["head_refit"]] * 2
    if not bn:  # the shifted lab's features under the old statistics: the old head is poor, a new one wins
        assert s["head_refit"] and c["crossfit_accuracy_refit"] >= c["accuracy_kept"] + 0.1, c


def test_restricted_accuracy_and_head_modes():
    logits = torch.tensor([[5.0, 1.0, 0.0], [5.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([1, 2, 1])
    assert restricted_accuracy(logits, y, [0, 1, 2]) == pytest.approx(1 / 3)
    assert restricted_accuracy(logits, y, [1, 2]) == pytest.approx(1.0)  # class 0 was not labelled
    assert head_mode(True) == "refit" and head_mode(False) == "keep" and head_mode("auto") == "auto"
    with pytest.raises(WbcError, match="--head"):
        head_mode("sometimes")


def test_cli_adapt_and_bad_class(lab, tmp_path, capsys):
    assert main(["-q", "adapt", "--data", str(lab / "shots"), "--shots", "2", "--no-head",
                 "--out", str(tmp_path / "b")]) == 0
    assert "BatchNorm layers re-estimated" in capsys.readouterr().out
    (tmp_path / "odd" / "smudge_cell").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 150, 200)).save(tmp_path / "odd" / "smudge_cell" / "x.png")
    code = main(["-q", "adapt", "--data", str(tmp_path / "odd"), "--out", str(tmp_path / "c")])
    assert code == 2 and "Traceback" not in capsys.readouterr().err


def test_pick_shots_prefers_distinct_sources():
    recs = [ImageRecord(f"{i}.png", "a" if i < 10 else "b", group=str(i // 5)) for i in range(14)]
    picked = pick_shots(recs, 2, seed=1)
    assert sorted(r.label for r in picked) == ["a", "a", "b", "b"]
    assert len({r.group for r in picked if r.label == "a"}) == 2  # two different source cells


def test_unlabelled_adaptation_needs_no_labels(unlabelled_lab, tmp_path, capsys):
    """AdaBN alone: the shifted lab's unlabelled cells recover accuracy on held-out ones."""
    before = _accuracy(None, unlabelled_lab / "test")
    assert main(["-q", "adapt", "--unlabelled", str(unlabelled_lab / "flat"), "--out", str(tmp_path / "u")]) == 0
    assert "128 unlabelled images" in capsys.readouterr().out
    after = _accuracy(tmp_path / "u" / "model.safetensors", unlabelled_lab / "test")
    assert after >= before + 0.08, (before, after)
    info = read_info(tmp_path / "u" / "model.safetensors")
    s = info.training["adaptation"]
    assert s["shots"] == 0 and s["unlabelled_images"] == 128 and not s["head_refit"]
    assert info.temperature == read_info(default_model_path()).temperature  # nothing labelled to refit it on
    assert info.unknown_threshold != read_info(default_model_path()).unknown_threshold


def test_unlabelled_manifest_honours_split(lab, tmp_path, capsys):
    """A manifest given as --unlabelled: only the rows of --split are used (labels ignored)."""
    files = sorted((lab / "shots").rglob("*.png"))
    man = tmp_path / "m.csv"
    man.write_text("path,label,split\n" + "".join(f"{f},{f.parent.name},{'train' if i < 40 else 'test'}\n"
                                                 for i, f in enumerate(files * 2)))
    assert main(["-q", "adapt", "--unlabelled", str(man), "--split", "train", "--out", str(tmp_path / "u")]) == 0
    assert "40 unlabelled images" in capsys.readouterr().out


def test_adapt_needs_some_cells(tmp_path, capsys):
    assert main(["-q", "adapt", "--out", str(tmp_path / "x")]) == 2
    assert "nothing to adapt to" in capsys.readouterr().err
    (tmp_path / "few").mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 150, 200)).save(tmp_path / "few" / f"{i}.png")
    assert main(["-q", "adapt", "--unlabelled", str(tmp_path / "few"), "--out", str(tmp_path / "y")]) == 2
    assert "3 readable unlabelled images" in (err := capsys.readouterr().err) and "need at least 4" in err


def test_self_training_goes_beyond_batchnorm_without_labels(unlabelled_lab, lab, tmp_path, capsys):
    """--self-train (SHOT): the feature extractor learns from the lab's unlabelled cells, the heads stay."""
    from wbc.adapt import centroid_pseudo_labels
    unl = unlabelled_lab / "flat"
    before = _accuracy(None, unlabelled_lab / "test")
    assert main(["-q", "adapt", "--unlabelled", str(unl), "--self-train", "2", "--classes",
                 ",".join(CLASSES), "--out", str(tmp_path / "st")]) == 0
    after = _accuracy(tmp_path / "st" / "model.safetensors", unlabelled_lab / "test")
    assert after >= before + 0.12, (before, after)
    info = read_info(tmp_path / "st" / "model.safetensors")
    st = info.training["adaptation"]["self_training"]
    assert st["epochs"] == 2 and len(st["history"]) == 2 and len(st["classes"]) == 4
    assert abs(sum(st["history"][0]["pseudo_label_share"].values()) - 1) < 1e-3
    adapted, original = load_model(tmp_path / "st" / "model.safetensors")[0], load_model(None)[0]
    for new, old in zip(adapted.members, original.members):
        assert torch.equal(_head(new).weight, _head(old).weight)  # the classes keep their meaning
        assert not torch.equal(new.features[0][0].weight, old.features[0][0].weight)  # the features learned
    # pseudo-labels follow the feature clusters, not the (wrong) argmax of a shifted model
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    p = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    assert centroid_pseudo_labels(f, p).tolist() == [0, 0, 1, 1]
    # without labels only, with an unknown class: one line, exit 2
    assert main(["-q", "adapt", "--data", str(lab / "shots"), "--self-train", "1", "--out", str(tmp_path / "x")]) == 2
    assert main(["-q", "adapt", "--unlabelled", str(unl), "--self-train", "1", "--classes", "neutrophil,smudge",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--classes" in capsys.readouterr().err


def test_adapt_refuses_too_few_cells_before_writing_anything(lab, tmp_path, capsys):
    """BatchNorm statistics of fewer than MIN_BN_IMAGES images, or a head re-fitted on one class, would
    turn the model into one that knows only those cells: refused with a one-line error, nothing written."""
    import shutil
    few = tmp_path / "few"
    for c in CLASSES[: MIN_BN_IMAGES - 1]:  # one cell each of fewer classes than the minimum
        (few / c).mkdir(parents=True)
        shutil.copy(next((lab / "shots" / c).glob("*.png")), few / c)
    out = tmp_path / "out"
    assert main(["-q", "adapt", "--data", str(few), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{MIN_BN_IMAGES - 1} distinct cell image(s)" in err and f"at least {MIN_BN_IMAGES}" in err
    assert "--no-batchnorm" in err and "Traceback" not in err and not out.exists()
    assert main(["-q", "adapt", "--data", str(few), "--no-batchnorm", "--out", str(out)]) == 0  # head only
    one = tmp_path / "one"
    shutil.copytree(lab / "shots" / "neutrophil", one / "neutrophil")  # 8 cells, one class
    assert main(["-q", "adapt", "--data", str(one), "--out", str(tmp_path / "one-out")]) == 2
    err = capsys.readouterr().err
    assert "at least 2 classes, got only neutrophil" in err and "--head keep" in err
    assert not (tmp_path / "one-out").exists()
    assert main(["-q", "adapt", "--data", str(one), "--head", "keep", "--out", str(tmp_path / "one-out")]) == 0
    assert json.loads((tmp_path / "one-out" / "adapt.json").read_text())["head_refit"] is False
    single = tmp_path / "single" / "neutrophil"  # one image of one class: neither step can run, one message says so
    single.mkdir(parents=True)
    shutil.copy(next(one.rglob("*.png")), single)
    assert main(["-q", "adapt", "--data", str(single.parent), "--out", str(tmp_path / "single-out")]) == 2
    err = capsys.readouterr().err
    assert "1 distinct cell image(s) of one class (neutrophil): too few to adapt" in err
    assert "--no-batchnorm" not in err and not (tmp_path / "single-out").exists()
