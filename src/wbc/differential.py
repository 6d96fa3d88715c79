"""The leukocyte differential of a sample: counts, percentages with exact 95 % intervals, absolute counts, flags.

Conventions (those of a manual smear differential):

* The denominator is the leukocytes counted (:data:`LEUKOCYTES`: the five mature types and
  immature granulocytes). Erythroblasts (nucleated red cells) are not leukocytes: they are
  reported per 100 leukocytes. Objects the classifier calls platelets (clumps that looked like a
  cell) are listed but not counted.
* The 95 % interval of every percentage is the exact binomial (Clopper-Pearson) interval of the
  proportion, which is what Rümke's tables tabulate (Rümke 1979; CLSI H20-A2): with 100 cells a
  count of 0 % has an upper limit of 3.6 %, a count of 50 % the interval 39.8-60.2 %.
* Flags use absolute counts (x10^9/L) when the total WBC count is given, else percentages; a flag
  is *significant* when the whole 95 % interval lies outside the reference interval.

>>> d = compute_differential(["neutrophil"] * 60 + ["lymphocyte"] * 30 + ["monocyte"] * 10, sample_id="s1")
>>> d.n_cells, d.percent["neutrophil"], [round(x, 1) for x in d.ci95["monocyte"]]
(100, 60.0, [4.9, 17.6])
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scipy.stats import beta

from .classes import display_name
from .reference_ranges import RangeBand, RangeTable, load_ranges, select_band

#: Cell types in the differential's denominator, in reporting order.
LEUKOCYTES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")
ERYTHROBLAST = "erythroblast"
#: The usual minimum for a manual differential (CLSI H20-A2 uses 200; 100 is the routine count).
MIN_CELLS = 100

#: (flag when below the interval, flag when above); ``None`` = not flagged on that side.
FLAG_NAMES: dict[str, tuple[str | None, str | None]] = {
    "neutrophil": ("neutropenia", "neutrophilia"),
    "lymphocyte": ("lymphopenia", "lymphocytosis"),
    "monocyte": ("monocytopenia", "monocytosis"),
    "eosinophil": (None, "eosinophilia"),
    "basophil": (None, "basophilia"),
}
WBC_FLAGS = ("leukopenia", "leukocytosis")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of the proportion ``k / n`` (Clopper & Pearson 1934).

    >>> [round(x, 4) for x in clopper_pearson(0, 100)], [round(x, 4) for x in clopper_pearson(50, 100)]
    ([0.0, 0.0362], [0.3983, 0.6017])

    Raises:
        ValueError: unless ``0 <= k <= n``, ``n >= 1`` and ``0 < level < 1``.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


@dataclass
class Differential:
    """One sample's differential; :meth:`to_dict` gives the ``differential.json`` layout."""

    sample_id: str
    n_cells: int  # leukocytes counted (the denominator)
    counts: dict[str, int]  # every label found, including erythroblasts and platelets
    percent: dict[str, float | None]  # leukocyte types, % of n_cells
    ci95: dict[str, list[float] | None]  # exact 95 % interval of each percentage
    absolute: dict[str, float] | None = None  # x10^9/L, when the WBC count is given
    absolute_ci95: dict[str, list[float]] | None = None
    wbc_count: float | None = None
    nrbc_per_100_wbc: float | None = None
    n_excluded: int = 0  # detections classified as platelets: not leukocytes
    n_review: int = 0
    n_images: int = 0
    reference_ranges: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    flag_details: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """Rows for a report table: type, count, %, 95 % CI, absolute, reference intervals."""
        rel = self.reference_ranges.get("relative", {})
        ab = self.reference_ranges.get("absolute", {})
        rows = []
        for c in LEUKOCYTES:
            ci = self.ci95.get(c)
            row = {"Cell type": display_name(c), "Count": self.counts.get(c, 0), "%": self.percent.get(c),
                   "95% CI (%)": f"{ci[0]:.1f} – {ci[1]:.1f}" if ci else None,
                   "Reference (%)": _fmt_interval(rel.get(c))}
            if self.absolute is not None:
                aci = (self.absolute_ci95 or {}).get(c)
                row["x10^9/L"] = self.absolute.get(c)
                row["95% CI (x10^9/L)"] = f"{aci[0]:.2f} – {aci[1]:.2f}" if aci else None
                row["Reference (x10^9/L)"] = _fmt_interval(ab.get(c))
            rows.append(row)
        return rows


def _fmt_interval(iv) -> str | None:
    return None if iv is None else f"{iv[0]:g} – {iv[1]:g}"


def _flag(cell: str, side: int, value: float, ci: Sequence[float] | None, interval: Sequence[float],
          basis: str) -> dict[str, Any] | None:
    names = FLAG_NAMES.get(cell)
    if names is None or names[0 if side < 0 else 1] is None:
        return None
    significant = ci is not None and (ci[1] < interval[0] if side < 0 else ci[0] > interval[1])
    return {"flag": names[0 if side < 0 else 1], "cell": cell, "basis": basis, "value": round(value, 3),
            "ci95": [round(x, 3) for x in ci] if ci is not None else None, "reference": list(interval),
            "significant": bool(significant)}


def compute_differential(labels: Sequence[str], *, sample_id: str = "sample", review: Sequence[bool] | None = None,
                         wbc_count: float | None = None, band: RangeBand | None = None,
                         table: RangeTable | None = None, min_cells: int = MIN_CELLS, n_images: int = 0,
                         level: float = 0.95) -> Differential:
    """Counts, percentages, exact intervals, absolute counts and flags from one label per detected cell.

    Args:
        labels: the predicted class of every detected cell of the sample.
        sample_id: name in the output.
        review: per cell, whether it was marked for review (counted all the same).
        wbc_count: total leukocyte count of the sample in x10^9/L (from an analyser), if known.
        band: reference intervals to flag against (default: the default band of ``table``).
        table: the range table ``band`` comes from (default: bundled adult ranges).
        min_cells: fewer leukocytes than this raise the ``too_few_cells`` flag.
        n_images: fields the cells came from (reported only).
        level: confidence level of the intervals.

    Raises:
        ValueError: ``wbc_count`` is negative or not finite, or ``review`` does not match ``labels``.
    """
    if wbc_count is not None and (not math.isfinite(wbc_count) or wbc_count < 0):
        raise ValueError(f"wbc_count must be a non-negative number (x10^9/L), got {wbc_count}")
    if review is not None and len(review) != len(labels):
        raise ValueError(f"review has {len(review)} entries but there are {len(labels)} labels")
    table = table or load_ranges()
    band = band or select_band(table)
    counts = Counter(labels)
    n = sum(counts[c] for c in LEUKOCYTES)
    percent: dict[str, float | None] = {}
    ci: dict[str, list[float] | None] = {}
    for c in LEUKOCYTES:
        if n:
            lo, hi = clopper_pearson(counts[c], n, level)
            percent[c] = round(100 * counts[c] / n, 2)
            ci[c] = [round(100 * lo, 2), round(100 * hi, 2)]
        else:
            percent[c], ci[c] = None, None
    d = Differential(sample_id=sample_id, n_cells=n, counts=dict(sorted(counts.items())), percent=percent, ci95=ci,
                     wbc_count=wbc_count, n_excluded=counts.get("platelet", 0),
                     n_review=int(sum(bool(r) for r in review)) if review is not None else 0, n_images=n_images,
                     reference_ranges={"name": table.name, "source": table.source, "file": table.path,
                                       **{k: v for k, v in band.to_dict().items() if k != "default"}})
    if counts.get(ERYTHROBLAST):
        d.nrbc_per_100_wbc = round(100 * counts[ERYTHROBLAST] / n, 2) if n else None
    if wbc_count is not None and n:
        d.absolute = {c: round(wbc_count * counts[c] / n, 3) for c in LEUKOCYTES}
        d.absolute_ci95 = {c: [round(wbc_count * x / 100, 3) for x in ci[c]] for c in LEUKOCYTES}  # type: ignore[index]
    _add_flags(d, band, min_cells)
    return d


def _add_flags(d: Differential, band: RangeBand, min_cells: int) -> None:
    details: list[dict[str, Any]] = []
    if d.n_cells == 0:
        d.flags.append("no_cells")
        d.warnings.append("no white blood cells were found: no differential")
    elif d.n_cells < min_cells:
        d.flags.append("too_few_cells")
        d.warnings.append(f"only {d.n_cells} leukocytes counted (< {min_cells}): the percentages are unreliable; "
                          "see their 95 % intervals")
    if d.n_cells:
        for c in FLAG_NAMES:
            if d.absolute is not None and c in band.absolute:
                value, ci, interval, basis = d.absolute[c], (d.absolute_ci95 or {})[c], band.absolute[c], "absolute"
            elif c in band.relative:
                value, ci, interval, basis = d.percent[c], d.ci95[c], band.relative[c], "relative"
            else:
                continue
            side = -1 if value < interval[0] else (1 if value > interval[1] else 0)
            if side and (f := _flag(c, side, value, ci, interval, basis)) is not None:
                details.append(f)
    if d.wbc_count is not None and band.wbc is not None:
        lo, hi = band.wbc
        if not lo <= d.wbc_count <= hi:
            name = WBC_FLAGS[0] if d.wbc_count < lo else WBC_FLAGS[1]
            details.append({"flag": name, "cell": "wbc", "basis": "absolute", "value": d.wbc_count, "ci95": None,
                            "reference": [lo, hi], "significant": True})
    if d.counts.get("ig"):
        details.append({"flag": "immature_granulocytes_present", "cell": "ig", "basis": "count",
                        "value": d.counts["ig"], "ci95": None, "reference": None, "significant": True})
    if d.counts.get(ERYTHROBLAST):
        details.append({"flag": "erythroblasts_present", "cell": ERYTHROBLAST, "basis": "count",
                        "value": d.counts[ERYTHROBLAST], "ci95": None, "reference": None, "significant": True})
    d.flag_details = details
    d.flags += [f["flag"] for f in details]


def plot_differential(d: Differential, path: str | Path) -> Path:
    """Bar chart of the percentages with their 95 % intervals and reference intervals (shaded), plus a pie."""
    from .plots import new_figure, save_png  # the project's Agg-figure and atomic-PNG helpers

    fig = new_figure(9.5, 4.2)
    ax, ax_pie = fig.subplots(1, 2, width_ratios=[1.7, 1])
    names = [display_name(c) for c in LEUKOCYTES]
    values = [d.percent[c] or 0.0 for c in LEUKOCYTES]
    rel = d.reference_ranges.get("relative", {})
    for i, c in enumerate(LEUKOCYTES):
        if c in rel:
            lo, hi = rel[c]
            ax.fill_between([i - 0.42, i + 0.42], lo, max(hi, lo + 0.4), facecolor="0.88", edgecolor="0.5",
                            hatch="//", lw=0.5, zorder=0, label="reference interval" if i == 0 else None)
    err = [[max(0.0, v - (d.ci95[c] or [v, v])[0]) for c, v in zip(LEUKOCYTES, values)],
           [max(0.0, (d.ci95[c] or [v, v])[1] - v) for c, v in zip(LEUKOCYTES, values)]]
    ax.bar(range(len(names)), values, width=0.45, color=[TYPE_COLOURS_HEX[c] for c in LEUKOCYTES],
           edgecolor="black", yerr=err, capsize=4, zorder=2, label="count (95 % CI)")
    for i, (v, up) in enumerate(zip(values, err[1])):
        ax.text(i + 0.25, v + up + 1, f"{v:.0f}%", ha="left", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("% of leukocytes")
    ax.set_ylim(0, max(100.0, max(values) + 8))
    ax.set_title(f"Differential of {d.n_cells} leukocytes")
    ax.legend(loc="upper right", fontsize=8)
    present = [(n, v, TYPE_COLOURS_HEX[c]) for c, n, v in zip(LEUKOCYTES, names, values) if v > 0]
    if present:
        ax_pie.pie([v for _, v, _ in present], labels=[n for n, _, _ in present], colors=[c for *_, c in present],
                   autopct="%1.0f%%", wedgeprops={"edgecolor": "white"}, textprops={"fontsize": 8})
    else:
        ax_pie.text(0.5, 0.5, "no leukocytes", ha="center", va="center")
        ax_pie.set_axis_off()
    ax_pie.set_title("Composition")
    return save_png(fig, path)


#: One colour per type (Okabe-Ito palette, distinguishable with colour-vision deficiency).
TYPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "neutrophil": (0, 114, 178),
    "lymphocyte": (230, 159, 0),
    "monocyte": (0, 158, 115),
    "eosinophil": (213, 94, 0),
    "basophil": (204, 121, 167),
    "ig": (86, 180, 233),
    "erythroblast": (240, 228, 66),
    "platelet": (120, 120, 120),
}
TYPE_COLOURS_HEX = {k: "#%02x%02x%02x" % v for k, v in TYPE_COLOURS.items()}
