"""Metrics against hand-computed values, edge cases, bootstrap, calibration and class restriction."""

from __future__ import annotations

import doctest
import json
import time

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

import wbc.io
import wbc.metrics
from wbc.metrics import (_stats_from_confusion, bootstrap_ci, classification_metrics, coverage_curve,
                         expected_calibration_error, reliability_curve, restrict_to_classes)


def one_hot_probs(pred, n_classes, p_top=0.6):
    """Probabilities with ``p_top`` on the predicted class and the rest spread evenly."""
    probs = np.full((len(pred), n_classes), (1 - p_top) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = p_top
    return probs


# name, y_true, y_pred, classes, overall {key: value},
# per_class {class: (precision, recall, specificity, f1, auc, support)}
CASES = [
    (
        # confusion rows a=[3,1,0], b=[0,2,1], c=[1,0,2]; N=10
        # a: TP3 FP1 FN1 TN5 -> P 3/4, R 3/4, Spec 5/6, F1 6/8;  b, c: TP2 FP1 FN1 TN6 -> 2/3, 2/3, 6/7, 4/6
        # AUC(a): scores .6 for rows predicted a; pos (.6,.6,.6,.2) vs neg (.2 x5, .6): (15 + 3*.5 + 5*.5)/24 = 19/24
        # AUC(b): pos b rows 4,5,6 -> .6,.6,.2; neg: .6 (row 3) and .2 x6: (2*6 + 2*.5 + 6*.5)/21 = 16/21
        "hand-3-class",
        [0, 0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2, 0], ["a", "b", "c"],
        {"accuracy": 0.7, "balanced_accuracy": (3 / 4 + 2 / 3 + 2 / 3) / 3, "macro_f1": (3 / 4 + 2 / 3 + 2 / 3) / 3,
         "macro_precision": (3 / 4 + 2 / 3 + 2 / 3) / 3, "macro_recall": (3 / 4 + 2 / 3 + 2 / 3) / 3,
         "confusion_matrix": [[3, 1, 0], [0, 2, 1], [1, 0, 2]]},
        {"a": (3 / 4, 3 / 4, 5 / 6, 3 / 4, 19 / 24, 4), "b": (2 / 3, 2 / 3, 6 / 7, 2 / 3, 16 / 21, 3),
         "c": (2 / 3, 2 / 3, 6 / 7, 2 / 3, 16 / 21, 3)},
    ),
    (
        "perfect", [0, 1, 2, 2, 1, 0], [0, 1, 2, 2, 1, 0], ["x", "y", "z"],
        {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0, "macro_precision": 1.0,
         "confusion_matrix": [[2, 0, 0], [0, 2, 0], [0, 0, 2]]},
        {c: (1.0, 1.0, 1.0, 1.0, 1.0, 2) for c in "xyz"},
    ),
    (
        "all-wrong", [0, 0, 1, 1], [1, 1, 0, 0], ["x", "y"],
        {"accuracy": 0.0, "balanced_accuracy": 0.0, "macro_f1": 0.0, "macro_precision": 0.0,
         "confusion_matrix": [[0, 2], [2, 0]]},
        {c: (0.0, 0.0, 0.0, 0.0, 0.0, 2) for c in "xy"},
    ),
    (
        # class c absent from y_true but predicted once (FP); class b present and never predicted.
        # a: TP2 FP1 FN1 TN0 -> P 2/3, R 2/3, Spec 0, F1 4/6; b: TP0 FP0 FN1 TN3 -> P undefined, R 0, Spec 1, F1 0
        # c: TP0 FP1 FN0 TN3 -> P 0, R undefined, Spec 3/4, F1 0, AUC undefined
        # AUC(a): pos scores (.6, .6, .2) vs neg (.6) -> (.5 + .5 + 0)/3; AUC(b): all scores tie -> 0.5
        # macros are over the present classes a, b (b's undefined precision counts as 0)
        "absent-class", [0, 0, 1, 0], [0, 0, 0, 2], ["a", "b", "c"],
        {"accuracy": 0.5, "balanced_accuracy": (2 / 3 + 0) / 2, "macro_recall": 1 / 3, "macro_f1": (2 / 3 + 0) / 2,
         "macro_precision": (2 / 3 + 0) / 2, "confusion_matrix": [[2, 0, 1], [1, 0, 0], [0, 0, 0]]},
        {"a": (2 / 3, 2 / 3, 0.0, 2 / 3, 1 / 3, 3), "b": (None, 0.0, 1.0, 0.0, 0.5, 1),
         "c": (0.0, None, 3 / 4, 0.0, None, 0)},
    ),
]


@pytest.mark.parametrize("name,y_true,y_pred,classes,overall,per_class", CASES, ids=[c[0] for c in CASES])
def test_classification_metrics_by_hand(name, y_true, y_pred, classes, overall, per_class):
    probs = one_hot_probs(np.array(y_pred), len(classes), p_top=0.9 if name == "all-wrong" else 0.6)
    m = classification_metrics(np.array(y_true), probs, classes, n_boot=50)
    for key, expected in overall.items():
        assert m[key] == (expected if isinstance(expected, list) else pytest.approx(expected)), key
    assert m["n_images"] == len(y_true) and m["classes"] == classes
    fields = ("precision", "recall", "specificity", "f1", "auc", "support")
    for cls, expected in per_class.items():
        got = m["per_class"][cls]
        assert list(got) == list(fields)
        for field, want in zip(fields, expected):
            assert got[field] == (None if want is None else pytest.approx(want)), (cls, field)
    json.loads(json.dumps(m, allow_nan=False))  # strict JSON, no NaN


def test_metrics_keys_and_ci_contain_point_estimates():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4), 400)
    probs[np.arange(400), y] += 0.4
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, list("abcd"), n_boot=300)
    assert set(m) == {"accuracy", "accuracy_ci95", "balanced_accuracy", "balanced_accuracy_ci95", "macro_f1",
                      "macro_f1_ci95", "macro_precision", "macro_recall", "ci_method", "n_images", "classes",
                      "confusion_matrix", "per_class"}
    assert m["ci_method"] == "bootstrap over images"
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = m[f"{key}_ci95"]
        assert lo < m[key] < hi
    assert m == classification_metrics(y, probs, list("abcd"), n_boot=300)  # seeded, reproducible


def test_bootstrap_statistics_match_sklearn():
    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 is never predicted
    cm = np.bincount(y * 5 + pred, minlength=25).reshape(5, 5)
    stats = _stats_from_confusion(cm)
    assert stats["accuracy"] == pytest.approx(np.mean(y == pred))
    assert stats["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert stats["macro_f1"] == pytest.approx(f1_score(y, pred, labels=np.unique(y), average="macro"))


def test_group_bootstrap_wider_than_image_bootstrap_for_duplicated_images():
    rng = np.random.default_rng(2)
    n, copies = 60, 10
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.75, y, (y + 1) % 3)
    y_dup, pred_dup = np.repeat(y, copies), np.repeat(pred, copies)
    groups = [f"patient{i}" for i in np.repeat(np.arange(n), copies)]
    probs = one_hot_probs(pred_dup, 3)
    by_image = classification_metrics(y_dup, probs, list("abc"))
    by_group = classification_metrics(y_dup, probs, list("abc"), groups=groups)
    assert by_group["ci_method"] == f"bootstrap over groups (n_groups={n})"
    assert by_group["accuracy"] == by_image["accuracy"]
    width = lambda m, k: m[k][1] - m[k][0]  # noqa: E731
    for key in ("accuracy_ci95", "balanced_accuracy_ci95", "macro_f1_ci95"):
        assert width(by_group, key) > 2 * width(by_image, key), key  # expected ratio ~ sqrt(10)


def test_missing_groups_are_single_images_and_one_group_gives_no_ci():
    y = np.array([0, 1, 0, 1])
    m = classification_metrics(y, one_hot_probs(y, 2), ["a", "b"], groups=["g", "g", None, ""])
    assert m["ci_method"] == "bootstrap over groups (n_groups=3)"
    one = classification_metrics(y, one_hot_probs(y, 2), ["a", "b"], groups=["g"] * 4)
    assert one["accuracy_ci95"] == [None, None]
    assert classification_metrics(y, one_hot_probs(y, 2), ["a", "b"], n_boot=0)["accuracy_ci95"] == [None, None]


def test_group_accuracy_weights_each_group_once():
    # group g1 has 6 copies, all wrong; groups g2 and g3 one image each, right: 2 of 8 images, 2 of 3 groups
    y = np.zeros(8, dtype=int)
    probs = one_hot_probs(np.array([1] * 6 + [0, 0]), 2)
    m = classification_metrics(y, probs, ["a", "b"], groups=["g1"] * 6 + ["g2", "g3"], n_boot=0)
    assert m["accuracy"] == pytest.approx(2 / 8)
    assert m["group_accuracy"] == pytest.approx(2 / 3) and m["n_groups"] == 3
    assert "group_accuracy" not in classification_metrics(y, probs, ["a", "b"], n_boot=0)


def test_bootstrap_is_fast_and_image_ci_width_is_binomial():
    rng = np.random.default_rng(3)
    n = 10_000
    y = rng.integers(0, 8, n)
    pred = np.where(rng.random(n) < 0.9, y, rng.integers(0, 8, n))
    bootstrap_ci(y, pred, 8, n_boot=10)  # warm-up
    start = time.perf_counter()
    ci = bootstrap_ci(y, pred, 8, n_boot=1000)
    assert time.perf_counter() - start < 3.0  # ~0.2 s unloaded; generous for a busy machine
    acc = np.mean(y == pred)
    expected = 2 * 1.96 * np.sqrt(acc * (1 - acc) / n)
    assert ci["accuracy"][1] - ci["accuracy"][0] == pytest.approx(expected, rel=0.15)


BAD_INPUTS = [
    ("2-D y_true", np.zeros((2, 2), int), np.full((2, 2), 0.5), ["a", "b"], "y_true must be 1-D"),
    ("float labels", np.array([0.0, 1.0]), np.full((2, 2), 0.5), ["a", "b"], "integer class indices"),
    ("row mismatch", np.array([0, 1, 1]), np.full((2, 2), 0.5), ["a", "b"], "N = len"),
    ("column mismatch", np.array([0, 1]), np.full((2, 3), 0.3), ["a", "b"], "3 columns but there are 2"),
    ("label out of range", np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"], r"range \[0, 2\]"),
    ("nan probs", np.array([0, 1]), np.array([[np.nan, 1], [0.5, 0.5]]), ["a", "b"], "non-finite"),
    ("empty", np.array([], int), np.zeros((0, 2)), ["a", "b"], "empty"),
    ("duplicate classes", np.array([0, 1]), np.full((2, 2), 0.5), ["a", "a"], "unique"),
]


@pytest.mark.parametrize("name,y,probs,classes,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_classification_metrics_rejects_bad_input(name, y, probs, classes, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, probs, classes, n_boot=0)


def test_groups_length_must_match():
    with pytest.raises(ValueError, match="groups has 1 entries but there are 2 images"):
        classification_metrics(np.array([0, 1]), np.eye(2), ["a", "b"], groups=["g"])


def calibrated_sample(n, n_classes, rng):
    """Predictions whose confidence is exactly the probability of being right."""
    conf = rng.uniform(1 / n_classes, 1, n)
    pred = rng.integers(0, n_classes, n)
    probs = np.repeat(((1 - conf) / (n_classes - 1))[:, None], n_classes, axis=1)
    probs[np.arange(n), pred] = conf
    wrong = (pred + rng.integers(1, n_classes, n)) % n_classes
    y = np.where(rng.random(n) < conf, pred, wrong)
    return y, probs


ECE_CASES = [
    # name, y_true, probs, n_bins, expected ECE
    ("overconfident", [0, 1, 0, 1], [[1.0, 0.0]] * 4, 10, 0.5),
    ("two bins", [0, 0], [[0.95, 0.05], [0.05, 0.95]], 2, 0.45),
    ("perfect and certain", [0, 1], [[1.0, 0.0], [0.0, 1.0]], 15, 0.0),
    # bin (0.5, 0.75]: conf .6,.7 -> mean .65, acc 1/2 -> gap .15; bin (0.75, 1]: conf .8, acc 1 -> gap .2
    ("hand", [0, 1, 0], [[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]], 4, (2 * 0.15 + 0.2) / 3),
]


@pytest.mark.parametrize("name,y,probs,n_bins,expected", ECE_CASES, ids=[c[0] for c in ECE_CASES])
def test_expected_calibration_error_cases(name, y, probs, n_bins, expected):
    assert expected_calibration_error(np.array(y), np.array(probs), n_bins) == pytest.approx(expected)


def test_ece_of_calibrated_predictions_is_near_zero_and_of_sharpened_is_not():
    y, probs = calibrated_sample(200_000, 4, np.random.default_rng(4))
    assert expected_calibration_error(y, probs) < 0.01
    sharpened = probs ** 4 / (probs ** 4).sum(1, keepdims=True)
    assert expected_calibration_error(y, sharpened) > 0.1


def test_reliability_curve_bins_and_rejects_non_probabilities():
    conf, acc, count = reliability_curve(np.array([0, 1, 0]), np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]]), 4)
    assert count.tolist() == [0, 0, 2, 1]
    assert np.isnan(conf[:2]).all() and conf[2:] == pytest.approx([0.65, 0.8]) and acc[2:] == pytest.approx([0.5, 1])
    with pytest.raises(ValueError, match="probabilities"):
        reliability_curve(np.array([0]), np.array([[2.0, 1.0]]))
    with pytest.raises(ValueError, match="n_bins must be >= 1, got 0"):
        reliability_curve(np.array([0]), np.array([[1.0, 0.0]]), n_bins=0)


COVERAGE_CASES = [
    # name, y_true, confidences of class 0 (class 1 gets 1 - p), expected (coverage, accuracy, thresholds)
    ("distinct", [0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6],
     ([0.25, 0.5, 0.75, 1.0], [1, 1, 2 / 3, 3 / 4], [0.9, 0.8, 0.7, 0.6])),
    ("ties kept together", [0, 1, 0, 0], [0.9, 0.8, 0.8, 0.3], ([0.25, 0.75, 1.0], [1, 2 / 3, 1 / 2], [0.9, 0.8, 0.7])),
    ("all wrong", [1, 1], [0.9, 0.6], ([0.5, 1.0], [0, 0], [0.9, 0.6])),
]


@pytest.mark.parametrize("name,y,p0,expected", COVERAGE_CASES, ids=[c[0] for c in COVERAGE_CASES])
def test_coverage_curve(name, y, p0, expected):
    p0 = np.array(p0)
    cov, acc, thr = coverage_curve(np.array(y), np.stack([p0, 1 - p0], axis=1))
    for got, want in zip((cov, acc, thr), expected):
        assert got == pytest.approx(want)


RESTRICT_CASES = [
    ("subset, model order", [[0.5, 0.3, 0.2]], ["a", "b", "c"], ["c", "a"], [[5 / 7, 2 / 7]], ["a", "c"]),
    ("same classes", [[0.5, 0.5]], ["a", "b"], ["a", "b"], [[0.5, 0.5]], ["a", "b"]),
    ("zero mass becomes uniform", [[0.0, 0.0, 1.0]], ["a", "b", "c"], ["a", "b"], [[0.5, 0.5]], ["a", "b"]),
]


@pytest.mark.parametrize("name,probs,model,data,expected,classes", RESTRICT_CASES, ids=[c[0] for c in RESTRICT_CASES])
def test_restrict_to_classes(name, probs, model, data, expected, classes):
    got, got_classes = restrict_to_classes(np.array(probs), model, data)
    assert got == pytest.approx(np.array(expected)) and got_classes == classes


@pytest.mark.parametrize("n_columns,model,data,match", [
    (2, ["a", "b"], ["a", "z"], r"data classes \['z'\] are not among"),
    (3, ["a", "b", "c"], ["a"], "at least 2 data classes"),
    (3, ["a", "b"], ["a", "b"], r"shape \(N, 2\)"),
])
def test_restrict_to_classes_errors(n_columns, model, data, match):
    with pytest.raises(ValueError, match=match):
        restrict_to_classes(np.full((1, n_columns), 1 / n_columns), model, data)


@pytest.mark.parametrize("module", [wbc.metrics, wbc.io], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
