"""Agreement of a test differential with a reference one (the "clinical validation" of a counter).

Two kinds of input, recognised from the CSV columns:

* **per cell** (a ``label`` column, also ``category`` or ``class``): the two files are joined by
  cell box (IoU >= 0.5 within an image, when both have ``x_min, y_min, x_max, y_max``), by
  ``image`` + ``cell_id``, or by image when the reference has one label per image (the BCCD
  ``labels.csv`` style; then only images where the test found exactly one cell are compared).
  Reported: Cohen's kappa with its 95 % interval, the confusion matrix, per-class sensitivity,
  specificity and predictive values (reference = truth).
* **per sample** (a ``sample_id`` column and one column per cell type: ``<type>`` = counts,
  ``<type>_percent`` = percentages, e.g. ``samples.csv`` of ``wbc count``): per type, the
  Bland-Altman bias and 95 % limits of agreement (Bland & Altman 1986, with the intervals of
  Bland & Altman 1999), Pearson and Spearman correlation, ordinary least squares and
  Passing-Bablok (1983) regression.

>>> k = cohen_kappa(np.array([[20, 5], [10, 15]]))
>>> round(k.kappa, 3), [round(x, 3) for x in k.ci95]
(0.4, [0.146, 0.654])
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from .classes import canonical_label, display_name
from .differential import LEUKOCYTES
from .errors import WbcError
from .io import write_csv, write_json
from .report import Section, image_section, note_section, table_section, write_html_report

log = logging.getLogger(__name__)

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
LABEL_COLUMNS = ("label", "category", "class")
IMAGE_COLUMNS = ("image", "path", "file", "filename")
SAMPLE_COLUMNS = ("sample_id", "sample")


# ----------------------------------------------------------------------------------------------
# statistics


class Kappa(NamedTuple):
    kappa: float
    se: float
    ci95: tuple[float, float]
    observed: float  # observed agreement p_o
    expected: float  # chance agreement p_e
    n: int


def cohen_kappa(cm: np.ndarray, level: float = 0.95) -> Kappa:
    """Cohen's (1960) unweighted kappa of a square confusion matrix, with Cohen's large-sample SE.

    ``SE = sqrt(p_o (1 - p_o) / (n (1 - p_e)^2))``; interval = kappa +- z * SE.

    Raises:
        ValueError: ``cm`` is not square or holds no counts.
    """
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    n = cm.sum()
    if n <= 0:
        raise ValueError("confusion matrix is empty")
    po = np.trace(cm) / n
    pe = float((cm.sum(axis=0) * cm.sum(axis=1)).sum() / n ** 2)
    if pe >= 1:  # one class only on both sides: agreement is perfect but kappa undefined
        return Kappa(float("nan"), float("nan"), (float("nan"), float("nan")), float(po), pe, int(n))
    kappa = (po - pe) / (1 - pe)
    se = math.sqrt(po * (1 - po) / (n * (1 - pe) ** 2))
    z = stats.norm.ppf(0.5 + level / 2)
    return Kappa(float(kappa), se, (float(kappa - z * se), float(kappa + z * se)), float(po), pe, int(n))


def per_class_agreement(cm: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Sensitivity, specificity, PPV and NPV per class (rows of ``cm`` = reference, columns = test)."""
    cm = np.asarray(cm, dtype=float)
    n = cm.sum()
    out = []
    for k, c in enumerate(classes):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = n - tp - fn - fp
        ratio = lambda a, b: float(a / b) if b > 0 else None  # noqa: E731
        out.append({"class": c, "reference_n": int(cm[k].sum()), "test_n": int(cm[:, k].sum()),
                    "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
                    "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)})
    return out


class BlandAltman(NamedTuple):
    n: int
    bias: float  # mean of test - reference
    sd: float
    loa: tuple[float, float]  # bias +- 1.96 sd
    bias_ci95: tuple[float, float]
    loa_low_ci95: tuple[float, float]
    loa_high_ci95: tuple[float, float]


def bland_altman(reference: np.ndarray, test: np.ndarray) -> BlandAltman:
    """Bias and 95 % limits of agreement of ``test - reference`` (Bland & Altman 1986).

    The intervals use t with n-1 degrees of freedom; the SE of a limit is ``sd * sqrt(3 / n)``
    (Bland & Altman 1999).

    >>> ba = bland_altman(np.array([1, 2, 3, 4.]), np.array([2, 2, 5, 4.]))
    >>> round(ba.bias, 4), round(ba.sd, 4), [round(x, 4) for x in ba.loa]
    (0.75, 0.9574, [-1.1266, 2.6266])

    Raises:
        ValueError: fewer than 2 pairs or arrays of different length.
    """
    x, y = np.asarray(reference, float), np.asarray(test, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"reference and test must be 1-D of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 pairs, got {len(x)}")
    d = y - x
    n = len(d)
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    t = float(stats.t.ppf(0.975, n - 1))
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    se_b, se_l = sd / math.sqrt(n), sd * math.sqrt(3 / n)
    return BlandAltman(n, bias, sd, (lo, hi), (bias - t * se_b, bias + t * se_b), (lo - t * se_l, lo + t * se_l),
                       (hi - t * se_l, hi + t * se_l))


class Regression(NamedTuple):
    slope: float
    intercept: float
    slope_ci95: tuple[float, float] | None = None
    intercept_ci95: tuple[float, float] | None = None
    r2: float | None = None


def ols(x: np.ndarray, y: np.ndarray) -> Regression:
    """Least-squares line ``y = slope x + intercept`` with 95 % intervals and R²."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0:
        return Regression(float("nan"), float("nan"))
    res = stats.linregress(x, y)
    t = float(stats.t.ppf(0.975, len(x) - 2))
    se_b, se_a = t * res.stderr, t * res.intercept_stderr
    return Regression(float(res.slope), float(res.intercept), (float(res.slope - se_b), float(res.slope + se_b)),
                      (float(res.intercept - se_a), float(res.intercept + se_a)), float(res.rvalue ** 2))


def passing_bablok(x: np.ndarray, y: np.ndarray) -> Regression:
    """Passing-Bablok (1983) regression: a method-comparison line robust to outliers and to error in both.

    Slope = the shifted median of all pairwise slopes (slopes of -1 and 0/0 dropped; ``K``
    slopes below -1 shift the median); intercept = median of ``y - slope x``; the slope's 95 %
    interval from the ranks ``(N -+ C) / 2 + K`` with ``C = 1.96 sqrt(n (n-1) (2n+5) / 18)``.

    >>> r = passing_bablok(np.arange(10.), 2 * np.arange(10.) + 1)
    >>> round(r.slope, 6), round(r.intercept, 6)
    (2.0, 1.0)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3:
        return Regression(float("nan"), float("nan"))
    i, j = np.triu_indices(n, k=1)
    dx, dy = x[j] - x[i], y[j] - y[i]
    keep = ~((dx == 0) & (dy == 0))
    dx, dy = dx[keep], dy[keep]
    with np.errstate(divide="ignore"):
        s = np.where(dx != 0, dy / np.where(dx != 0, dx, 1), np.sign(dy) * np.inf)
    s = np.sort(s[s != -1])
    N = len(s)
    if N == 0:
        return Regression(float("nan"), float("nan"))
    K = int((s < -1).sum())

    def at(rank: int) -> float:  # 1-based rank, clipped
        return float(s[min(max(rank, 1), N) - 1])

    slope = at((N + 1) // 2 + K) if N % 2 else 0.5 * (at(N // 2 + K) + at(N // 2 + 1 + K))
    C = 1.959964 * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    m1 = int(round((N - C) / 2))
    m2 = N - m1 + 1
    lo, hi = at(m1 + K), at(m2 + K)
    intercept = float(np.median(y - slope * x))
    ci_int = (float(np.median(y - hi * x)), float(np.median(y - lo * x))) if math.isfinite(lo + hi) else None
    return Regression(slope, intercept, (lo, hi), ci_int)


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Pearson r and Spearman rho with their p-values (``None`` when a side is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman_rho": float(sr.statistic), "spearman_p": float(sr.pvalue)}


# ----------------------------------------------------------------------------------------------
# reading


def read_rows(path: str | Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Rows of a CSV with lower-cased, stripped keys, and the map lower-case -> original column name."""
    p = Path(path)
    if not p.is_file():
        raise WbcError(f"{p}: file not found")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except UnicodeDecodeError:
        raise WbcError(f"{p}: not a UTF-8 text CSV") from None
    if not cols:
        raise WbcError(f"{p}: empty CSV (no header)")
    return rows, cols


def _first(cols, names) -> str | None:
    return next((n for n in names if n in cols), None)


def input_kind(cols: dict[str, str]) -> str:
    """``"cells"`` or ``"samples"`` from the columns of a CSV (see the module docstring)."""
    if _first(cols, LABEL_COLUMNS):
        return "cells"
    if _first(cols, SAMPLE_COLUMNS) and any(canonical_label(c.removesuffix("_percent").removesuffix("_%"))
                                            for c in cols):
        return "samples"
    raise WbcError(f"cannot tell the input kind from columns {list(cols.values())}: per-cell files need a 'label' "
                   "column, per-sample files a 'sample_id' column and one column per cell type")


def image_key(value: str) -> str:
    """An image's join key: its file stem (``a/b/BloodImage_00012.jpg`` -> ``BloodImage_00012``)."""
    return Path(value.replace("\\", "/")).stem if value else ""


def _label(raw: str) -> tuple[str | None, str | None]:
    """``(label, reason it is unusable)``."""
    if not raw:
        return None, "no label"
    if "," in raw or ";" in raw:
        return None, "several labels"
    lab = canonical_label(raw)
    return (lab, None) if lab else (None, f"unknown label '{raw}'")


@dataclass
class CellPairs:
    """Joined per-cell labels and what could not be joined."""

    reference: list[str]
    test: list[str]
    keys: list[str]
    join: str
    excluded: Counter = field(default_factory=Counter)


def pair_cells(ref_rows: list[dict], test_rows: list[dict], iou: float = 0.5) -> CellPairs:
    """Join reference and test cells by box, by image + cell id, or by image (one cell per image)."""
    from .segmentation import match_boxes

    rl = _first(ref_rows[0] if ref_rows else {}, LABEL_COLUMNS)
    tl = _first(test_rows[0] if test_rows else {}, LABEL_COLUMNS)
    ri = _first(ref_rows[0] if ref_rows else {}, IMAGE_COLUMNS)
    ti = _first(test_rows[0] if test_rows else {}, IMAGE_COLUMNS)
    excluded: Counter = Counter()

    def usable(rows, lcol, side):
        out = []
        for r in rows:
            lab, why = _label(r.get(lcol, ""))
            if lab is None:
                excluded[f"{side}: {why}"] += 1
            else:
                out.append((r, lab))
        return out

    ref, test = usable(ref_rows, rl, "reference"), usable(test_rows, tl, "test")
    pairs = CellPairs([], [], [], "", excluded)
    ref_cols, test_cols = (ref_rows[0] if ref_rows else {}), (test_rows[0] if test_rows else {})
    has_boxes = all(c in ref_cols for c in BOX_COLUMNS) and all(c in test_cols for c in BOX_COLUMNS)
    if ri and ti and has_boxes:
        pairs.join = f"box IoU >= {iou} within each image"
        by_img: dict[str, tuple[list, list]] = {}
        for r, lab in ref:
            by_img.setdefault(image_key(r[ri]), ([], []))[0].append((r, lab))
        for r, lab in test:
            by_img.setdefault(image_key(r[ti]), ([], []))[1].append((r, lab))
        for img, (rs, ts) in sorted(by_img.items()):
            box = lambda r: tuple(float(r[c]) for c in BOX_COLUMNS)  # noqa: E731
            m = match_boxes([box(r) for r, _ in ts], [box(r) for r, _ in rs], iou)
            for ti_, ri_, _ in m:
                pairs.reference.append(rs[ri_][1])
                pairs.test.append(ts[ti_][1])
                pairs.keys.append(f"{img}#{ri_ + 1}")
            excluded["reference cell not found by the test"] += len(rs) - len(m)
            excluded["test cell not in the reference"] += len(ts) - len(m)
        return pairs
    if ri and ti and "cell_id" in ref_cols and "cell_id" in test_cols:
        pairs.join = "image + cell_id"
        tmap = {(image_key(r[ti]), r["cell_id"]): lab for r, lab in test}
        for r, lab in ref:
            key = (image_key(r[ri]), r["cell_id"])
            if key in tmap:
                pairs.reference.append(lab)
                pairs.test.append(tmap[key])
                pairs.keys.append(f"{key[0]}#{key[1]}")
            else:
                excluded["reference cell not in the test"] += 1
        return pairs
    if ri and ti:
        pairs.join = "image (one reference label per image; images where the test found exactly one cell)"
        ref_by_img: dict[str, list[str]] = {}
        for r, lab in ref:
            ref_by_img.setdefault(image_key(r[ri]), []).append(lab)
        test_by_img: dict[str, list[str]] = {}
        for r, lab in test:
            test_by_img.setdefault(image_key(r[ti]), []).append(lab)
        for img, labs in sorted(ref_by_img.items()):
            found = test_by_img.get(img, [])
            if len(labs) != 1:
                excluded["reference image with several rows"] += 1
            elif not found:
                excluded["image where the test found no cell"] += 1
            elif len(found) > 1:
                excluded["image where the test found several cells"] += 1
            else:
                pairs.reference.append(labs[0])
                pairs.test.append(found[0])
                pairs.keys.append(img)
        return pairs
    raise WbcError("per-cell files need an 'image' column on both sides (and 'cell_id' or box columns to pair "
                   "several cells per image)")


def sample_percentages(rows: list[dict], cols: dict[str, str], path: str) -> dict[str, dict[str, float]]:
    """``{sample_id: {type: percent}}``; ``<type>`` columns are counts, ``<type>_percent`` percentages."""
    sid = _first(cols, SAMPLE_COLUMNS)
    pct_cols = {canonical_label(c.removesuffix("_percent").removesuffix("_%")): c for c in cols
                if (c.endswith("_percent") or c.endswith("_%")) and canonical_label(c.removesuffix("_percent")
                                                                                     .removesuffix("_%"))}
    cnt_cols = {canonical_label(c): c for c in cols if canonical_label(c) and c not in pct_cols.values()}
    out: dict[str, dict[str, float]] = {}
    for lineno, r in enumerate(rows, start=2):
        name = r.get(sid, "")
        if not name:
            raise WbcError(f"{path}:{lineno}: empty sample id")
        try:
            if pct_cols:
                out[name] = {t: float(r[c]) for t, c in pct_cols.items() if r.get(c, "") != ""}
            else:
                counts = {t: float(r[c] or 0) for t, c in cnt_cols.items()}
                total = sum(v for t, v in counts.items() if t in LEUKOCYTES)
                out[name] = {t: 100 * v / total for t, v in counts.items() if t in LEUKOCYTES} if total else {}
        except ValueError as exc:
            raise WbcError(f"{path}:{lineno}: not a number ({exc})") from None
    return out


# ----------------------------------------------------------------------------------------------
# running


def _order(labels: set[str]) -> list[str]:
    return [c for c in LEUKOCYTES if c in labels] + sorted(labels - set(LEUKOCYTES))


def cell_agreement(pairs: CellPairs) -> dict[str, Any]:
    """Kappa, confusion matrix and per-class statistics of joined per-cell labels."""
    if not pairs.reference:
        raise WbcError("no cell could be paired between reference and test: "
                       + ", ".join(f"{k}: {v}" for k, v in pairs.excluded.items()))
    classes = _order(set(pairs.reference) | set(pairs.test))
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), int)
    for r, t in zip(pairs.reference, pairs.test):
        cm[idx[r], idx[t]] += 1
    k = cohen_kappa(cm)
    return {"kind": "cells", "join": pairs.join, "n": int(cm.sum()), "classes": classes,
            "confusion_matrix": cm.tolist(), "accuracy": float(np.trace(cm) / cm.sum()),
            "kappa": k.kappa, "kappa_se": k.se, "kappa_ci95": list(k.ci95), "observed_agreement": k.observed,
            "chance_agreement": k.expected, "per_class": per_class_agreement(cm, classes),
            "excluded": dict(pairs.excluded)}


def sample_agreement(ref: dict[str, dict[str, float]], test: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per cell type: Bland-Altman, correlations and regressions of test vs reference percentages."""
    common = sorted(set(ref) & set(test))
    if len(common) < 2:
        raise WbcError(f"need at least 2 samples in both files, found {len(common)} in common "
                       f"(reference {len(ref)}, test {len(test)})")
    types = [c for c in LEUKOCYTES if any(c in ref[s] for s in common) and any(c in test[s] for s in common)]
    per_type = {}
    for c in types:
        x = np.array([ref[s].get(c, 0.0) for s in common])
        y = np.array([test[s].get(c, 0.0) for s in common])
        ba = bland_altman(x, y)
        per_type[c] = {"n": len(common), "reference_mean": float(x.mean()), "test_mean": float(y.mean()),
                       "bland_altman": ba._asdict(), **correlations(x, y), "ols": ols(x, y)._asdict(),
                       "passing_bablok": passing_bablok(x, y)._asdict(),
                       "pairs": [[float(a), float(b)] for a, b in zip(x, y)]}
    return {"kind": "samples", "n_samples": len(common), "samples": common, "types": types, "per_type": per_type,
            "only_in_reference": sorted(set(ref) - set(test)), "only_in_test": sorted(set(test) - set(ref))}


def plot_bland_altman(result: dict[str, Any], path: Path) -> Path:
    """One Bland-Altman panel (difference vs mean, bias and limits) and one scatter panel per cell type."""
    from .plots import new_figure, save_png

    types = result["types"]
    fig = new_figure(8.5, 2.8 * len(types))
    axes = fig.subplots(len(types), 2, squeeze=False)
    for (ax_ba, ax_sc), c in zip(axes, types):
        r = result["per_type"][c]
        xy = np.array(r["pairs"])
        x, y = xy[:, 0], xy[:, 1]
        ba = r["bland_altman"]
        ax_ba.scatter((x + y) / 2, y - x, s=14, color="#0072b2")
        ax_ba.axhline(ba["bias"], color="black", lw=1, label=f"bias {ba['bias']:.2f}")
        for v in ba["loa"]:
            ax_ba.axhline(v, color="#d55e00", lw=1, ls="--")
        ax_ba.axhline(0, color="0.6", lw=0.8, ls=":")
        ax_ba.set_title(f"{display_name(c)}: LoA {ba['loa'][0]:.1f} to {ba['loa'][1]:.1f}", fontsize=9)
        ax_ba.set_xlabel("mean of reference and test (%)")
        ax_ba.set_ylabel("test - reference (%)")
        lim = max(float(max(x.max(), y.max())), 1.0) * 1.05
        ax_sc.scatter(x, y, s=14, color="#0072b2")
        ax_sc.plot([0, lim], [0, lim], color="0.6", ls=":", lw=1, label="identity")
        pb = r["passing_bablok"]
        if pb["slope"] is not None and math.isfinite(pb["slope"]):
            ax_sc.plot([0, lim], [pb["intercept"], pb["intercept"] + pb["slope"] * lim], color="#d55e00", lw=1,
                       label=f"Passing-Bablok y = {pb['slope']:.2f}x + {pb['intercept']:.1f}")
        ax_sc.set_xlim(0, lim)
        ax_sc.set_ylim(0, lim)
        rho = r.get("spearman_rho")
        ax_sc.set_title(f"{display_name(c)}: r = {r['pearson_r']:.2f}, rho = {rho:.2f}" if rho is not None
                        else display_name(c), fontsize=9)
        ax_sc.set_xlabel("reference (%)")
        ax_sc.set_ylabel("test (%)")
        ax_sc.legend(fontsize=7, loc="upper left")
    return save_png(fig, path)


def _fmt_ci(ci) -> str | None:
    return None if ci is None or any(v is None or not math.isfinite(v) for v in ci) else f"{ci[0]:.3f} – {ci[1]:.3f}"


def run_agreement(reference: str | Path, test: str | Path, out: str | Path) -> dict[str, Any]:
    """Compare ``test`` with ``reference``; write ``agreement.json``, plots, ``pairs.csv`` and ``report.html``.

    Raises:
        WbcError: unreadable or mismatched inputs (one per-cell, the other per-sample), or nothing to compare.
    """
    from .plots import plot_confusion_matrix

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref_rows, ref_cols = read_rows(reference)
    test_rows, test_cols = read_rows(test)
    kind_r, kind_t = input_kind(ref_cols), input_kind(test_cols)
    if kind_r != kind_t:
        raise WbcError(f"{reference} is per-{kind_r[:-1]} but {test} is per-{kind_t[:-1]}; give two of the same kind")
    sections: list[Section] = []
    if kind_r == "cells":
        pairs = pair_cells(ref_rows, test_rows)
        result = cell_agreement(pairs)
        write_csv(out / "pairs.csv", [{"key": k, "reference": r, "test": t} for k, r, t in
                                      zip(pairs.keys, pairs.reference, pairs.test)], ["key", "reference", "test"])
        plot_confusion_matrix(np.array(result["confusion_matrix"]), [display_name(c) for c in result["classes"]],
                              out / "confusion_matrix.png")
        excl = "; ".join(f"{k}: {v}" for k, v in result["excluded"].items()) or "none"
        sections.append(note_section("Summary", f"{result['n']} cells paired ({result['join']}). Excluded: {excl}."))
        sections.append(table_section("Agreement", [
            {"Statistic": "Cohen's kappa", "Value": result["kappa"], "95% CI": _fmt_ci(result["kappa_ci95"])},
            {"Statistic": "Observed agreement (accuracy)", "Value": result["observed_agreement"], "95% CI": None},
            {"Statistic": "Chance agreement", "Value": result["chance_agreement"], "95% CI": None}],
            text="Kappa: Cohen (1960), large-sample standard error; the reference is taken as the truth below."))
        sections.append(table_section("Per class", [
            {"Class": display_name(r["class"]), "Reference n": r["reference_n"], "Test n": r["test_n"],
             "Sensitivity": r["sensitivity"], "Specificity": r["specificity"], "PPV": r["ppv"], "NPV": r["npv"]}
            for r in result["per_class"]]))
        sections.append(image_section("Confusion matrix", out / "confusion_matrix.png",
                                      caption="rows: reference, columns: test"))
    else:
        ref = sample_percentages(ref_rows, ref_cols, str(reference))
        tst = sample_percentages(test_rows, test_cols, str(test))
        result = sample_agreement(ref, tst)
        plot_bland_altman(result, out / "bland_altman.png")
        rows = []
        for c in result["types"]:
            r = result["per_type"][c]
            ba, pb = r["bland_altman"], r["passing_bablok"]
            rows.append({"Type": display_name(c), "n": r["n"], "Bias (%)": ba["bias"],
                         "Bias 95% CI": _fmt_ci(ba["bias_ci95"]), "LoA low": ba["loa"][0], "LoA high": ba["loa"][1],
                         "Pearson r": r["pearson_r"], "Spearman rho": r["spearman_rho"],
                         "PB slope": pb["slope"], "PB slope 95% CI": _fmt_ci(pb["slope_ci95"]),
                         "PB intercept": pb["intercept"], "OLS slope": r["ols"]["slope"], "R²": r["ols"]["r2"]})
        only_r, only_t = len(result["only_in_reference"]), len(result["only_in_test"])
        sections.append(note_section("Summary", f"{result['n_samples']} samples in both files; only in reference: "
                                     f"{only_r}, only in test: {only_t}."))
        sections.append(table_section("Agreement per cell type", rows,
                                      text="Differences are test - reference in percentage points. LoA: 95 % limits "
                                           "of agreement (Bland & Altman 1986). PB: Passing-Bablok regression."))
        sections.append(image_section("Bland-Altman and scatter plots", out / "bland_altman.png"))
    result["reference_file"], result["test_file"] = str(reference), str(test)
    write_json(out / "agreement.json", result)
    write_html_report(out / "report.html", "Agreement with the reference", sections,
                      subtitle=f"reference: {reference} — test: {test}")
    return result


def write_bccd_reference(labels_csv: str | Path, images_dir: str | Path, out_csv: str | Path,
                         source_map: str | Path | None = None, near_duplicates: str | Path | None = None) -> int:
    """Write ``image,label`` for the BCCD fields with one label, optionally only the Kaggle TEST sources.

    With ``source_map`` (``provenance/dataset2_source_map.csv``) only fields that fed Kaggle TEST and
    never TRAIN are kept, and with ``near_duplicates`` also none whose twin fed TRAIN: the bundled
    model never saw them. Returns the number of fields written.
    """
    images_dir = Path(images_dir)
    rows, _ = read_rows(labels_csv)
    keep: set[str] | None = None
    if source_map is not None:
        smap, _ = read_rows(source_map)
        splits: dict[str, set[str]] = {}
        for r in smap:
            splits.setdefault(r["inferred_source_image"], set()).add(r["split"].upper())
        train = {s for s, v in splits.items() if "TRAIN" in v}
        keep = {s for s, v in splits.items() if "TRAIN" not in v}
        if near_duplicates is not None:
            dups, _ = read_rows(near_duplicates)
            for r in dups:
                a, b = r["image_a"], r["image_b"]
                if a in train:
                    keep.discard(b)
                if b in train:
                    keep.discard(a)
    out = []
    for r in rows:
        stem = f"BloodImage_{int(r['image']):05d}"
        lab, _ = _label(r.get("category", ""))
        path = images_dir / f"{stem}.jpg"
        if lab is None or not path.is_file() or (keep is not None and stem not in keep):
            continue
        out.append({"image": str(path), "label": lab})
    write_csv(out_csv, out, ["image", "label"])
    return len(out)
