"""PNG figures for evaluation and training reports.

Figures are drawn on the Agg canvas through :class:`matplotlib.figure.Figure` (no pyplot, no display,
no global figure registry) and written atomically via :func:`wbc.io.atomic_open`. Curves differ by
line style and marker as well as colour, so they stay distinguishable in greyscale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from .data import load_image
from .errors import BadImageError
from .io import atomic_open
from .metrics import coverage_curve, expected_calibration_error, reliability_curve

__all__ = ["misclassified_sheet", "plot_confusion_matrix", "plot_coverage", "plot_history", "plot_reliability",
           "plot_roc"]

DPI = 110
_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "x"), ("-.", "*"), (":", "P")]


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)
    return Path(path)


def _plain(text: Any) -> str:
    """Text as matplotlib should show it literally (no mathtext from ``$``)."""
    return str(text).replace("$", r"\$")


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | Path, normalize: bool = True) -> Path:
    """Confusion matrix (rows: true, columns: predicted); each cell shows its count and its % of the row.

    With ``normalize`` the colour is the row fraction (recall on the diagonal), otherwise the count.
    """
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"cm must have shape ({n}, {n}) to match classes, got {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shade = frac if normalize else cm.astype(float)
    vmax = 1.0 if normalize else max(float(shade.max()), 1.0)
    size = 2.5 + 0.75 * n
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    fontsize = max(5.0, min(10.0, 60.0 / n))
    for i in range(n):
        for j in range(n):
            text = f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%" if rows[i, 0] else f"{cm[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if shade[i, j] > 0.55 * vmax else "black",
                    fontweight="bold" if i == j else "normal")
    labels = [_plain(c) for c in classes]
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title("Confusion matrix (count and % of true class)")
    return save_png(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class with its AUC in the legend; classes absent from ``y_true`` are listed as such."""
    y, p = np.asarray(y_true), np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape != (len(y), len(classes)):
        raise ValueError(f"probs must have shape ({len(y)}, {len(classes)}), got {p.shape}")
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="chance (AUC 0.5)")
    aucs, skipped = [], []
    for k, (name, (ls, marker)) in enumerate(zip(classes, cycle(_STYLES))):
        positives = y == k
        if not 0 < positives.sum() < len(y):
            skipped.append(_plain(name))
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, k])
        auc = roc_auc_score(positives, p[:, k])
        aucs.append(auc)
        ax.plot(fpr, tpr, ls=ls, marker=marker, markevery=0.1, ms=4, lw=1.5, label=f"{_plain(name)} (AUC {auc:.3f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    mean = f"; mean AUC {np.mean(aucs):.3f}" if aucs else ""
    ax.set_title(f"One-vs-rest ROC{mean}")
    for name in skipped:
        ax.plot([], [], " ", label=f"{name}: no ROC (absent or alone in data)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_history(history_rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and val, in two panels.

    ``history_rows`` are the rows of ``history.csv`` (values may be strings; empty cells are gaps).
    The x axis is the ``epoch`` column (else the row number); every column whose name contains
    ``loss`` goes in the left panel and every column containing ``acc`` in the right one, e.g.
    ``epoch,train_loss,val_loss,train_acc,val_acc``.
    """
    if not history_rows:
        raise ValueError("history_rows is empty: nothing to plot")
    columns = list(dict.fromkeys(k for row in history_rows for k in row))
    panels = {"Loss": [c for c in columns if "loss" in c.lower()],
              "Accuracy": [c for c in columns if "acc" in c.lower()]}
    if not any(panels.values()):
        raise ValueError(f"history has no loss or accuracy columns, got columns {columns}")
    x = np.array([_as_float(r.get("epoch", i + 1)) for i, r in enumerate(history_rows)])
    fig = new_figure(10, 4)
    for ax, (title, cols) in zip(fig.subplots(1, 2), panels.items()):
        for col, (_, marker) in zip(cols, cycle(_STYLES)):
            ls = "--" if "val" in col.lower() else "-"
            ax.plot(x, [_as_float(r.get(col)) for r in history_rows], ls=ls, marker=marker, ms=4, label=_plain(col))
        if cols:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {title.lower()} recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="epoch", ylabel=title.lower())
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = 15) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal (ECE in the title), over a histogram."""
    conf, acc, count = reliability_curve(y_true, probs, n_bins)
    ece = expected_calibration_error(y_true, probs, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1 / n_bins
    fig = new_figure(5.5, 6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    full = count > 0
    top.bar(centres[full], acc[full], width=width, edgecolor="black", color="tab:blue", alpha=0.8,
            label="accuracy in bin")
    top.bar(centres[full], np.abs(conf - acc)[full], bottom=np.minimum(conf, acc)[full], width=width,
            edgecolor="tab:red", fill=False, hatch="//", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(centres, count, width=width, edgecolor="black", color="0.7")
    bottom.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="images")
    return save_png(fig, path)


def plot_coverage(y_true: np.ndarray, probs: np.ndarray, path: str | Path) -> Path:
    """Accuracy of the automatically classified cells against coverage, when the least confident go to review."""
    coverage, accuracy, _ = coverage_curve(y_true, probs)
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()
    ax.plot(coverage, accuracy, "-", drawstyle="steps-post", lw=1.8, color="tab:blue", label="kept cells")
    ax.axhline(accuracy[-1], color="0.4", ls="--", lw=1, label=f"no review (accuracy {accuracy[-1]:.3f})")
    ax.set(xlim=(0, 1.01), xlabel="coverage (fraction of cells classified automatically)",
           ylabel="accuracy of kept cells", title="Accuracy vs coverage")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def misclassified_sheet(items: Sequence[tuple[str | Path, str, str, float]], path: str | Path,
                        max_items: int = 48, ncols: int = 8, thumb_px: int = 160) -> Path:
    """Contact sheet of misclassified images ``(image_path, true, pred, confidence)``, in the given order.

    Shows at most ``max_items`` thumbnails, each captioned with file name, true and predicted class and
    confidence; an unreadable image is shown as a labelled blank. With no items the sheet says so.
    """
    if max_items < 1 or ncols < 1:
        raise ValueError(f"max_items and ncols must be >= 1, got {max_items} and {ncols}")
    shown = list(items)[:max_items]
    if not shown:
        fig = new_figure(6, 1.5)
        fig.text(0.5, 0.5, "No misclassified images", ha="center", va="center", fontsize=14)
        return save_png(fig, path)
    ncols = min(ncols, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = new_figure(1.75 * ncols, 2.2 * nrows + 0.4)
    fig.suptitle(f"Misclassified images: showing {len(shown)} of {len(items)}")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (image_path, true, pred, confidence) in zip(axes, shown):
        name = Path(image_path).name
        try:
            img = load_image(image_path)
            img.thumbnail((thumb_px, thumb_px))
            ax.imshow(np.asarray(img))
        except BadImageError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        short = name if len(name) <= 22 else name[:10] + "…" + name[-10:]
        ax.set_title(f"{_plain(short)}\ntrue: {_plain(true)}\npred: {_plain(pred)} ({confidence:.2f})",
                     fontsize=7, loc="left")
    return save_png(fig, path)


def plot_importances(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Horizontal bars of ``rows`` (``feature``, ``importance``, ``std``), most important on top."""
    names = [str(r["feature"]) for r in rows][::-1]
    vals = [float(r["importance"]) for r in rows][::-1]
    errs = [float(r.get("std") or 0) for r in rows][::-1]
    fig = new_figure(7, 0.3 * len(rows) + 1.2)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), vals, xerr=errs, color="#4c72b0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("accuracy lost when shuffled")
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, path)
