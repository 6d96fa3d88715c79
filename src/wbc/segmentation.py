"""White-blood-cell segmentation in stained blood-smear images, without a learned model.

Every image gives a label mask of its own size: 0 = background (plasma, red cells,
platelets), 1 = WBC cytoplasm, 2 = WBC nucleus, plus an instance mask (one integer per
WBC). It works on single-cell crops (PBC 360x363, Kaggle 320x240) and on smear fields
with several WBCs (BCCD 640x480); touching cells are split.

Method (classical; see docs/decisions/0004-segmentation-method.md):

1. **Optical density.** ``OD_c = log(I0_c / I_c)`` per channel, with ``I0`` the image's
   own background brightness, so a dimmer lamp or a yellower background cancels out.
2. **Nucleus stain map** ``h = OD_red - OD_blue``. Romanowsky stains (Wright, Giemsa,
   May-Grünwald-Giemsa) colour chromatin blue-purple: it absorbs red light and lets blue
   through, whereas red cells (eosin) absorb blue and green. ``h`` is high on nuclei,
   about zero on plasma and negative on red cells, in every dataset tried.
3. **Nucleus seeds** = ``h`` above a per-image three-class Otsu threshold (Otsu 1979; Liao
   et al. 2001) with a floor; fragments (neutrophil lobes) closer than a fraction of their own
   size are grouped into one cell; groups much smaller than the largest, or smaller than a
   platelet-sized floor, are dropped.
4. **Cytoplasm** = pixels within one nucleus radius of a nucleus that are faintly blue-purple
   (``h`` above the plasma's own noise) or eosinophilic (``OD_green - OD_red`` above the red
   cells'). Touching cells are split by a marker-controlled watershed (Beucher & Meyer 1993)
   on the distance to each nucleus in units of its radius; halves of one cell are merged back;
   red cells stuck on through a narrow neck are cut off by a distance-transform watershed.
5. **Nucleus vs cytoplasm** inside each cell: green optical density above the cell's own
   Otsu threshold (chromatin absorbs green strongly and evenly).

>>> import numpy as np
>>> seg = segment_cells(np.full((64, 64, 3), 230, np.uint8))
>>> seg.n_cells, int(seg.labels.max())
(0, 0)
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.segmentation import watershed

log = logging.getLogger(__name__)


class Region(IntEnum):
    """Values of the label mask."""

    BACKGROUND = 0
    CYTOPLASM = 1
    NUCLEUS = 2


@dataclass(frozen=True)
class SegmentationConfig:
    """Tunable parameters; the defaults were chosen on BCCD and checked on PBC and Kaggle crops."""

    smooth_sigma: float = 1.0  # Gaussian sigma (px) before thresholding
    nucleus_floor: float = 0.10  # minimum OD_red - OD_blue of a nucleus pixel
    lobe_gap: float = 0.45  # group nucleus fragments closer than this x sqrt(area of the largest fragment)
    min_relative_area: float = 0.15  # drop nucleus groups smaller than this x the largest group
    min_area_fraction: float = 0.004  # drop nucleus groups smaller than this fraction of the image
    cytoplasm_reach: float = 1.0  # a cell extends at most this x the nucleus radius beyond the nucleus
    cytoplasm_sigma: float = 2.0  # extra smoothing (px) of the stain map for the granular cytoplasm
    cytoplasm_floor: float = 0.02  # minimum OD_red - OD_blue of a cytoplasm pixel
    plasma_percentile: float = 95.0  # ... and above this percentile of the plasma's own values
    granule_margin: float = 0.08  # eosinophilic granules: OD_green - OD_red above red cells' 90th percentile + this


@dataclass
class Segmentation:
    """Result of :func:`segment_cells` for one image."""

    labels: np.ndarray  # uint8 HxW, values of :class:`Region`
    instances: np.ndarray  # int32 HxW, 0 = background, k = k-th WBC (cytoplasm and nucleus)
    nucleus_threshold: float
    scores: list[float] = field(default_factory=list)  # per instance: mean stain of its nucleus

    @property
    def n_cells(self) -> int:
        return int(self.instances.max()) if self.instances.size else 0

    def cell_mask(self, k: int) -> np.ndarray:
        return self.instances == k

    def nucleus_mask(self, k: int) -> np.ndarray:
        return (self.instances == k) & (self.labels == Region.NUCLEUS)

    def bboxes(self) -> list[tuple[int, int, int, int]]:
        """``(x0, y0, x1, y1)`` per instance, ``x1``/``y1`` exclusive."""
        out = []
        for sl in ndi.find_objects(self.instances):
            if sl is None:
                continue
            out.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
        return out


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def optical_density(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel optical density relative to the image's own background, and the valid-pixel mask.

    Pure-black pixels (augmentation fill, scanner borders) are not valid.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    a = rgb.astype(np.float32)
    valid = a.max(axis=2) > 25
    if valid.sum() < 16:
        return np.zeros_like(a), valid
    valid = cv2.erode(valid.astype(np.uint8), _disk(2)).astype(bool) if not valid.all() else valid
    if valid.sum() < 16:
        valid = a.max(axis=2) > 25
    pix = a[valid][::3]  # every third pixel is plenty for the background colour
    bright = pix.sum(axis=1)
    background = np.median(pix[bright >= np.percentile(bright, 90)], axis=0)
    od = np.log((background + 1.0) / (a + 1.0))
    np.clip(od, 0.0, 3.0, out=od)
    od[~valid] = 0.0
    return od, valid


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a binary mask (flood fill from the border; faster than ndimage for big images)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sub = np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8)
    flood = sub.copy()
    ff = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, ff, (0, 0), 1)
    out = mask.copy()
    out[y0:y1, x0:x1] |= (flood == 0)[1:-1, 1:-1]
    return out


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma) if sigma > 0 else x


def _plasma_threshold(density: np.ndarray) -> float:
    """Density below which a pixel is plasma: the lower of three Otsu classes (plasma, red cells
    and cytoplasm, nuclei), so that pale red cells (PBC) do not count as plasma."""
    try:
        return float(threshold_multiotsu(density, classes=3)[0])
    except ValueError:
        return float(threshold_otsu(density)) if density.max() > density.min() else float(density.max())


def split_nucleus(cell: np.ndarray, od_green: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The nucleus inside one cell mask: green optical density above the cell's own Otsu threshold.

    Chromatin absorbs green light strongly and evenly (it looks purple), cytoplasm much less,
    so the green OD separates nucleus from cytoplasm better than the blue-purple stain map,
    which is also high on basophilic (blue) cytoplasm. ``seed`` (the darkest chromatin) is kept.
    """
    if not cell.any():
        return cell
    values = od_green[cell]
    t = threshold_otsu(values) if values.max() > values.min() else values.min()
    nuc = (od_green > t) & cell
    nuc = cv2.morphologyEx(nuc.astype(np.uint8), cv2.MORPH_OPEN, _disk(1)).astype(bool) | (seed & cell)
    frag, n = ndi.label(nuc)
    if n > 1:
        areas = np.bincount(frag.ravel())
        areas[0] = 0
        nuc = np.isin(frag, np.flatnonzero(areas >= 0.05 * areas.max()))
    return fill_holes(nuc) & cell


def stain_maps(rgb: np.ndarray, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, density, valid)``: nucleus stain ``OD_red - OD_blue``, total OD, valid pixels (smoothed)."""
    od, valid = optical_density(rgb)
    h = od[..., 0] - od[..., 2]
    dens = od.sum(axis=2)
    if sigma > 0:
        h = cv2.GaussianBlur(h, (0, 0), sigma)
        dens = cv2.GaussianBlur(dens, (0, 0), sigma)
    return h, dens, valid


def nucleus_threshold(h: np.ndarray, valid: np.ndarray, floor: float) -> float:
    """Upper three-class Otsu threshold of the stain map, never below ``floor``."""
    values = h[valid]
    if values.size < 16 or float(values.max()) <= floor:
        return max(floor, float(values.max()) + 1e-3 if values.size else floor)
    try:
        t = float(threshold_multiotsu(values, classes=3)[1])
    except ValueError:  # fewer than 3 distinct values
        t = floor
    return max(t, floor)


def _group_fragments(nucleus: np.ndarray, gap: float) -> tuple[np.ndarray, int]:
    """Label nucleus fragments, fragments closer than ``gap`` x sqrt(largest area) sharing a label."""
    frag, n = ndi.label(nucleus)
    if n <= 1:
        return frag, n
    areas = np.bincount(frag.ravel())[1:]
    radius = gap * math.sqrt(float(areas.max())) / 2
    closed = cv2.morphologyEx(nucleus.astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius)).astype(bool)
    groups, n_groups = ndi.label(closed | nucleus)
    out = np.where(nucleus, groups, 0)
    return out, n_groups


def _grow_cells(nuclei: np.ndarray, radius: np.ndarray, hc: np.ndarray, ec: np.ndarray, dens: np.ndarray,
                valid: np.ndarray, t_fg: float, cfg: SegmentationConfig) -> np.ndarray:
    """Cytoplasm around each nucleus group: faintly stained pixels within reach, split by watershed.

    Two kinds of cytoplasm: blue-lilac (``hc``, the nucleus stain map, above the plasma's
    noise) and eosinophilic granules (``ec`` = OD_green - OD_red, clearly above most red-cell pixels;
    the percentile leaves room for a large granulocyte that reaches beyond ``reach``).
    """
    any_nucleus = nuclei > 0
    dist_out, nearest = ndi.distance_transform_edt(~any_nucleus, return_indices=True)
    reach = cfg.cytoplasm_reach * radius[nuclei[nearest[0], nearest[1]]]
    # the plasma's own noise level (far from every WBC) sets the cytoplasm threshold
    plasma = (dens < t_fg) & valid & (dist_out > reach)
    noise = float(np.percentile(hc[plasma], cfg.plasma_percentile)) if plasma.sum() > 100 else 0.0
    t_cyt = max(cfg.cytoplasm_floor, noise)
    red_cells = (dens >= t_fg) & valid & (dist_out > reach)
    t_eo = (float(np.percentile(ec[red_cells], 90)) if red_cells.sum() > 100 else 0.15) + cfg.granule_margin
    cand = (((hc > t_cyt) | (ec > t_eo)) & valid & (dist_out <= reach)) | any_nucleus
    # touching cells: each cytoplasm pixel goes to the nucleus it is closest to, in units of that
    # nucleus' radius (flooding from the nuclei, so a pixel is only reached through the cytoplasm)
    relative = (dist_out / np.maximum(radius[nuclei[nearest[0], nearest[1]]], 1.0)).astype(np.float32)
    return watershed(relative, nuclei, mask=cand).astype(np.int32)


def _cut_necks(cell: np.ndarray, nucleus: np.ndarray, radius: float) -> np.ndarray:
    """Cut off blobs (touching red cells) joined to the cell through a narrow neck.

    Watershed on the distance transform (the classic split of touching discs), with the
    nucleus as one marker and every other distance maximum outside it as a rival; a rival
    basin is removed when the boundary it shares with the cell is shorter than its own width.
    """
    if not cell.any():
        return cell
    ys, xs = np.nonzero(cell)
    y0, y1, x0, x1 = max(ys.min() - 1, 0), ys.max() + 2, max(xs.min() - 1, 0), xs.max() + 2
    c, nuc = cell[y0:y1, x0:x1], nucleus[y0:y1, x0:x1]
    dt = cv2.distanceTransform(c.astype(np.uint8), cv2.DIST_L2, 5)
    from skimage.feature import peak_local_max

    min_dist = max(3, int(0.3 * radius))
    peaks = peak_local_max(dt, min_distance=min_dist, threshold_abs=max(2.0, 0.25 * radius), labels=c.astype(np.int32),
                           exclude_border=False)
    near_nucleus = cv2.dilate(nuc.astype(np.uint8), _disk(min_dist)).astype(bool)
    rivals = [p for p in peaks if not near_nucleus[p[0], p[1]]]
    if not rivals:
        return cell
    markers = np.zeros(c.shape, np.int32)
    markers[nuc] = 1
    for i, (py, px) in enumerate(rivals, start=2):
        markers[py, px] = i
    basins = watershed(-dt, markers, mask=c)
    keep = basins == 1
    inner = cv2.dilate(keep.astype(np.uint8), _disk(1)).astype(bool)
    for i, (py, px) in enumerate(rivals, start=2):
        rival = basins == i
        neck = np.count_nonzero(inner & rival)
        if neck >= 2.0 * float(dt[py, px]):  # a wide contact: part of the cell, not a neighbour
            keep |= rival
    out = np.zeros_like(cell)
    out[y0:y1, x0:x1] = fill_holes(keep)
    return out


def _merge_split_cells(cells: np.ndarray, nuclei: np.ndarray, radius: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge basins that are two halves of one cell (widely separated lobes, e.g. eosinophils).

    Two basins are one cell when their shared border is long (at least the smaller one's
    equivalent diameter: a cut across a whole cell) and their union is convex (solidity >= 0.9);
    two touching cells meet along a short border and leave notches, so they stay apart.
    """
    n = len(radius) - 1
    if n < 2:
        return cells, nuclei, radius
    parent = list(range(n + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    areas = np.bincount(cells.ravel(), minlength=n + 1)
    for i in range(1, n + 1):
        cell_i = cells == i
        if not cell_i.any():
            continue
        ring = cv2.dilate(cell_i.astype(np.uint8), _disk(1)).astype(bool) & ~cell_i
        for j in np.unique(cells[ring]):
            if j <= i:
                continue
            border = np.count_nonzero(cv2.dilate((cells == j).astype(np.uint8), _disk(1)).astype(bool) & cell_i)
            diam = 2 * math.sqrt(min(areas[i], areas[j]) / math.pi)
            if border >= diam and _solidity(cell_i | (cells == j)) >= 0.9:
                parent[find(j)] = find(i)
    roots = sorted({find(i) for i in range(1, n + 1)})
    if len(roots) == n:
        return cells, nuclei, radius
    lut = np.zeros(n + 1, np.int32)
    for new, r in enumerate(roots, start=1):
        for i in range(1, n + 1):
            if find(i) == r:
                lut[i] = new
    nuclei = lut[nuclei]
    n_areas = np.bincount(nuclei.ravel(), minlength=len(roots) + 1).astype(float)
    new_radius = np.array([0.0] + [math.sqrt(n_areas[k] / math.pi) for k in range(1, len(roots) + 1)])
    return lut[cells], nuclei, new_radius


def _split_cells(cells: np.ndarray, nuclei: np.ndarray, radius: np.ndarray,
                 od_green: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tidy each cell (drop thin leaks, fill holes) and split it into nucleus and cytoplasm."""
    labels = np.zeros(cells.shape, np.uint8)
    instances = np.zeros(cells.shape, np.int32)
    for k in range(1, len(radius)):
        cell = cells == k
        r_open = max(1.0, 0.12 * radius[k])
        cell = cv2.morphologyEx(cell.astype(np.uint8), cv2.MORPH_OPEN, _disk(r_open)).astype(bool)
        cell = fill_holes(cell | (nuclei == k))
        cell = _cut_necks(cell, nuclei == k, radius[k])
        cell &= instances == 0
        nuc = split_nucleus(cell, od_green, nuclei == k)
        instances[cell] = k
        labels[cell] = Region.CYTOPLASM
        labels[nuc] = Region.NUCLEUS
    return labels, instances


def segment_cells(rgb: np.ndarray, config: SegmentationConfig | None = None) -> Segmentation:
    """Segment every WBC of an RGB uint8 image into nucleus and cytoplasm.

    Args:
        rgb: ``HxWx3`` uint8 image (a single-cell crop or a smear field).
        config: parameters; defaults suit 100x oil-immersion smears at any common resolution.

    Returns:
        :class:`Segmentation` with the 0/1/2 label mask and one instance id per WBC.

    Raises:
        ValueError: if ``rgb`` is not ``HxWx3``.
    """
    cfg = config or SegmentationConfig()
    od, valid = optical_density(rgb)
    h, dens = _smooth(od[..., 0] - od[..., 2], cfg.smooth_sigma), _smooth(od.sum(axis=2), cfg.smooth_sigma)
    od_green = od[..., 1]
    ec = _smooth(od[..., 1] - od[..., 0], cfg.cytoplasm_sigma)
    height, width = h.shape
    empty = Segmentation(np.zeros((height, width), np.uint8), np.zeros((height, width), np.int32), float("nan"))
    if valid.sum() < 64:
        return empty
    t_nuc = nucleus_threshold(h, valid, cfg.nucleus_floor)
    empty.nucleus_threshold = t_nuc
    nucleus = (h > t_nuc) & valid
    nucleus = cv2.morphologyEx(nucleus.astype(np.uint8), cv2.MORPH_OPEN, _disk(1)).astype(bool)
    frag, _ = ndi.label(nucleus)
    if frag.max() == 0:
        return empty
    # drop specks (noise, debris) before grouping
    areas = np.bincount(frag.ravel())
    areas[0] = 0
    min_frag = max(8.0, 0.02 * float(areas.max()))
    nucleus = np.isin(frag, np.flatnonzero(areas >= min_frag))
    groups, n_groups = _group_fragments(nucleus, cfg.lobe_gap)
    g_areas = np.bincount(groups.ravel(), minlength=n_groups + 1).astype(float)
    g_areas[0] = 0
    keep_min = max(cfg.min_relative_area * g_areas.max(), cfg.min_area_fraction * height * width)
    kept = [g for g in range(1, n_groups + 1) if g_areas[g] >= keep_min]
    if not kept:
        return empty
    nuclei = np.zeros((height, width), np.int32)
    for k, g in enumerate(kept, start=1):
        nuclei[groups == g] = k
    n = len(kept)

    radius = np.array([0.0] + [math.sqrt(g_areas[g] / math.pi) for g in kept])
    hc = _smooth(h, cfg.cytoplasm_sigma)
    green = _smooth(od_green, cfg.smooth_sigma)
    t_fg = _plasma_threshold(dens[valid])
    # two passes: the chromatin seeds underestimate a pale nucleus, and so the cell's reach
    for _ in range(2):
        cells = _grow_cells(nuclei, radius, hc, ec, dens, valid, t_fg, cfg)
        cells, nuclei, radius = _merge_split_cells(cells, nuclei, radius)
        n = len(radius) - 1
        labels, out_inst = _split_cells(cells, nuclei, radius, green)
        grown = np.array([0.0] + [math.sqrt(max(np.count_nonzero((out_inst == k) & (labels == Region.NUCLEUS)),
                                                1) / math.pi) for k in range(1, n + 1)])
        if np.all(grown <= 1.15 * radius):
            break
        radius = np.maximum(radius, grown)
        nuclei = np.where((labels == Region.NUCLEUS) & (nuclei == 0), out_inst, nuclei)
    scores = [float(h[(out_inst == k) & (labels == Region.NUCLEUS)].mean())
              if np.any((out_inst == k) & (labels == Region.NUCLEUS)) else 0.0 for k in range(1, n + 1)]
    return Segmentation(labels, out_inst, t_nuc, scores)


def wbc_instances(rgb: np.ndarray, config: SegmentationConfig | None = None
                  ) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Every WBC of an image as ``((x0, y0, x1, y1), mask)``; ``mask`` is the full-size boolean cell mask.

    Boxes are pixel-exclusive on the right/bottom, like Python slices. Reused by smear counting.
    """
    seg = segment_cells(rgb, config)
    return [(box, seg.instances == k) for k, box in enumerate(seg.bboxes(), start=1)]


#: Parameters for single-cell crops: smaller objects are kept (a platelet crop's platelet), and
#: the cell nearest the centre is taken.
CROP_CONFIG = SegmentationConfig(min_area_fraction=0.0008)


def central_cell(seg: Segmentation) -> int:
    """Instance id of the cell a single-cell crop is about (0 when there is none).

    Score = cell area / (1 + (d / (min(H, W) / 4))^2), with ``d`` the distance from the image
    centre to the cell's nearest pixel: PBC crops hold their cell in the centre, Kaggle crops
    hold it anywhere, and a neighbour cut by the border is smaller and further away.
    """
    if seg.n_cells == 0:
        return 0
    h, w = seg.instances.shape
    scale = min(h, w) / 4
    best, best_score = 0, -1.0
    for k in range(1, seg.n_cells + 1):
        yy, xx = np.nonzero(seg.instances == k)
        if yy.size == 0:
            continue
        d = float(np.sqrt(((yy - h / 2) ** 2 + (xx - w / 2) ** 2).min()))
        score = yy.size / (1 + (d / scale) ** 2)
        if score > best_score:
            best, best_score = k, score
    return best


def _solidity(mask: np.ndarray) -> float:
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None or len(pts) < 3:
        return 1.0
    hull = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
    return float(np.count_nonzero(mask)) / max(float(np.count_nonzero(hull | mask.astype(np.uint8))), 1.0)


def merge_lobes(seg: Segmentation, k: int, min_solidity: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus masks of instance ``k`` joined with touching instances that complete it.

    Widely separated lobes (eosinophils) can form separate nucleus groups, so one cell comes
    out as two halves split through its cytoplasm. In a single-cell crop a neighbour is merged
    when the two share a long border (>= half the smaller one's diameter) and their union is
    roughly convex (solidity >= ``min_solidity``); a second cell merely touching stays apart.
    """
    cell = seg.instances == k
    merged = {k}
    changed = True
    while changed:
        changed = False
        ring = cv2.dilate(cell.astype(np.uint8), _disk(1)).astype(bool) & ~cell
        for j in np.unique(seg.instances[ring]):
            if j == 0 or j in merged:
                continue
            other = seg.instances == j
            border = np.count_nonzero(ring & other)
            diam = 2 * math.sqrt(min(np.count_nonzero(cell), np.count_nonzero(other)) / math.pi)
            if border >= 0.5 * diam and _solidity(cell | other) >= min_solidity:
                cell |= other
                merged.add(int(j))
                changed = True
    return cell, cell & (seg.labels == Region.NUCLEUS)


def segment_single_cell(rgb: np.ndarray, config: SegmentationConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(cell_mask, nucleus_mask)`` of the one cell a single-cell crop is about (see :func:`central_cell`).

    Parts of that cell that came out as separate instances are merged back (:func:`merge_lobes`).
    Both masks are empty when no stained cell is found.
    """
    seg = segment_cells(rgb, config or CROP_CONFIG)
    k = central_cell(seg)
    if k == 0:
        empty = np.zeros(seg.labels.shape, bool)
        return empty, empty.copy()
    return merge_lobes(seg, k)


def draw_overlay(rgb: np.ndarray, seg: Segmentation, thickness: int = 2) -> np.ndarray:
    """The image with cell contours (green), nucleus contours (magenta) and instance numbers drawn on it."""
    out = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).copy())
    for k in range(1, seg.n_cells + 1):
        for mask, colour in ((seg.cell_mask(k), (0, 200, 0)), (seg.nucleus_mask(k), (255, 0, 255))):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, thickness)
    for k, (x0, y0, _, _) in enumerate(seg.bboxes(), start=1):
        cv2.putText(out, str(k), (x0 + 2, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(out, str(k), (x0 + 2, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    from .io import write_bytes

    img = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover
        raise OSError(f"{path}: could not encode PNG")
    write_bytes(path, buf.tobytes())


def segment_files(inputs: Iterable[str | Path], out_dir: str | Path, config: SegmentationConfig | None = None, *,
                  progress: bool = False) -> dict:
    """Segment every image; write ``<stem>.png`` (0/1/2 label mask), ``<stem>_overlay.png`` and ``segmentation.csv``.

    Args:
        inputs: image files and/or folders (searched recursively).
        out_dir: output folder (created).
        config: segmentation parameters (default :class:`SegmentationConfig`).
        progress: show a progress bar.

    Returns:
        Summary dict: ``images``, ``segmented`` (images with >= 1 WBC), ``no_wbc`` (list of
        images where none was found), ``cells``, ``unreadable`` (list of ``"path: reason"``),
        ``seconds``, ``ms_per_image`` and ``csv``.
    """
    import time

    from .progress import progress as _bar

    from .data import image_files, load_image
    from .enhancement import _unique_names
    from .errors import BadImageError, WbcError
    from .io import write_csv

    paths = image_files(list(inputs))
    if not paths:
        raise WbcError("no images found in the given inputs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, unreadable, no_wbc = [], [], []
    t0 = time.perf_counter()
    for path, name in _bar(list(zip(paths, _unique_names(paths))), enabled=progress, desc="segmenting",
                           unit="img"):
        try:
            rgb = np.asarray(load_image(path), dtype=np.uint8)
        except BadImageError as exc:
            unreadable.append(str(exc))
            log.warning("skipped %s", exc)
            continue
        seg = segment_cells(rgb, config)
        _write_png(out_dir / f"{name}.png", seg.labels)
        _write_png(out_dir / f"{name}_overlay.png", draw_overlay(rgb, seg))
        if seg.n_cells == 0:
            no_wbc.append(str(path))
            log.warning("%s: no white blood cell found", path)
        for k, (x0, y0, x1, y1) in enumerate(seg.bboxes(), start=1):
            rows.append({"image": str(path), "mask": f"{name}.png", "cell": k, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                         "cell_area": int(np.count_nonzero(seg.instances == k)),
                         "nucleus_area": int(np.count_nonzero(seg.nucleus_mask(k)))})
    seconds = time.perf_counter() - t0
    fields = ["image", "mask", "cell", "x0", "y0", "x1", "y1", "cell_area", "nucleus_area"]
    write_csv(out_dir / "segmentation.csv", rows, fields)
    n_ok = len(paths) - len(unreadable)
    return {"images": len(paths), "segmented": n_ok - len(no_wbc), "no_wbc": no_wbc, "cells": len(rows),
            "unreadable": unreadable, "seconds": round(seconds, 2),
            "ms_per_image": round(1000 * seconds / max(n_ok, 1), 1), "csv": str(out_dir / "segmentation.csv")}


# --------------------------------------------------------------------------------------
# evaluation against Pascal VOC boxes (BCCD)


def _read_voc_boxes(xml_path: Path, name: str = "WBC") -> list[tuple[int, int, int, int]]:
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() != name.upper():
            continue
        bb = obj.find("bndbox")
        boxes.append(tuple(int(round(float(bb.findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes.

    >>> box_iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    """
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def resolve_link(path: Path) -> Path:
    """A folder, or a small text file holding a relative path to one (a symlink stored as text)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size < 4096:
        target = (path.parent / path.read_text(encoding="utf-8").strip()).resolve()
        if target.is_dir():
            return target
    return path


def match_boxes(pred: list, truth: list, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (highest first); returns ``(pred_i, truth_j, iou)`` pairs."""
    pairs = sorted(((box_iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t, out = set(), set(), []
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        out.append((i, j, iou))
    return out


def evaluate_on_voc(annotations_dir: str | Path, images_dir: str | Path, *, iou_threshold: float = 0.5,
                    config: SegmentationConfig | None = None, limit: int | None = None,
                    progress: bool = False) -> dict:
    """Compare segmented WBCs with the WBC boxes of a Pascal VOC dataset (e.g. BCCD).

    Three figures, so that extra (false) cells cannot hide:

    * ``single_wbc_hit_rate``: on fields with exactly one WBC box, the fraction whose
      *primary* segmented WBC (the one with the largest area) has box IoU >= threshold;
    * ``single_wbc_exact_rate``: the same, but the field must also have no other segmented WBC;
    * ``precision`` / ``recall`` / ``f1`` of all segmented WBCs against all WBC boxes on all
      fields (one-to-one matching at the IoU threshold).
    """
    from .progress import progress as _bar

    from .data import load_image

    annotations_dir, images_dir = Path(annotations_dir), resolve_link(Path(images_dir))
    xmls = sorted(annotations_dir.glob("*.xml"))[:limit]
    if not xmls:
        raise ValueError(f"no *.xml annotations in {annotations_dir}")
    single = hits = exact = tp = n_pred = n_true = 0
    ious: list[float] = []
    failures: list[dict] = []
    for xml in _bar(xmls, enabled=progress, desc="segmenting", unit="field"):
        truth = _read_voc_boxes(xml)
        img_path = images_dir / (xml.stem + ".jpg")
        if not img_path.is_file():
            log.warning("%s: no image for %s", img_path, xml.name)
            continue
        seg = segment_cells(np.asarray(load_image(img_path)), config)
        pred = seg.bboxes()
        n_true += len(truth)
        n_pred += len(pred)
        tp += len(match_boxes(pred, truth, iou_threshold))
        if len(truth) == 1:
            single += 1
            areas = np.bincount(seg.instances.ravel())[1:] if pred else np.zeros(0)
            best = box_iou(pred[int(np.argmax(areas))], truth[0]) if pred else 0.0
            ious.append(best)
            hits += best >= iou_threshold
            exact += best >= iou_threshold and len(pred) == 1
            if best < iou_threshold or len(pred) != 1:
                failures.append({"image": xml.stem, "iou": round(best, 3), "n_segmented": len(pred)})
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    return {
        "fields": len(xmls), "single_wbc_fields": single,
        "single_wbc_hit_rate": hits / single if single else float("nan"),
        "single_wbc_exact_rate": exact / single if single else float("nan"),
        "median_iou": float(np.median(ious)) if ious else float("nan"),
        "wbc_boxes": n_true, "segmented_wbcs": n_pred, "matched": tp,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "iou_threshold": iou_threshold, "config": asdict(config or SegmentationConfig()),
        "failures": failures,
    }
