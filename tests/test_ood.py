"""The unknown verdict for out-of-distribution input (wbc.ood, docs/decisions/0013): the rule's pieces, and
the bundled model on real cells (the bundled samples) against synthetic non-microscopy images, through
predict, evaluate, count, calibrate and evaluate-ood. Runs without ../shared/data."""

import csv
import dataclasses
import doctest
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import wbc.ood
from conftest import SAMPLES
from wbc.cli import main
from wbc.inference import Predictor, load_predictor, predict_files
from wbc.modelio import ModelInfo, default_int8_path, default_model_path, read_info
from wbc.ood import (OodScore, auroc, energy, is_unknown, model_threshold, ood_inputs, ood_metrics, score_images,
                     score_kind, unknown_threshold)
from wbc.preprocessing import PreprocessConfig

CELLS = sorted(SAMPLES.glob("*.jp*g"))


# ----------------------------------------------------------------------------------------------
# the rule's pieces


@pytest.mark.parametrize("name,logits,expected", [
    ("uniform", [[0.0, 0.0]], [np.log(2)]),
    ("one confident", [[10.0, -10.0]], [10.0 + np.log1p(np.exp(-20.0))]),
    ("shift adds", [[3.0, 3.0, 3.0]], [3.0 + np.log(3)]),
    ("huge logits stay finite", [[1000.0, 1000.0]], [1000.0 + np.log(2)]),
    ("no rows", np.zeros((0, 4)), []),
])
def test_energy_cases(name, logits, expected):
    np.testing.assert_allclose(energy(np.array(logits)), expected, rtol=1e-9)


def test_energy_rejects_a_vector():
    with pytest.raises(ValueError, match="shape"):
        energy(np.zeros(3))


@pytest.mark.parametrize("scores,tpr,expected", [
    (np.arange(101.0), 0.95, 5.0),
    (np.arange(30.0), 0.95, 1.0),  # 29 of 30 pass: never fewer than tpr
    (np.arange(20.0)[::-1], 0.95, 1.0),  # exactly 19 of 20 pass, despite 1 - 0.95 != 0.05 in floating point
    (np.arange(101.0), 0.5, 50.0),
    (np.full(7, 2.5), 0.95, 2.5),
    (np.array([4.0]), 0.95, 4.0),
])
def test_unknown_threshold_is_the_lower_quantile(scores, tpr, expected):
    t = unknown_threshold(scores, tpr)
    assert t == pytest.approx(expected)
    assert (scores >= t).mean() >= tpr  # at least tpr of the in-distribution scores pass


@pytest.mark.parametrize("scores,tpr", [(np.array([]), 0.95), (np.array([1.0, np.nan]), 0.95),
                                        (np.zeros((2, 2)), 0.95), (np.arange(5.0), 0.0), (np.arange(5.0), 1.0)])
def test_unknown_threshold_rejects_bad_input(scores, tpr):
    with pytest.raises(ValueError):
        unknown_threshold(scores, tpr)


def test_is_unknown_is_strictly_below_and_never_without_a_threshold():
    assert is_unknown(np.array([1.0, 5.0, 9.0]), 5.0).tolist() == [True, False, False]
    assert not is_unknown(np.array([-1e9]), None).any()


@pytest.mark.parametrize("name,a,b,expected", [
    ("separated", [5.0, 6.0], [1.0, 2.0], 1.0),
    ("reversed", [1.0, 2.0], [5.0, 6.0], 0.0),
    ("all tied", [3.0, 3.0], [3.0], 0.5),
    ("one tie", [3.0, 4.0], [1.0, 3.0], 0.875),
])
def test_auroc_cases(name, a, b, expected):
    assert auroc(np.array(a), np.array(b)) == pytest.approx(expected)


def test_auroc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 200), np.round(rng.normal(0, 1, 50), 1)
    assert auroc(a, b) == pytest.approx(roc_auc_score(np.r_[np.ones(200), np.zeros(50)], np.r_[a, b]))
    with pytest.raises(ValueError):
        auroc(a, np.array([]))


def test_ood_metrics_at_a_given_threshold():
    m = ood_metrics(np.arange(100.0), np.array([-1.0, 10.0, 200.0]), threshold=20.0)
    assert m.threshold == 20.0 and m.ood_unknown == pytest.approx(2 / 3) and m.in_unknown == 0.2
    assert m.fpr_at_95_tpr == pytest.approx(2 / 3)  # at the 95 % TPR point (5.0) only -1 is caught


def test_module_examples():
    assert doctest.testmod(wbc.ood).failed == 0


def test_classical_models_give_no_unknown_verdict(tmp_path):
    class Classical:  # a predictor without logits, like wbc.classical.ClassicalPredictor
        classes = ["a", "b"]
        info = ModelInfo("svm", classes, PreprocessConfig(), review_threshold=0.7, unknown_threshold=3.0)

        def predict_images(self, images):
            return np.tile([0.6, 0.4], (len(images), 1))

        def predict_paths(self, paths, **_):  # confident on "cell" files, unsure on the others
            for p in paths:
                yield p, np.array([0.9, 0.1]) if "cell" in p.name else np.array([0.55, 0.45])

    stub = Classical()
    assert score_kind(stub) is OodScore.MSP and model_threshold(stub) is None
    probs, scores = score_images(stub, [Image.new("RGB", (8, 8))])
    assert scores.tolist() == [0.6] and probs.shape == (1, 2)
    assert [p.unknown for p in predict_files(stub, [tmp_path / "x.png"])] == [False]
    r = wbc.ood.evaluate_ood(stub, [tmp_path / f"cell{i}.png" for i in range(4)], {"rbc": [tmp_path / "r.png"]})
    assert r["score"] == "msp" and "calls nothing unknown" in r["threshold_source"] and r["threshold"] == 0.9
    assert r["kinds"]["rbc"]["auroc"] == 1.0 and "auroc_msp" not in r["kinds"]["rbc"]
    assert r["kinds"]["rbc"]["below_review"] == 1.0 and r["in_below_review"] == 0.0


def test_ood_inputs_name_kinds_after_sub_folders(tmp_path):
    for rel in ("set/rbc/a.png", "set/rbc/deep/b.png", "set/noise/c.png", "loose/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    kinds = ood_inputs([tmp_path / "set", tmp_path / "loose" / "d.png"])
    assert {k: len(v) for k, v in kinds.items()} == {"loose": 1, "noise": 1, "rbc": 2}


# ----------------------------------------------------------------------------------------------
# the bundled model on real and synthetic images


def synthetic_images() -> dict[str, Image.Image]:
    """Non-microscopy images the bundled model must call unknown (energies ~2-4 against a threshold ~5.4).

    Not small pixel noise: upscaled to the model's input it looks like eosinophil granules and passes
    (docs/decisions/0013), so the noise here is fine-grained (300 px).
    """
    rng = np.random.default_rng(0)
    flat = {name: Image.new("RGB", (200, 160), colour) for name, colour in
            (("grey", (128, 128, 128)), ("white", (255, 255, 255)), ("pink", (230, 180, 200)),
             ("purple", (120, 60, 160)))}
    return {**flat, "noise": Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))}


@pytest.fixture(scope="module")
def ood_dir(tmp_path_factory):
    """``<tmp>/flat/*.png`` and ``<tmp>/noise/*.png``."""
    root = tmp_path_factory.mktemp("ood")
    for name, im in synthetic_images().items():
        kind = "noise" if name == "noise" else "flat"
        (root / kind).mkdir(exist_ok=True)
        im.save(root / kind / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def cell_tree(tmp_path_factory):
    """The bundled samples as a labelled class-folder tree (the class is in the file name)."""
    root = tmp_path_factory.mktemp("cells")
    for f in CELLS:
        label = f.name.split("_")[1]
        (root / label).mkdir(exist_ok=True)
        shutil.copy(f, root / label / f.name)
    return root


def test_bundled_model_and_its_int8_twin_carry_the_same_unknown_threshold():
    import onnx
    info = read_info(default_model_path())
    meta = {p.key: p.value for p in onnx.load(str(default_int8_path()), load_external_data=False).metadata_props}
    assert info.unknown_threshold is not None and 0 < info.unknown_threshold < 20
    assert ModelInfo.from_json(meta["wbc"]).unknown_threshold == info.unknown_threshold
    assert info.training["calibration"]["unknown_tpr"] == 0.95


def test_predict_json_calls_cells_known_and_synthetic_images_unknown(ood_dir, capsys):
    assert main(["-q", "predict", "--format", "json", str(SAMPLES), str(ood_dir)]) == 0
    captured = capsys.readouterr()
    out = {r["path"]: r for r in json.loads(captured.out)}
    cells = [r for p, r in out.items() if p.startswith(str(SAMPLES))]
    others = [r for p, r in out.items() if p.startswith(str(ood_dir))]
    assert len(cells) == len(CELLS) == 12 and len(others) == len(synthetic_images())
    # 95 % of real cells pass by construction of the threshold: at most one of the 12 samples may not
    n_cells_unknown = sum(r["unknown"] for r in cells)
    assert n_cells_unknown <= 1, [(r["path"], r["ood_score"]) for r in cells]
    assert [r["unknown"] for r in others] == [True] * len(others), [(r["path"], r["ood_score"]) for r in others]
    threshold = read_info(default_model_path()).unknown_threshold
    assert sorted(r["ood_score"] for r in cells)[1] >= threshold > max(r["ood_score"] for r in others)
    assert all(r["review"] for r in others)  # an unknown image goes to review whatever its confidence
    n_review = sum(r["review"] for r in out.values())
    assert (f"{n_review} of {len(out)} images to review: calibrated confidence below" in captured.err
            and f"({len(others) + n_cells_unknown} unknown: not a white blood cell" in captured.err), captured.err


def test_predict_table_and_csv_show_the_verdict(ood_dir, capsys):
    grey, cell = str(ood_dir / "flat" / "grey.png"), str(CELLS[0])
    assert main(["-q", "predict", grey, cell]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(grey) and lines[1].endswith("UNKNOWN") and not lines[2].endswith("UNKNOWN")
    assert main(["-q", "predict", "--format", "csv", grey, cell]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["unknown"] for r in rows] == ["1", "0"] and float(rows[1]["ood_score"]) > float(rows[0]["ood_score"])


def test_torch_and_onnxruntime_backends_agree_on_the_verdict():
    images = [Image.open(f) for f in CELLS] + list(synthetic_images().values())
    verdicts = {}
    for name, pred in (("torch fp32", Predictor(precision="fp32")), ("torch auto", Predictor()),
                       ("onnxruntime fp32", Predictor(backend="onnxruntime")), ("int8 (auto)", load_predictor(None))):
        _, scores = score_images(pred, images)
        verdicts[name] = is_unknown(scores, model_threshold(pred)).tolist()
    first = next(iter(verdicts.values()))
    assert all(v == first for v in verdicts.values()), verdicts  # every backend gives the same verdicts
    assert first[len(CELLS):] == [True] * len(synthetic_images()) and sum(first[:len(CELLS)]) <= 1, verdicts
    fast = list(predict_files(load_predictor(None), CELLS))  # the path `wbc predict` takes
    assert [p.unknown for p in fast] == first[:len(CELLS)] and all(p.ood_score > 0 for p in fast)


def test_calibrate_writes_the_unknown_threshold(cell_tree, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["-q", "calibrate", "--data", str(cell_tree), "--split", "", "--unknown-tpr", "0.5",
                 "--out", str(out)]) == 0
    assert "unknown below energy" in capsys.readouterr().out
    info = read_info(out)
    pred = Predictor()
    z = pred.logits_images([Image.open(f) for f in sorted(cell_tree.rglob("*.jp*g"))])
    assert info.unknown_threshold == pytest.approx(np.sort(energy(z))[6], abs=1e-3)  # tpr 0.5: 6 of 12 below
    assert info.training["calibration"]["unknown_tpr"] == 0.5
    assert main(["-q", "calibrate", "--data", str(cell_tree), "--split", "", "--unknown-tpr", "1.5",
                 "--out", str(out)]) == 2
    assert "--unknown-tpr" in capsys.readouterr().err


def test_evaluate_ood_writes_auroc_on_real_images(cell_tree, ood_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["-q", "evaluate-ood", "--data", str(cell_tree), "--ood", str(ood_dir), "--out", str(out)]) == 0
    assert "AUROC" in capsys.readouterr().out
    r = json.loads((out / "ood.json").read_text())
    assert r["score"] == "energy" and r["threshold_source"] == "model"
    assert r["threshold"] == read_info(default_model_path()).unknown_threshold
    assert r["n_in"] == 12 and r["in_unknown"] <= 1 / 12 and r["in_by_data"][0]["n"] == 12
    assert set(r["kinds"]) == {"flat", "noise"} and r["kinds"]["flat"]["n"] == 4
    for k in (*r["kinds"].values(), r["all"]):
        assert k["auroc"] >= 11 / 12 and k["unknown"] == 1.0 and k["below_review"] == 1.0 and 0 <= k["auroc_msp"] <= 1
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 + 5 and {r["set"] for r in rows} == {"in", "ood"}


def test_evaluate_reports_the_unknown_share(cell_tree, tmp_path):
    from wbc.evaluation import EvalConfig, evaluate
    data = tmp_path / "data"
    shutil.copytree(cell_tree, data)
    synthetic_images()["grey"].save(data / "lymphocyte" / "grey.png")  # a labelled "cell" that is not one
    m = evaluate(EvalConfig(data=str(data), out=str(tmp_path / "ev"), n_boot=10, progress=False))
    u = m["unknown"]
    assert u["n"] in (1, 2) and u["share"] == pytest.approx(u["n"] / 13) and u["threshold"] is not None
    with open(tmp_path / "ev" / "predictions.csv") as fh:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(fh)}
    assert rows["grey.png"]["unknown"] == "1" and sum(r["unknown"] == "1" for r in rows.values()) == u["n"]
    assert "called unknown" in (tmp_path / "ev" / "report.html").read_text()


def test_count_sends_unknown_cells_to_review_and_lists_them(tmp_path):
    from wbc.counting import UNKNOWN_REASON, CountConfig, Sample, count_sample
    pred = Predictor()
    pred.info = dataclasses.replace(pred.info, unknown_threshold=1e9)  # every detection is unknown
    field = SAMPLES / "kaggle_eosinophil_7_1440.jpeg"  # a BCCD field at half size: one WBC
    res = count_sample(Sample("s", [field]), tmp_path, pred, CountConfig(inputs=[], out=str(tmp_path)))
    assert res.cells and all(c.unknown and c.review and UNKNOWN_REASON in c.review_reason for c in res.cells)
    assert res.differential.n_cells == len(res.cells) and res.differential.n_review == len(res.cells)  # counted
    assert any("unlike any cell the model knows" in w and "#1" in w for w in res.differential.warnings)
    with open(tmp_path / "cells.csv") as fh:
        assert [r["unknown"] for r in csv.DictReader(fh)] == ["1"] * len(res.cells)
    d = json.loads((tmp_path / "differential.json").read_text())
    assert d["method"]["unknown_threshold"] == 1e9 and d["method"]["n_unknown"] == len(res.cells)
    normal = count_sample(Sample("s", [field]), tmp_path / "n", Predictor(), CountConfig(inputs=[], out=""))
    assert not any(c.unknown for c in normal.cells)  # the real threshold: a real cell is known


# no stain at all: plasma, an empty field


def plasma(seed: int = 0) -> Image.Image:
    """A pinkish, slightly textured plasma-like crop with no cell in it (what Reinhard stretches to texture)."""
    rng = np.random.default_rng(seed)
    base = np.array([225, 200, 205], np.float32) + rng.normal(0, 4, (240, 320, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def test_bundled_samples_are_stained_and_plasma_is_not():
    from wbc.preprocessing import prepare_checked
    pre = read_info(default_model_path()).preprocess
    assert all(prepare_checked(Image.open(f).convert("RGB"), pre)[1] for f in CELLS)
    empty = [plasma(s) for s in range(3)] + [Image.new("RGB", (200, 160), (128, 128, 128))]
    assert not any(prepare_checked(im, pre)[1] for im in empty)


def test_every_backend_abstains_on_an_unstained_crop(tmp_path):
    from wbc.inference import softmax_np
    from wbc.preprocessing import prepare
    """Energy log(C), below the unknown threshold; the probabilities (and so every accuracy) unchanged."""
    images = [plasma(1), Image.open(CELLS[0])]
    tmp = tmp_path / "plasma.png"
    plasma(1).save(tmp)
    for pred in (Predictor(precision="fp32"), Predictor(backend="onnxruntime"), load_predictor(None)):
        probs, scores = score_images(pred, images)
        assert scores[0] == pytest.approx(np.log(8), abs=1e-4) and probs[0].sum() == pytest.approx(1, abs=1e-5)
        raw = pred.logits_arrays(np.stack([prepare(plasma(1), pred.info.preprocess)]))  # without the check
        assert probs[0] == pytest.approx(softmax_np(raw, pred.info.temperature)[0], abs=1e-4)
        assert is_unknown(scores, model_threshold(pred)).tolist() == [True, False]
        assert probs[1].max() > 0.5  # a real cell keeps its opinion
        (p,) = predict_files(pred, [tmp])  # the streaming path (`wbc predict`) too
        assert p.unknown and p.ood_score == pytest.approx(np.log(8), abs=1e-4)
