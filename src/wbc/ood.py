"""Out-of-distribution input: is this image a white blood cell of a kind the model knows at all?

A classifier always names one of its classes, even for a red cell, an empty field or a photo of a
lab report. ``wbc`` scores every image with the **energy** of its logits (Liu et al., "Energy-based
Out-of-distribution Detection", NeurIPS 2020): ``logsumexp(logits)``, high for the cells the model
was trained on and low for things unlike them. The rule (docs/decisions/0013-out-of-distribution.md):

    unknown  <=>  energy < unknown_threshold

where ``unknown_threshold`` is the 5th percentile of the energies of the model's own validation cells
(95 % of real cells pass), fitted by ``wbc train`` / ``wbc calibrate`` / ``wbc adapt`` and stored in
the model (:class:`wbc.modelio.ModelInfo`). Before that, an image with no blue/purple stain at all
(:func:`wbc.preprocessing.has_stain`, on the crop before colour normalisation: plasma, an empty
field) is unknown whatever the network says: its logits are shifted to energy ``log C`` (that of zero
logits), below any fitted threshold; its probabilities stay. Colour normalisation would otherwise
stretch such a crop into texture the network reads as a cell. The energy is taken at temperature 1
so that refitting the temperature does not move it. Models without logits (the classical, scikit-learn ones) get no
unknown verdict; they are scored by their maximum probability (MSP) for ``wbc evaluate-ood`` only.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata

from .errors import BadImageError, WbcError

DEFAULT_TPR = 0.95  # share of the model's own validation cells that must pass as known


class OodScore(StrEnum):
    """How an image is scored; higher = more like the training cells."""

    ENERGY = "energy"  # logsumexp of the logits (neural models)
    MSP = "msp"  # maximum calibrated class probability (any model, e.g. classical)


# ----------------------------------------------------------------------------------------------
# the rule


def energy(logits: np.ndarray) -> np.ndarray:
    """``logsumexp`` over classes of (N, C) logits: the negative free energy at temperature 1.

    >>> energy(np.array([[0.0, 0.0], [10.0, -10.0]])).round(2).tolist()
    [0.69, 10.0]
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {logits.shape}")
    return logsumexp(logits, axis=1)


def unknown_threshold(in_scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """The score below which an image is "unknown": the ``1 - tpr`` quantile of in-distribution scores, as
    the order statistic with at most ``(1 - tpr) * n`` of them below it (so that at least ``tpr`` pass).

    >>> unknown_threshold(np.arange(101.0), 0.95), unknown_threshold(np.arange(30.0), 0.95)
    (5.0, 1.0)
    """
    in_scores = np.asarray(in_scores, float)
    if in_scores.ndim != 1 or not len(in_scores) or not np.isfinite(in_scores).all():
        raise ValueError(f"in-distribution scores must be a non-empty finite 1-D array, got shape {in_scores.shape}")
    if not 0 < tpr < 1:
        raise ValueError(f"tpr must be in (0, 1), got {tpr}")
    k = int(np.floor(len(in_scores) * (1 - tpr) + 1e-9))  # scores allowed below; 1e-9: 1 - 0.95 != 0.05
    return float(np.partition(in_scores, k)[k])


def is_unknown(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """The unknown verdict per score; all False without a threshold (a model that gives none).

    >>> is_unknown(np.array([3.0, 6.0]), 5.0).tolist(), is_unknown(np.array([3.0]), None).tolist()
    ([True, False], [False])
    """
    scores = np.asarray(scores, float)
    return np.zeros(scores.shape, bool) if threshold is None else scores < threshold


def abstain_unstained(logits: np.ndarray, stained: np.ndarray) -> np.ndarray:
    """``logits`` with the rows of unstained images (``stained`` False: :func:`wbc.preprocessing.has_stain`)
    shifted so that their energy is ``log C``, that of zero logits (no evidence for any class): below any
    fitted unknown threshold, so they are called unknown and sent to review. Softmax is shift-invariant:
    the class probabilities, and so the top-1 answer every accuracy is computed from, do not change.

    >>> z = abstain_unstained(np.array([[2.0, -1.0], [3.0, 0.0]]), np.array([True, False]))
    >>> z[0].tolist(), energy(z).round(4).tolist(), round(float(z[1, 0] - z[1, 1]), 4)
    ([2.0, -1.0], [2.0486, 0.6931], 3.0)
    """
    keep = np.asarray(stained, bool)
    if keep.all():
        return logits
    logits = np.array(logits, dtype=np.float64, copy=True)
    drop = logits[~keep]
    logits[~keep] = drop - logsumexp(drop, axis=1, keepdims=True) + np.log(drop.shape[1])
    return logits.astype(np.float32)


def score_kind(predictor) -> OodScore:
    """Energy for predictors that expose logits (neural), MSP otherwise (classical)."""
    return OodScore.ENERGY if hasattr(predictor, "logits_arrays") else OodScore.MSP


def model_threshold(predictor) -> float | None:
    """The unknown threshold ``predictor`` applies; None = no unknown verdict (a classical model, or a
    neural one saved before the rule existed: re-fit it with ``wbc calibrate``)."""
    if score_kind(predictor) is not OodScore.ENERGY:
        return None
    t = getattr(predictor.info, "unknown_threshold", None)
    return None if t is None else float(t)


# ----------------------------------------------------------------------------------------------
# scoring images


def score_logits(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (N, C) and energies (N,) of raw logits (N, C)."""
    from .inference import softmax_np

    logits = np.asarray(logits, np.float32)
    return softmax_np(logits, temperature), energy(logits)


def score_arrays(predictor, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and energies of preprocessed uint8 arrays (a neural predictor)."""
    return score_logits(predictor.logits_arrays(arrays), predictor.info.temperature)


def score_images(predictor, images: list) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (N, C) and OOD scores (N,) of PIL images: energy (neural) or MSP (classical)."""
    if score_kind(predictor) is OodScore.ENERGY:
        return score_logits(predictor.logits_images(images), predictor.info.temperature)
    probs = predictor.predict_images(images)
    return probs, (probs.max(1) if len(probs) else np.zeros(0))


def score_paths(predictor, paths: Iterable[Path], *, skip_bad: bool = False, progress: bool = False,
                bad: list[BadImageError] | None = None) -> Iterator[tuple[Path, np.ndarray, float]]:
    """Yield ``(path, calibrated probabilities, OOD score)`` per readable image (energy or MSP, see above)."""
    if score_kind(predictor) is OodScore.ENERGY:
        t = predictor.info.temperature
        for path, z in predictor.logits_paths(paths, skip_bad=skip_bad, progress=progress, bad=bad):
            probs, e = score_logits(z[None], t)
            yield path, probs[0], float(e[0])
    else:
        for path, p in predictor.predict_paths(paths, skip_bad=skip_bad, progress=progress, bad=bad):
            yield path, p, float(p.max())


# ----------------------------------------------------------------------------------------------
# measuring the rule


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Probability that a random in-distribution image scores above a random OOD one (ties count half).

    >>> auroc(np.array([3.0, 4.0]), np.array([1.0, 3.0]))
    0.875
    """
    a, b = np.asarray(in_scores, float), np.asarray(ood_scores, float)
    if not len(a) or not len(b):
        raise ValueError(f"need scores on both sides, got {len(a)} in-distribution and {len(b)} OOD")
    ranks = rankdata(np.r_[a, b])  # Mann-Whitney U
    return float((ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


class OodMetrics(NamedTuple):
    auroc: float  # in- vs out-of-distribution, threshold-free
    fpr_at_95_tpr: float  # share of OOD images passing when 95 % of in-distribution ones pass
    threshold: float  # the unknown threshold applied below
    ood_unknown: float  # share of OOD images called unknown at ``threshold``
    in_unknown: float  # share of in-distribution images called unknown at ``threshold`` (the cost)


def ood_metrics(in_scores: np.ndarray, ood_scores: np.ndarray, threshold: float | None = None) -> OodMetrics:
    """AUROC, FPR at 95 % TPR and the unknown shares at ``threshold`` (default: the 95 % TPR point of ``in_scores``).

    >>> m = ood_metrics(np.arange(100.0), np.array([-1.0, 50.0]))
    >>> round(m.auroc, 4), m.fpr_at_95_tpr, m.ood_unknown, m.in_unknown
    (0.7475, 0.5, 0.5, 0.05)
    """
    a, b = np.asarray(in_scores, float), np.asarray(ood_scores, float)
    t95 = unknown_threshold(a, 0.95)
    thr = t95 if threshold is None else float(threshold)
    return OodMetrics(auroc(a, b), float((b >= t95).mean()), thr, float((b < thr).mean()), float((a < thr).mean()))


def _side(paths: Iterable[Path], predictor, progress: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, OOD scores and calibrated maximum probabilities of every image (unreadable ones fail)."""
    rows = [(str(p), s, float(probs.max())) for p, probs, s in score_paths(predictor, paths, progress=progress)]
    return [p for p, _, _ in rows], np.array([s for _, s, _ in rows]), np.array([m for *_, m in rows])


def evaluate_ood(predictor, in_paths: Iterable[Path], ood: dict[str, list[Path]], *,
                 threshold: float | None = None, progress: bool = False) -> dict:
    """How well ``predictor`` tells its kind of cells (``in_paths``) from other images (``ood``: kind -> images).

    Per kind and over all of them: AUROC and FPR at 95 % TPR of the model's score (energy; MSP for a
    classical model) and, for neural models, of the MSP as the baseline; the share called unknown at
    ``threshold`` and the share below the review threshold (calibrated confidence).

    Args:
        threshold: the unknown threshold to apply (default: the model's own, else the 95 % TPR
            point of ``in_paths``, which a classical model never applies itself).

    Returns:
        the ``ood.json`` layout (see ``wbc evaluate-ood``) plus ``"scores"``: every image's
        ``(path, set, kind, score, msp)`` for ``scores.csv``.
    """
    kind = score_kind(predictor)
    paths_in, s_in, msp_in = _side(in_paths, predictor, progress)
    scored = {k: _side(v, predictor, progress) for k, v in ood.items() if v}
    if not len(s_in) or not scored:
        raise WbcError(f"need images on both sides: {len(s_in)} in-distribution, "
                       f"{sum(len(s) for _, s, _ in scored.values())} others")
    source = "given"
    if threshold is None:
        threshold = model_threshold(predictor)
        source = "model" if threshold is not None else "95 % TPR point of these in-distribution images " \
                                                       "(the model itself calls nothing unknown)"
    threshold = unknown_threshold(s_in) if threshold is None else float(threshold)
    review = predictor.info.review_threshold

    def report(s: np.ndarray, msp: np.ndarray) -> dict:
        m = ood_metrics(s_in, s, threshold)
        row = {"n": len(s), "auroc": m.auroc, "fpr_at_95_tpr": m.fpr_at_95_tpr, "unknown": m.ood_unknown,
               "below_review": None if review is None else float((msp < review).mean())}
        if kind is OodScore.ENERGY:
            base = ood_metrics(msp_in, msp)
            row.update(auroc_msp=base.auroc, fpr_at_95_tpr_msp=base.fpr_at_95_tpr)
        return row

    every = [np.concatenate([v[i] for v in scored.values()]) for i in (1, 2)]
    rows = [(p, "in", "", s, m) for p, s, m in zip(paths_in, s_in, msp_in)]
    rows += [(p, "ood", k, s, m) for k, (ps, ss, ms) in scored.items() for p, s, m in zip(ps, ss, ms)]
    return {"score": str(kind), "threshold": threshold, "threshold_source": source, "review_threshold": review,
            "n_in": len(s_in), "in_unknown": float(is_unknown(s_in, threshold).mean()),
            "in_below_review": None if review is None else float((msp_in < review).mean()),
            "all": report(*every), "kinds": {k: report(s, m) for k, (_, s, m) in scored.items()},
            "scores": rows}


def ood_inputs(paths: Iterable[str | Path]) -> dict[str, list[Path]]:
    """Kind -> images for images and folders; kind = the first sub-folder under a given folder (e.g. the
    ``rbc/``, ``background/`` … of scripts/make_ood_set.py), else the folder's or file's parent name."""
    from .data import image_files

    out: dict[str, list[Path]] = {}
    for p in map(Path, paths):
        for f in image_files([p]):
            rel = f.relative_to(p).parts if p.is_dir() else (f.parent.name, f.name)
            out.setdefault(rel[0] if len(rel) > 1 else p.name, []).append(f)
    return dict(sorted(out.items()))


def run_ood_evaluation(model: str | Path | None, data: list[str], ood: list[str], out: str | Path, *,
                       split: str | None = None, groups: str | None = None, threshold: float | None = None,
                       backend: str = "auto", precision: str = "auto", batch_size: int = 64,
                       progress: bool = True) -> dict:
    """``wbc evaluate-ood``: :func:`evaluate_ood` on in-distribution ``data`` (its test split if it has one)
    against the images of ``ood``, overall and per kind; writes ``ood.json`` and ``scores.csv`` into ``out``.

    Raises:
        WbcError: no images on either side, or an unreadable image.
    """
    from .data import discover
    from .evaluation import evaluation_records
    from .inference import load_predictor
    from .io import write_csv, write_json

    in_paths, sources = [], []
    for d in data:
        recs, used = evaluation_records(discover(d, groups), split)
        in_paths += [r.path for r in recs]
        sources.append((str(d), used, {str(r.path) for r in recs}))
    kinds = ood_inputs(ood)
    if not in_paths or not kinds:
        raise WbcError(f"need images on both sides: {len(in_paths)} in {', '.join(data)}, "
                       f"{sum(map(len, kinds.values()))} in {', '.join(map(str, ood))}")
    predictor = load_predictor(model, backend=backend, precision=precision, batch_size=batch_size)
    res = evaluate_ood(predictor, in_paths, kinds, threshold=threshold, progress=progress)
    rows = res.pop("scores")
    review = res["review_threshold"]
    res["in_by_data"] = []  # the cost per source of real cells
    for d, used, members in sources:
        sv = np.array([(v, m) for p, s, _, v, m in rows if s == "in" and p in members]).reshape(-1, 2)
        res["in_by_data"].append({"data": d, "split": used, "n": len(sv),
                                  "unknown": float(is_unknown(sv[:, 0], res["threshold"]).mean()) if len(sv) else None,
                                  "below_review": float((sv[:, 1] < review).mean()) if len(sv) and review else None})
    res.update(model=str(model or "bundled default"), backend=str(getattr(predictor, "backend", "scikit-learn")),
               data=list(map(str, data)), split=[used for _, used, _ in sources], ood=list(map(str, ood)))
    out = Path(out)
    write_json(out / "ood.json", res)
    write_csv(out / "scores.csv", [{"path": p, "set": s, "kind": k, "score": round(v, 4), "msp": round(m, 4),
                                    "unknown": int(v < res["threshold"])} for p, s, k, v, m in rows],
              ["path", "set", "kind", "score", "msp", "unknown"])
    return res
