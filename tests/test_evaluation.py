"""`wbc evaluate` writes every promised output, with correct numbers."""

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import KAGGLE, SAMPLES, tiny_class_tree
from wbc.evaluation import EvalConfig, evaluate
from wbc.errors import WbcError

KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "accuracy_ci95", "n_images", "classes", "confusion_matrix",
        "per_class"}


@pytest.fixture(scope="module")
def sample_tree(tmp_path_factory):
    """The bundled samples as a class tree (labels from the file names)."""
    root = tmp_path_factory.mktemp("samples")
    for f in SAMPLES.glob("*.jp*g"):
        label = f.name.split("_")[1]
        (root / label).mkdir(exist_ok=True)
        shutil.copy(f, root / label / f.name)
    return root


def test_evaluate_default_model_on_samples(sample_tree, tmp_path):
    m = evaluate(EvalConfig(data=str(sample_tree), out=str(tmp_path), progress=False, n_boot=200))
    assert KEYS <= set(m)
    assert m["n_images"] == 12 and not m["restricted_to_data_classes"]
    for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "roc.png", "misclassified.png",
                 "report.html", "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert saved["accuracy"] == pytest.approx(np.mean([int(r["correct"]) for r in rows]))
    assert np.array(saved["confusion_matrix"]).sum() == 12
    assert set(saved["per_class"]["neutrophil"]) >= {"precision", "recall", "specificity", "f1", "auc", "support"}
    lo, hi = saved["accuracy_ci95"]
    assert lo <= saved["accuracy"] <= hi
    assert m["accuracy"] >= 10 / 12  # samples come from the held-out test splits


def test_subset_of_classes_is_restricted_and_said(tmp_path, shared):
    tree = tiny_class_tree(tmp_path / "d", per_class=3, classes=("lymphocyte", "neutrophil"))
    m = evaluate(EvalConfig(data=str(tree), out=str(tmp_path / "o"), progress=False, n_boot=50))
    assert m["restricted_to_data_classes"] and m["classes"] == ["lymphocyte", "neutrophil"]
    assert "restricted to the data" in (tmp_path / "o" / "report.html").read_text()
    m2 = evaluate(EvalConfig(data=str(tree), out=str(tmp_path / "o2"), progress=False, n_boot=50, restrict=False))
    assert len(m2["classes"]) == 8


def test_unknown_class_is_a_clear_error(tmp_path, shared):
    tree = tiny_class_tree(tmp_path / "d", per_class=2, classes=("lymphocyte",))
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},lymphocyte\n" for p in (tree / "lymphocyte").iterdir()))
    from wbc.modelio import ModelInfo, save_model
    from wbc.models.registry import get_spec
    from wbc.preprocessing import PreprocessConfig
    # a 2-class model (eosinophil, neutrophil) asked to score lymphocytes
    run = tmp_path / "fake"
    run.mkdir()
    net = get_spec("asghar-cnn").build(num_classes=2)
    save_model(run / "model.safetensors", net, ModelInfo("asghar-cnn", ["eosinophil", "neutrophil"],
                                                          PreprocessConfig(img_size=100)))
    with pytest.raises(WbcError, match=r"\['lymphocyte'\] are unknown to the model"):
        evaluate(EvalConfig(data=str(tmp_path / "m.csv"), model=str(run), out=str(tmp_path / "o"), progress=False))


def test_kaggle_root_evaluates_its_test_split_with_group_ci(shared, tmp_path):
    from conftest import SOURCE_MAP
    # a small manifest of TEST images keeps this fast; groups from the source map
    files = sorted((KAGGLE / "TEST" / "LYMPHOCYTE").glob("*.jpeg"))[:15] + \
        sorted((KAGGLE / "TEST" / "NEUTROPHIL").glob("*.jpeg"))[:15]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "".join(f"{f},{f.parent.name},test\n" for f in files))
    m = evaluate(EvalConfig(data=str(tmp_path / "m.csv"), out=str(tmp_path / "o"), groups=str(SOURCE_MAP),
                            progress=False, n_boot=200))
    assert m["split"] == "test" and m["n_images"] == 30
    assert "groups" in m["ci_method"]
