"""Confidence calibration: temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017) and the review threshold chosen on validation data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """Return the temperature T > 0 minimising the NLL of ``softmax(logits / T)``.

    >>> round(fit_temperature(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1])), 2) < 1
    True
    """
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    logits = logits.detach().float()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def review_threshold_for(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float = 0.98) -> float:
    """Lowest confidence threshold at which the cells kept (confidence >= threshold) are at least
    ``target_accuracy`` correct; the cells below it go to review.

    >>> review_threshold_for(np.array([0.99, 0.9, 0.8, 0.6]), np.array([1, 1, 0, 1]), 0.9)
    0.9
    """
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or not len(confidence):
        raise ValueError(f"confidence {confidence.shape} and correct {correct.shape} must be equal, 1-D, non-empty")
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    order = np.argsort(-confidence, kind="stable")
    acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(acc >= target_accuracy)
    if not len(ok):
        return 1.0
    k = ok[-1]  # keep the most cells while the kept ones stay accurate enough
    return float(confidence[order[k]])


def coverage_at(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict:
    """Share of cells kept (not sent to review) at ``threshold`` and the accuracy of the kept and reviewed ones."""
    keep = np.asarray(confidence) >= threshold
    correct = np.asarray(correct, bool)
    return {"threshold": float(threshold), "n": int(len(keep)), "review_share": float(1 - keep.mean()),
            "accuracy_kept": float(correct[keep].mean()) if keep.any() else None,
            "accuracy_reviewed": float(correct[~keep].mean()) if (~keep).any() else None,
            "accuracy_all": float(correct.mean())}


def calibrate_model(model: str | Path | None, data: list[str], out: str | Path, *, split: str | None = "val",
                    groups: str | None = None, target_accuracy: float = 0.98, refit_temperature: bool = True,
                    unknown_tpr: float = 0.95, progress: bool = True) -> dict:
    """Fit the temperature and choose the review and unknown thresholds on labelled (validation) data; write a new
    model file.

    The review threshold is the lowest calibrated confidence at which the cells kept are ``target_accuracy``
    correct on ``data`` (all the model's classes competing, no restriction). The unknown threshold is the
    logit energy that ``unknown_tpr`` of these cells exceed (wbc.ood). Weights are unchanged (fp16 stays fp16).

    Raises:
        WbcError: a classical or ONNX model, unknown classes, no images in the split, or ``unknown_tpr``
            outside (0, 1).
    """
    from .data import discover
    from .errors import WbcError
    from .evaluation import evaluation_records
    from .inference import Predictor
    from .modelio import load_model, resolve_model_path
    from .ood import energy, unknown_threshold

    if not 0 < unknown_tpr < 1:
        raise WbcError(f"--unknown-tpr must be in (0, 1), got {unknown_tpr}")
    path = resolve_model_path(model)
    if path.suffix != ".safetensors":
        raise WbcError(f"{path}: calibrate works on neural .safetensors models")
    predictor = Predictor(path)
    records = []
    for d in data:
        recs, _ = evaluation_records(discover(d, groups), split)
        records += recs
    if not records:
        raise WbcError(f"no labelled images in {', '.join(data)} (split {split})")
    unknown = sorted({r.label for r in records} - set(predictor.classes))
    if unknown:
        raise WbcError(f"classes {unknown} are not classes of the model {path} ({predictor.classes})")
    by_path = {r.path: r for r in records}
    scored = list(predictor.logits_paths([r.path for r in records], progress=progress))
    records = [by_path[p] for p, _ in scored]
    logits = torch.from_numpy(np.stack([z for _, z in scored]).astype(np.float32))
    labels = torch.tensor([predictor.classes.index(r.label) for r in records])
    t_old = predictor.info.temperature
    t_new = fit_temperature(logits, labels) if refit_temperature else t_old
    p = F.softmax(logits / t_new, dim=1).numpy()
    conf, correct = p.max(1), p.argmax(1) == labels.numpy()
    thr = review_threshold_for(conf, correct, target_accuracy)
    t_unknown = unknown_threshold(energy(logits.numpy()), unknown_tpr)
    summary = {"data": [str(d) for d in data], "split": split, "temperature_before": t_old, "temperature": t_new,
               "target_accuracy": target_accuracy, **coverage_at(conf, correct, thr),
               "unknown_threshold": t_unknown, "unknown_tpr": unknown_tpr}
    net, info = load_model(path)
    _write_calibrated(path, net, info, (t_new, thr, t_unknown), summary, out)
    return summary


def _write_calibrated(path: Path, net, info, values: tuple, summary: dict, out: str | Path) -> None:
    """Save ``net`` with (temperature, review threshold, unknown threshold) = ``values``, in the precision of
    ``path`` (fp16 stays fp16), the summary recorded as the model's calibration."""
    from safetensors import safe_open

    from .modelio import save_model
    with safe_open(str(path), framework="pt") as fh:
        half = any(fh.get_slice(k).get_dtype() == "F16" for k in list(fh.keys())[:5])
    info.temperature, info.review_threshold, info.unknown_threshold = values
    info.training = {**info.training, "calibration": summary}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, net, info, half=half)


def copy_calibration(model: str | Path, source: str | Path, out: str | Path) -> dict:
    """Write ``model`` with the temperature, review and unknown thresholds of ``source``.

    For a final refit (``wbc train --refit``) there is no held-out data left to calibrate on; its twin
    trained with the same recipe and budget on the training split alone was calibrated on the validation
    split, and its calibration is carried over (docs/decisions/0016). Both must share classes and
    preprocessing. Weights are unchanged (fp16 stays fp16).

    Raises:
        WbcError: not neural ``.safetensors`` models, or different classes or preprocessing.
    """
    from .errors import WbcError
    from .modelio import load_model, resolve_model_path

    path, src_path = resolve_model_path(model), resolve_model_path(source)
    for p in (path, src_path):
        if p.suffix != ".safetensors":
            raise WbcError(f"{p}: calibration is copied between neural .safetensors models")
    net, info = load_model(path)
    _, src = load_model(src_path)
    if src.classes != info.classes:
        raise WbcError(f"{src_path}: classes {src.classes} differ from {path}'s {info.classes}")
    if src.preprocess.to_dict() != info.preprocess.to_dict():
        raise WbcError(f"{src_path}: preprocessing differs from {path}'s; its calibration does not carry over")
    if src.review_threshold is None and src.unknown_threshold is None and src.temperature == 1.0:
        raise WbcError(f"{src_path}: is not calibrated (no temperature or thresholds); run `wbc calibrate` on it first")
    # the twin's own calibration record (data, target accuracy, coverage on its validation cells) stays readable
    summary = {**(src.training.get("calibration") or {}), "copied_from": str(src_path),
               "temperature_before": info.temperature, "temperature": src.temperature,
               "threshold": src.review_threshold, "unknown_threshold": src.unknown_threshold}
    _write_calibrated(path, net, info, (src.temperature, src.review_threshold, src.unknown_threshold), summary, out)
    return summary
