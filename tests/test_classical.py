"""Classical models: registry, train -> save (skops) -> load -> predict round trip on real crops, safe loading."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from wbc.classical import MODELS, ClassicalPredictor, load_classical, make_pipeline, permutation_importances
from wbc.errors import BadImageError, WbcError
from wbc.features import FEATURE_NAMES
from wbc.models.registry import ModelKind, available, get_spec

from conftest import tiny_class_tree

CLASSES = ("lymphocyte", "neutrophil", "eosinophil")


def test_every_classical_model_is_registered():
    assert set(available(ModelKind.CLASSICAL)) == set(MODELS) == {
        "svm", "random-forest", "knn", "mlp", "naive-bayes", "logistic-regression"}
    for name in MODELS:
        spec = get_spec(name)
        assert spec.kind is ModelKind.CLASSICAL and spec.img_size > 0
        pipe = spec.build(num_classes=3, pretrained=False)
        assert [n for n, _ in pipe.steps] == ["features", "impute", "scale", "clf"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_fits_a_synthetic_feature_matrix(name):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, len(FEATURE_NAMES))).astype(np.float32)
    y = np.repeat([0, 1, 2], 20)
    X[y == 1, :10] += 4
    X[y == 2, 10:20] += 4
    X[0] = np.nan  # a failed segmentation is imputed, not fatal
    tail = make_pipeline(name)[1:]
    tail.fit(X, y)
    p = tail.predict_proba(X)
    assert p.shape == (60, 3) and np.allclose(p.sum(1), 1) and (p.argmax(1) == y).mean() > 0.8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from wbc.training import TrainConfig, train
    root = tmp_path_factory.mktemp("classical")
    data = tiny_class_tree(root / "data", per_class=8, classes=CLASSES)
    result = train(TrainConfig(data=[str(data)], out=str(root / "run"), arch="svm", progress=False, val_fraction=0.25))
    return data, root / "run", result


def test_train_writes_a_complete_run(trained):
    _, run, result = trained
    assert result.model_path == run / "model.skops" and result.model_path.is_file()
    assert not list(run.glob("*.pkl")) and not list(run.glob("*.pickle"))
    info = json.loads((run / "run.json").read_text())
    assert info["result"]["classes"] == sorted(CLASSES, key=["eosinophil", "lymphocyte", "neutrophil"].index)
    assert info["result"]["best_params"] and info["result"]["cv_folds"] >= 2
    assert (run / "cv_results.csv").is_file() and (run / "split.csv").is_file()
    assert result.n_train + result.n_val == 3 * 8


def test_round_trip_predicts_real_images(trained):
    from wbc.inference import load_predictor
    data, run, _ = trained
    predictor = load_predictor(run)
    assert isinstance(predictor, ClassicalPredictor)
    assert predictor.info.arch == "svm" and set(predictor.classes) == set(CLASSES)
    paths = sorted(data.rglob("*.jpg"))
    out = list(predictor.predict_paths(paths))
    assert [p for p, _ in out] == paths
    probs = np.stack([p for _, p in out])
    assert probs.shape == (len(paths), 3) and np.allclose(probs.sum(1), 1)
    truth = [predictor.classes.index(p.parent.name) for p in paths]
    assert (probs.argmax(1) == truth).mean() >= 0.7  # mostly its own training images
    one = predictor.predict_images([Image.open(paths[0])])
    assert np.allclose(one[0], probs[0], atol=1e-6)


def test_unreadable_files_go_to_bad(trained, tmp_path):
    _, run, _ = trained
    predictor = ClassicalPredictor(run)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"junk")
    bad: list[BadImageError] = []
    assert list(predictor.predict_paths([broken], bad=bad)) == [] and len(bad) == 1
    with pytest.raises(BadImageError):
        list(predictor.predict_paths([broken]))


def test_permutation_importances(trained):
    data, run, _ = trained
    predictor = ClassicalPredictor(run)
    paths = sorted(data.rglob("*.jpg"))
    list(predictor.predict_paths(paths))
    rows = permutation_importances(predictor, None, [p.parent.name for p in paths], n_repeats=2, top=10)
    assert len(rows) == 10 and {"feature", "region", "importance", "std"} <= set(rows[0])
    assert rows[0]["importance"] >= rows[-1]["importance"]
    with pytest.raises(ValueError):
        permutation_importances(predictor, predictor.last_features, ["lymphocyte"])


def test_loading_refuses_untrusted_types(tmp_path):
    import os

    import skops.io as sio
    evil = tmp_path / "model.skops"
    sio.dump({"format": "wbc-classical", "pipeline": os.system}, evil)  # a reference to a dangerous function
    with pytest.raises(WbcError, match="refusing to load.*system"):
        load_classical(evil)
    junk = tmp_path / "junk.skops"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WbcError, match="not a readable"):
        load_classical(junk)


def test_evaluate_report_shows_feature_importances(trained, tmp_path):
    from wbc.evaluation import EvalConfig, evaluate
    data, run, _ = trained
    evaluate(EvalConfig(data=str(data), out=str(tmp_path / "ev"), model=str(run), progress=False))
    rows = list(csv.DictReader((tmp_path / "ev" / "importances.csv").open()))
    assert len(rows) == len(FEATURE_NAMES) and float(rows[0]["importance"]) >= float(rows[-1]["importance"])
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Feature importances" in html and rows[0]["feature"] in html
