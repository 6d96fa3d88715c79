"""``wbc evaluate``: run a model on labelled images and write an honest evaluation.

Outputs in OUT_DIR: ``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``,
``roc.png``, ``reliability.png``, ``coverage.png``, ``misclassified.png`` and a
self-contained ``report.html`` showing all of it. Every cell also gets its out-of-distribution
score and unknown verdict (:mod:`wbc.ood`); ``metrics.json["unknown"]`` reports their share.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import plots
from .classes import display_name
from .calibration import coverage_at
from .data import Dataset, ImageRecord, discover, handle_bad
from .errors import BadImageError, WbcError
from .inference import Classifier, load_predictor
from .io import write_csv, write_json
from .metrics import classification_metrics, coverage_curve, expected_calibration_error, restrict_to_classes
from .ood import is_unknown, model_threshold, score_kind, score_paths
from .report import image_section, metrics_section, note_section, table_section, write_html_report

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    data: str
    out: str
    model: str | None = None  # None: the bundled default
    split: str | None = None  # which split of a split-aware dataset; default 'test' when present
    groups: str | None = None
    restrict: bool = True
    skip_bad: bool = False
    precision: str = "auto"
    batch_size: int = 64
    backend: str = "auto"
    n_boot: int = 1000
    progress: bool = True


def evaluation_records(ds: Dataset, split: str | None) -> tuple[list[ImageRecord], str]:
    if split:
        if split not in ds.splits:
            raise WbcError(f"{ds.root}: no split '{split}' (has {ds.splits or 'no splits'})")
        return ds.split(split).records, split
    if "test" in ds.splits:
        return ds.split("test").records, "test"
    return ds.records, "all"


def predict_records(predictor: Classifier, records: list[ImageRecord], *, skip_bad: bool, progress: bool
                    ) -> tuple[list[ImageRecord], np.ndarray, np.ndarray]:
    """Probabilities and OOD scores (:func:`wbc.ood.score_paths`) for every readable record (unreadable ones
    fail, or are skipped with ``skip_bad``)."""
    by_path = {r.path: r for r in records}
    bad: list[BadImageError] = []
    kept, probs, scores = [], [], []
    for path, p, s in score_paths(predictor, [r.path for r in records], skip_bad=skip_bad, progress=progress,
                                  bad=bad):
        kept.append(by_path[path])
        probs.append(p)
        scores.append(s)
    handle_bad(bad, skip_bad)
    return kept, (np.stack(probs) if probs else np.zeros((0, len(predictor.classes)))), np.array(scores, float)


def evaluate(cfg: EvalConfig, predictor: Classifier | None = None) -> dict:
    """Evaluate and write all outputs; returns the metrics dict (as in ``metrics.json``)."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    ds = discover(cfg.data, cfg.groups)
    records, split = evaluation_records(ds, cfg.split)
    if any(r.label is None for r in records):
        raise WbcError(f"{cfg.data}: evaluation needs labelled images (class folders or a label column)")
    predictor = predictor or load_predictor(cfg.model, precision=cfg.precision, batch_size=cfg.batch_size,
                                            backend=cfg.backend)
    model_classes = list(predictor.classes)
    data_classes = sorted({r.label for r in records}, key=lambda c: model_classes.index(c) if c in model_classes else -1)
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        raise WbcError(f"{cfg.data}: class(es) {unknown} are unknown to the model (it knows {model_classes})")
    out.mkdir(parents=True, exist_ok=True)
    records, probs_all, ood_scores = predict_records(predictor, records, skip_bad=cfg.skip_bad, progress=cfg.progress)
    if not records:
        raise WbcError(f"{cfg.data}: no readable images to evaluate")
    restricted = cfg.restrict and len(data_classes) < len(model_classes)
    if restricted:
        probs, classes = restrict_to_classes(probs_all, model_classes, data_classes)
    else:
        probs, classes = probs_all, model_classes
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[r.label] for r in records])
    has_groups = any(r.group is not None for r in records)
    groups = [r.group if r.group is not None else str(r.path) for r in records] if has_groups else None
    metrics = classification_metrics(y, probs, classes, groups=groups, n_boot=cfg.n_boot)
    metrics["ece"] = expected_calibration_error(y, probs)
    metrics.update({
        "model": str(cfg.model or "bundled default"), "arch": predictor.info.arch, "data": str(cfg.data),
        "split": split, "model_classes": model_classes, "restricted_to_data_classes": restricted,
        "temperature": predictor.info.temperature, "seconds": round(time.perf_counter() - t0, 1),
    })
    pred = probs.argmax(1)
    unknown_thr = model_threshold(predictor)
    unknown = is_unknown(ood_scores, unknown_thr)
    metrics["unknown"] = unknown_summary(unknown, y == pred, unknown_thr, score_kind(predictor))
    rows = []
    for r, yi, pi, p, s, u in zip(records, y, pred, probs, ood_scores, unknown):
        row = {"path": str(r.path), "true": classes[yi], "predicted": classes[pi], "confidence": round(float(p[pi]), 5),
               "correct": int(yi == pi), "group": r.group or "", "ood_score": round(float(s), 4), "unknown": int(u)}
        row.update({f"p_{c}": round(float(v), 5) for c, v in zip(classes, p)})
        rows.append(row)
    write_csv(out / "predictions.csv", rows, list(rows[0]))
    cm = np.array(metrics["confusion_matrix"])
    plots.plot_confusion_matrix(cm, [display_name(c) for c in classes], out / "confusion_matrix.png")
    plots.plot_roc(y, probs, [display_name(c) for c in classes], out / "roc.png")
    plots.plot_reliability(y, probs, out / "reliability.png")
    plots.plot_coverage(y, probs, out / "coverage.png")
    wrong = sorted((i for i in range(len(y)) if y[i] != pred[i]), key=lambda i: -probs[i, pred[i]])
    plots.misclassified_sheet([(records[i].path, classes[y[i]], classes[pred[i]], float(probs[i, pred[i]]))
                               for i in wrong], out / "misclassified.png")
    cov, acc, thr = coverage_curve(y, probs)
    metrics["coverage_at_accuracy"] = _coverage_table(cov, acc, thr)
    threshold = getattr(predictor.info, "review_threshold", None)
    if threshold is not None:  # what the model's own review threshold does on this data
        metrics["review"] = coverage_at(probs.max(1), y == pred, threshold)
    write_json(out / "metrics.json", metrics)
    sections = []
    if restricted:
        sections.append(note_section("Predictions restricted to the data's classes",
                                     f"The model knows {len(model_classes)} classes ({', '.join(model_classes)}); the "
                                     f"data holds {len(data_classes)} ({', '.join(data_classes)}). Probabilities were "
                                     "restricted to the data's classes and renormalised. Use --no-restrict to score "
                                     "over all model classes."))
    sections += [
        note_section("What was evaluated",
                     f"Model: {metrics['model']} ({predictor.info.arch}). Data: {cfg.data}, split '{split}', "
                     f"{len(records)} images. Confidence interval: {metrics.get('ci_method', 'bootstrap')}."
                     + (f" Accuracy with each of the {metrics['n_groups']} groups weighted once (all images of a "
                        f"group, e.g. augmented copies of one source cell, count as one): "
                        f"{metrics['group_accuracy']:.4f}." if "group_accuracy" in metrics
                        else "")),
        metrics_section(metrics),
        image_section("Confusion matrix", out / "confusion_matrix.png"),
        image_section("ROC curves (one-vs-rest)", out / "roc.png"),
        image_section("Reliability diagram", out / "reliability.png",
                      caption=f"Expected calibration error {metrics['ece']:.4f} (temperature "
                              f"{predictor.info.temperature:.3f})"),
        image_section("Accuracy vs coverage (least confident sent to review)", out / "coverage.png"),
        table_section("Coverage needed for a target accuracy", metrics["coverage_at_accuracy"]),
        *([table_section("The model's review threshold on this data", [metrics["review"]])] if "review" in metrics
          else []),
        note_section("Unknown (out-of-distribution) images", unknown_text(metrics["unknown"])),
        image_section(f"Misclassified examples ({len(wrong)}, most confident first)", out / "misclassified.png"),
    ]
    extra = getattr(predictor, "report_sections", None)
    if extra is not None:
        sections += extra([classes[i] for i in y], out)
    write_html_report(out / "report.html", f"Evaluation: {predictor.info.arch} on {Path(cfg.data).name}", sections)
    return metrics


def unknown_summary(unknown: np.ndarray, correct: np.ndarray, threshold: float | None, score: str) -> dict:
    """``metrics.json["unknown"]``: how many of these (real, labelled) cells the model calls unknown."""
    unknown, correct = np.asarray(unknown, bool), np.asarray(correct, bool)
    return {"score": str(score), "threshold": threshold, "n": int(unknown.sum()),
            "share": float(unknown.mean()) if len(unknown) else 0.0,
            "accuracy_unknown": float(correct[unknown].mean()) if unknown.any() else None,
            "accuracy_known": float(correct[~unknown].mean()) if (~unknown).any() else None}


def unknown_text(u: dict) -> str:
    if u["threshold"] is None:
        return ("This model gives no unknown verdict (a classical model, or one calibrated before the rule existed: "
                "re-fit it with `wbc calibrate`); see docs/decisions/0013.")
    acc = f"; the model was right on {100 * u['accuracy_unknown']:.1f} % of them" if u["n"] else ""
    return (f"{u['n']} of these labelled cells ({100 * u['share']:.1f} %) were called unknown (logit energy below "
            f"{u['threshold']:.3f}, docs/decisions/0013){acc}. On real cells of the model's own kind about 5 % is "
            "expected; far more means these images differ from what the model was trained on (another lab, stain "
            "or magnification): adapt (`wbc adapt`) or re-calibrate (`wbc calibrate`) before trusting it.")


def _coverage_table(cov: np.ndarray, acc: np.ndarray, thr: np.ndarray) -> list[dict]:
    rows = []
    for target in (0.95, 0.98, 0.99, 0.995):
        ok = np.nonzero(acc >= target)[0]
        if len(ok):
            i = ok[np.argmax(cov[ok])]
            rows.append({"target_accuracy": target, "coverage": round(float(cov[i]), 4),
                         "confidence_threshold": round(float(thr[i]), 4), "accuracy": round(float(acc[i]), 4)})
        else:
            rows.append({"target_accuracy": target, "coverage": 0.0, "confidence_threshold": None, "accuracy": None})
    return rows
