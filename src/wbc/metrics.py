"""Classification metrics with bootstrap confidence intervals, calibration and coverage curves.

Conventions (all functions take plain numpy arrays):

* ``y_true`` is an ``(N,)`` integer array of indices into ``classes``;
* ``probs`` is an ``(N, C)`` array whose column ``k`` is the score of ``classes[k]``;
  the prediction is its row-wise argmax (first class on ties);
* macro averages (``balanced_accuracy`` = ``macro_recall``, ``macro_precision``, ``macro_f1``) are
  over the classes present in ``y_true``; a present class that is never predicted has precision 0
  in the macro average (scikit-learn's ``zero_division=0``) and ``None`` in ``per_class``;
* per-class values that are undefined (0/0, e.g. the recall of a class absent from ``y_true``)
  are ``None``, so the result is strict JSON.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             precision_recall_fscore_support, roc_auc_score)

__all__ = ["bootstrap_ci", "classification_metrics", "coverage_curve", "expected_calibration_error",
           "reliability_curve", "restrict_to_classes"]

_CHUNK_CELLS = 4_000_000  # bootstrap works on (chunk x units) blocks of at most this many entries


def _check_labels_probs(y_true: Any, probs: Any, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must have shape (N, C) with N = len(y_true) = {y.shape[0]}, got {p.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty: no images to evaluate")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but there are {n_classes} classes")
    if p.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got {p.shape[1]}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true values must be in [0, {p.shape[1] - 1}], got range [{y.min()}, {y.max()}]")
    if not np.isfinite(p).all():
        raise ValueError(f"probs contains {np.count_nonzero(~np.isfinite(p))} non-finite value(s)")
    return y.astype(np.intp), p


def _check_probabilities(p: np.ndarray) -> None:
    bad = np.abs(p.sum(axis=1) - 1.0) > 1e-3
    if (p < 0).any() or bad.any():
        raise ValueError(f"probs rows must be probabilities (>= 0, summing to 1); "
                         f"{int(bad.sum())} row(s) do not sum to 1")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0``."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _stats_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of one ``(C, C)`` or a stack ``(B, C, C)`` of confusion matrices.

    Macro averages are over the classes with support > 0 in each matrix, like the point estimates.

    >>> {k: round(float(v), 3) for k, v in _stats_from_confusion(np.array([[3, 1], [0, 2]])).items()}
    {'accuracy': 0.833, 'balanced_accuracy': 0.875, 'macro_f1': 0.829}
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    present = support > 0
    recall = np.where(present, _ratio(tp, support), np.nan)
    f1 = np.where(present, _ratio(2 * tp, support + predicted), np.nan)
    with np.errstate(invalid="ignore"):
        return {"accuracy": tp.sum(-1) / cm.sum((-2, -1)),
                "balanced_accuracy": np.nanmean(recall, axis=-1),
                "macro_f1": np.nanmean(f1, axis=-1)}


def _group_units(groups: Sequence[str | None], n: int) -> tuple[np.ndarray, int]:
    """Map group names to unit ids ``0..G-1``; an image with a missing group (``None``/``""``) is its own unit."""
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries but there are {n} images")
    ids: dict[Any, int] = {}
    units = np.empty(n, dtype=np.intp)
    for i, g in enumerate(groups):
        key = ("\0image", i) if g is None or g == "" else g
        units[i] = ids.setdefault(key, len(ids))
    return units, len(ids)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, units: np.ndarray | None = None,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float | None]]:
    """Percentile bootstrap CIs of accuracy, balanced accuracy and macro F1.

    Resamples images, or whole units (e.g. patients/slides) when ``units`` (ids ``0..G-1``) is given.
    Fully vectorised: each resample's confusion matrix is a weighted sum of per-unit confusion counts.
    With fewer than 2 units or ``n_boot == 0`` the intervals are ``[None, None]``.

    >>> y = np.array([0, 1] * 50); ci = bootstrap_ci(y, y, 2, n_boot=200)
    >>> ci["accuracy"]
    [1.0, 1.0]
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(y_true)
    if len(y_pred) != n or (units is not None and len(units) != n):
        raise ValueError(f"y_pred and units must have len(y_true) = {n} entries, got {len(y_pred)} and "
                         f"{None if units is None else len(units)}")
    units = np.arange(n) if units is None else np.asarray(units, dtype=np.intp)
    n_units = int(units.max()) + 1 if n else 0
    names = ("accuracy", "balanced_accuracy", "macro_f1")
    if n_boot == 0 or n_units < 2:
        return {k: [None, None] for k in names}
    cells = n_classes * n_classes
    # (G, C*C) sparse matrix: confusion counts of each unit
    per_unit = scipy.sparse.csr_matrix((np.ones(n), (units, y_true * n_classes + y_pred)), shape=(n_units, cells))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n_units)
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n_units, size=(b, n_units)) + (np.arange(b) * n_units)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * n_units).reshape(b, n_units)
        out.append(np.asarray((per_unit.T @ weights.T).T).reshape(b, n_classes, n_classes))
    stats = _stats_from_confusion(np.concatenate(out))
    q = [50 * (1 - level), 50 * (1 + level)]
    return {k: [_nan_to_none(v) for v in np.nanpercentile(stats[k], q)] for k in names}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                           groups: Sequence[str | None] | None = None, n_boot: int = 1000,
                           seed: int = 0) -> dict[str, Any]:
    """All evaluation metrics as a JSON-serialisable dict (see the module docstring for conventions).

    ``groups`` (one name per image, e.g. patient or slide) makes the bootstrap resample whole groups,
    which gives honest intervals when images of a group are correlated.

    >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([[.9, .1], [.6, .4], [.3, .7], [.8, .2]]),
    ...                            ["lymphocyte", "neutrophil"], n_boot=0)
    >>> m["accuracy"], m["confusion_matrix"], m["per_class"]["neutrophil"]  # doctest: +NORMALIZE_WHITESPACE
    (0.75, [[2, 0], [1, 1]],
     {'precision': 1.0, 'recall': 0.5, 'specificity': 1.0, 'f1': 0.6666666666666666, 'auc': 0.75, 'support': 2})
    """
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {classes}")
    y, p = _check_labels_probs(y_true, probs, len(classes))
    n, n_classes = p.shape
    pred = p.argmax(axis=1)
    labels = np.arange(n_classes)
    present = np.unique(y)
    cm = confusion_matrix(y, pred, labels=labels)

    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, average=None,
                                                             zero_division=np.nan)
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro",
                                                                    zero_division=0)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": the documented convention
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y, pred))
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = n - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    specificity = _ratio(tn, tn + fp)
    per_class = {}
    for k, name in enumerate(classes):
        positives = y == k
        auc = roc_auc_score(positives, p[:, k]) if 0 < positives.sum() < n else np.nan
        per_class[name] = {"precision": _nan_to_none(prec[k]), "recall": _nan_to_none(rec[k]),
                           "specificity": _nan_to_none(specificity[k]), "f1": _nan_to_none(f1[k]),
                           "auc": _nan_to_none(auc), "support": int(support[k])}

    if groups is None:
        units, ci_method = None, "bootstrap over images"
    else:
        units, n_groups = _group_units(groups, n)
        ci_method = f"bootstrap over groups (n_groups={n_groups})"
    ci = bootstrap_ci(y, pred, n_classes, units, n_boot=n_boot, seed=seed)
    by_group = {}
    if units is not None:  # each group (e.g. a source cell with many augmented copies) weighted once
        per_unit = np.bincount(units, weights=(pred == y)) / np.bincount(units)
        by_group = {"group_accuracy": float(per_unit.mean()), "n_groups": int(n_groups)}
    return {
        "n_images": int(n),
        "classes": classes,
        "accuracy": float(accuracy_score(y, pred)),
        "accuracy_ci95": ci["accuracy"],
        "balanced_accuracy": balanced,
        "balanced_accuracy_ci95": ci["balanced_accuracy"],
        "macro_f1": float(macro_f1),
        "macro_f1_ci95": ci["macro_f1"],
        "macro_precision": float(macro_p),
        "macro_recall": float(macro_r),
        "ci_method": ci_method if n_boot > 0 else "none (n_boot=0)",
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        **by_group,
    }


def _confidence_correct(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = _check_labels_probs(y_true, probs)
    _check_probabilities(p)
    return p.max(axis=1), p.argmax(axis=1) == y


def reliability_curve(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean confidence, accuracy and count of the predictions in ``n_bins`` equal-width confidence bins.

    Bin ``i`` holds confidences in ``(i/n_bins, (i+1)/n_bins]``; empty bins have NaN confidence and accuracy.

    >>> conf, acc, count = reliability_curve(np.array([0, 0]), np.array([[.95, .05], [.05, .95]]), n_bins=2)
    >>> conf.tolist(), acc.tolist(), count.tolist()
    ([nan, 0.95], [nan, 0.5], [0, 2])
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _confidence_correct(y_true, probs)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.intp) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    return (_ratio(np.bincount(idx, conf, n_bins), count), _ratio(np.bincount(idx, correct, n_bins), count), count)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean ``|accuracy - confidence|`` over equal-width confidence bins (Guo et al. 2017).

    >>> expected_calibration_error(np.array([0, 0]), np.array([[.95, .05], [.05, .95]]), n_bins=2)
    0.45
    """
    conf, acc, count = reliability_curve(y_true, probs, n_bins)
    full = count > 0
    return round(float(np.sum(count[full] * np.abs(acc[full] - conf[full])) / count.sum()), 12)


def coverage_curve(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy of the predictions kept when those below a confidence threshold are sent to review.

    Returns ``(coverage, accuracy, thresholds)`` sorted by increasing coverage: keeping every
    prediction with confidence ``>= thresholds[i]`` keeps a fraction ``coverage[i]`` of the images,
    with accuracy ``accuracy[i]``. Tied confidences are kept or dropped together.

    >>> cov, acc, thr = coverage_curve(np.array([0, 1, 1, 0]), np.array([[.9, .1], [.2, .8], [.3, .7], [.3, .7]]))
    >>> cov.tolist(), acc.tolist(), thr.tolist()
    ([0.25, 0.5, 1.0], [1.0, 1.0, 0.75], [0.9, 0.8, 0.7])
    """
    conf, correct = _confidence_correct(y_true, probs)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    last_of_tie = np.append(conf[1:] != conf[:-1], True)
    kept = np.arange(1, len(conf) + 1)[last_of_tie]
    return kept / len(conf), np.cumsum(correct)[last_of_tie] / kept, conf[last_of_tie]


def restrict_to_classes(probs: np.ndarray, model_classes: Sequence[str], data_classes: Sequence[str]
                        ) -> tuple[np.ndarray, list[str]]:
    """Keep only the columns of the data's classes (in the model's order) and renormalise each row to sum to 1.

    Use when the evaluation data holds a subset of the model's classes, so the model cannot be
    wrong by predicting a class that the data cannot contain. A row whose kept columns are all 0
    becomes uniform.

    >>> p, c = restrict_to_classes(np.array([[.5, .3, .2]]), ["a", "b", "c"], ["c", "a"])
    >>> p.round(4).tolist(), c
    ([[0.7143, 0.2857]], ['a', 'c'])
    """
    p = np.asarray(probs, dtype=np.float64)
    model_classes = list(model_classes)
    if p.ndim != 2 or p.shape[1] != len(model_classes):
        raise ValueError(f"probs must have shape (N, {len(model_classes)}) to match model_classes, got {p.shape}")
    missing = sorted(set(data_classes) - set(model_classes))
    if missing:
        raise ValueError(f"data classes {missing} are not among the model's classes {model_classes}")
    keep = [k for k, c in enumerate(model_classes) if c in set(data_classes)]
    if len(keep) < 2:
        raise ValueError(f"need at least 2 data classes to classify, got {sorted(set(data_classes))}")
    sub = p[:, keep]
    total = sub.sum(axis=1, keepdims=True)
    sub = np.divide(sub, total, out=np.full_like(sub, 1.0 / len(keep)), where=total > 0)
    return sub, [model_classes[k] for k in keep]
