"""Finding every white blood cell in a smear field: a box and a mask per cell, at any size and magnification.

Method (classical, see docs/decisions/0006-wbc-detection.md):

1. **Magnification.** The red cells are the ruler (about 7.5 µm everywhere): their diameter in
   pixels is estimated from the distance transform of the stained foreground
   (:func:`estimate_rbc_diameter`), pooled over a sample's fields, and the field is resized so that a
   red cell is ``analysis_rbc_px`` wide (a BCCD 640x480 field at half size).
2. **Nuclei.** Optical density relative to the field's own background; the nucleus stain map
   ``OD_red - OD_blue`` (Romanowsky chromatin absorbs red light, red cells absorb blue and green)
   above the upper of three Otsu classes (Liao et al. 2001), never below a floor.
3. **One group per cell.** Lobes closer than a fraction of a red cell are joined (morphological
   closing); groups smaller than ``min_nucleus_area`` red-cell areas (platelets, debris) are dropped;
   cells whose boxes overlap by more than ``merge_overlap`` of the smaller box are one cell (the two
   lobes of an eosinophil with granules between them).
4. **Cell box and mask.** The nucleus group grown by a margin proportional to its size (the cytoplasm
   rim); measured against the BCCD VOC boxes.
5. **Tiles.** Images larger than ``tile`` analysis pixels are processed in tiles overlapping by
   ``overlap`` red-cell diameters (more than the largest cell); a cell belongs to the one tile whose
   core (the tile minus half the overlap) holds its centre, so a cell cut by a tile border is
   counted once, from the tile that sees it whole.

>>> res = detect_wbcs(np.full((480, 640, 3), 215, np.uint8))
>>> len(res.cells), res.quality
(0, ['blank'])
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

log = logging.getLogger(__name__)

#: The classifier's reference geometry: a BCCD field is 640x480 with red cells ~103 px wide
#: (median of the 4,155 VOC RBC boxes); the Kaggle crops the bundled model trained on are these
#: fields at half size.
REFERENCE_FIELD = (640, 480)
REFERENCE_RBC_PX = 103.0


class Quality(StrEnum):
    """Why a field's count may be unreliable; ``SKIP`` flags mean no cell is looked for."""

    BLANK = "blank"
    NOT_A_SMEAR = "not_a_smear"
    OVER_EXPOSED = "over_exposed"
    UNDER_EXPOSED = "under_exposed"
    OUT_OF_FOCUS = "out_of_focus"
    SCALE_UNKNOWN = "scale_unknown"


#: Fields with these flags are not searched: any "cell" found there would be an artefact.
SKIP = frozenset({Quality.BLANK, Quality.NOT_A_SMEAR})


@dataclass(frozen=True)
class DetectionConfig:
    """Detector parameters; the defaults were measured on the 364 BCCD fields (VOC boxes)."""

    analysis_rbc_px: float = 51.5  # red-cell diameter at which the detector works (BCCD at half size)
    rbc_px: float | None = None  # red-cell diameter of the input in pixels (None: estimate it)
    snap: float = 0.3  # an estimate within this relative distance of the reference is taken as the reference
    nucleus_floor: float = 0.10  # minimum OD_red - OD_blue of a nucleus pixel
    lobe_gap: float = 0.12  # join nucleus fragments closer than ~2x this x RBC diameter
    min_nucleus_area: float = 0.4  # drop nucleus groups smaller than this x a red cell's area
    margin_rbc: float = 0.05  # cytoplasm margin around the nucleus: this x RBC diameter ...
    margin_nucleus: float = 0.15  # ... plus this x the nucleus group's equivalent diameter
    merge_overlap: float = 0.3  # one cell when boxes overlap by more than this fraction of the smaller box
    tile: int = 1024  # tile side in analysis pixels (a BCCD field is 320x240 there)
    overlap: float = 4.0  # tile overlap in red-cell diameters (the largest WBCs are ~3.3)
    focus_min: float = 0.03  # sharpness below this: out of focus (BCCD fields: 0.033-0.13; blur sigma 6 px: <= 0.027)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Cell:
    """One detected WBC. Coordinates are image pixels; ``x1``/``y1`` are exclusive (slice-like)."""

    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool, shape (y1 - y0, x1 - x0): the cell inside its box
    nucleus_area: float  # in red-cell areas (a lymphocyte's is ~0.7, a neutrophil's ~1.3)
    at_edge: bool = False  # cut by the image border

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape[:2], bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out


@dataclass
class FieldResult:
    """The cells of one image, the scale used and the quality flags raised."""

    cells: list[Cell]
    rbc_px: float | None  # red-cell diameter used (image pixels)
    quality: list[str] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [c.box for c in self.cells]


# ----------------------------------------------------------------------------------------------
# stain maps


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-6:
        return np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _valid(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are part of the picture: not the black surround of a phone photo or an augmentation fill."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > 25  # faster than max(axis=2)


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """The plasma's colour: median of the brightest decile of valid pixels (``[255, 255, 255]`` if none)."""
    step = max(1, rgb.shape[0] * rgb.shape[1] // 40_000)  # ~40k pixels are plenty for a colour
    pix = rgb.reshape(-1, 3)[::step]
    pix = pix[_valid(pix[None])[0]].astype(np.float32)
    if len(pix) < 16:
        return np.full(3, 255.0, np.float32)
    bright = pix.sum(axis=1)
    return np.median(pix[bright >= np.percentile(bright, 90)], axis=0)


def optical_density(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``log(I0 / I)`` per channel against a given background colour, clipped to ``[0, 3]``; invalid pixels 0."""
    od = np.log((background.astype(np.float32) + 1.0) / (rgb.astype(np.float32) + 1.0))
    np.clip(od, 0.0, 3.0, out=od)
    od[~_valid(rgb)] = 0.0
    return od


def _stain(rgb: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, density, valid)``: nucleus stain ``OD_red - OD_blue`` and total density, smoothed (sigma 1 px)."""
    od = optical_density(rgb, background)
    h = cv2.GaussianBlur(od[..., 0] - od[..., 2], (0, 0), 1.0)
    dens = cv2.GaussianBlur(od.sum(axis=2), (0, 0), 1.0)
    return h, dens, _valid(rgb)


def _thumbnail(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    f = min(1.0, side / max(h, w))
    return _resize(rgb, f), f


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    ff = np.pad(mask.astype(np.uint8), 1)
    cv2.floodFill(ff, None, (0, 0), 1)
    return mask.astype(bool) | (ff[1:-1, 1:-1] == 0)


# ----------------------------------------------------------------------------------------------
# magnification


def _rbc_diameter_at(rgb: np.ndarray) -> float | None:
    """Red-cell diameter (px of ``rgb``) from the distance transform of the filled foreground, or ``None``."""
    bg = background_colour(rgb)
    od = optical_density(rgb, bg)
    valid = _valid(rgb)
    dens = cv2.GaussianBlur(od.sum(axis=2), (0, 0), 1.0)
    values = dens[valid]
    if values.size < 256 or float(values.max() - values.min()) < 0.1:
        return None
    fg = (dens > threshold_otsu(values)) & valid
    fg = cv2.morphologyEx(_fill_holes(fg).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if not 0.02 < fg.mean() < 0.95:
        return None
    dt = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    peaks = dt[(dt == cv2.dilate(dt, _disk(5))) & (dt >= 2)]
    if peaks.size < 5:
        return None
    return 2.0 * float(np.percentile(peaks, 90))


#: The estimator reads BCCD red cells as 0.87 x their VOC box size (median over the fields);
#: dividing by it makes its output comparable to :data:`REFERENCE_RBC_PX`.
_ESTIMATOR_BIAS = 0.87


def estimate_rbc_diameter(rgb: np.ndarray, work: int = 256) -> float | None:
    """Typical red-cell diameter in pixels of ``rgb``, or ``None`` when there are no red cells to measure.

    Works on a ``work``-pixel thumbnail; when red cells are tiny there (a large low-magnification
    scan), it measures up to five ``12 x diameter`` patches at full resolution instead. Spread on
    BCCD (122 fields): 5-95 % of single-field estimates within 0.85-1.23 x the VOC median, 2-98 %
    within 0.79-1.37 x, a few clumped fields beyond; hence pooling per sample
    (:func:`pooled_rbc_diameter`).
    """
    small, f = _thumbnail(np.asarray(rgb), work)
    d = _rbc_diameter_at(small)
    if d is None:
        return None
    if d < 12 and f < 1:
        full_d = d / f
        side = int(min(min(rgb.shape[:2]), 12 * full_d))
        h, w = rgb.shape[:2]
        estimates = []
        for cy, cx in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
            y0 = int(min(max(0, cy * h - side / 2), h - side))
            x0 = int(min(max(0, cx * w - side / 2), w - side))
            patch, pf = _thumbnail(rgb[y0:y0 + side, x0:x0 + side], work)
            e = _rbc_diameter_at(patch)
            if e is not None:
                estimates.append(e / pf)
        if estimates:
            return float(np.median(estimates)) / _ESTIMATOR_BIAS
    return d / f / _ESTIMATOR_BIAS


def pooled_rbc_diameter(estimates: list[float | None], snap: float = 0.3,
                        reference: float = REFERENCE_RBC_PX) -> float | None:
    """Median of a sample's per-field estimates, snapped to ``reference`` when within ``snap`` of it.

    Fields of one sample share their magnification; the median of many fields is far more
    precise than one. Snapping keeps BCCD-like fields at exactly the classifier's training scale.

    Detection is insensitive to a scale error within +-20 % (measured on BCCD: recall 0.992 and
    precision >= 0.968 from 0.8x to 1.2x), and single-field estimates spread 0.85-1.23x (5-95 %).

    >>> pooled_rbc_diameter([95.0, 110.0, None, 101.0]), pooled_rbc_diameter([50.0, 52.0])
    (103.0, 51.0)
    """
    values = [e for e in estimates if e is not None and math.isfinite(e) and e > 0]
    if not values:
        return None
    d = float(np.median(values))
    return reference if abs(d / reference - 1.0) <= snap else d


# ----------------------------------------------------------------------------------------------
# quality


def field_quality(rgb: np.ndarray, config: DetectionConfig | None = None) -> tuple[list[str], dict[str, float]]:
    """Quality flags (:class:`Quality` values) and the measures behind them for one field.

    Measured on BCCD (every field passes) and on non-smear photographs (scikit-image samples):
    a smear has a bright, nearly grey background, stained foreground on 5-90 % of it, and red
    cells (pink: green absorbed most) making up most of the foreground.
    """
    cfg = config or DetectionConfig()
    small, _ = _thumbnail(np.asarray(rgb), 320)
    valid = _valid(small)
    lum = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    m: dict[str, float] = {"valid_fraction": float(valid.mean())}
    if valid.sum() < 64:
        return [Quality.BLANK.value], m
    lv = lum[valid]
    lo, hi = np.percentile(lv, [2, 98])
    m["contrast"] = float(hi - lo)
    m["brightness"] = float(np.percentile(lv, 95))
    m["saturated"] = float((np.minimum(np.minimum(small[..., 0], small[..., 1]), small[..., 2])[valid] >= 250).mean())
    bg = background_colour(small)
    m["background_tint"] = float(bg.max() - bg.min())
    od = optical_density(small, bg)
    fg = (od.sum(axis=2) > 0.25) & valid
    m["foreground"] = float(fg.sum() / valid.sum())
    odf = od[fg]
    m["pink"] = float(((odf[:, 1] > odf[:, 0]) & (odf[:, 1] > 0.7 * odf[:, 2])).mean()) if len(odf) > 50 else 0.0
    sharp = np.abs(cv2.Laplacian(cv2.GaussianBlur(lum, (0, 0), 1.0), cv2.CV_32F))[valid]
    m["focus"] = float(np.percentile(sharp, 99) / max(hi - lo, 1.0))
    flags: list[str] = []
    if m["saturated"] > 0.5:
        flags.append(Quality.OVER_EXPOSED.value)
    elif m["contrast"] < 10 or m["foreground"] < 0.002:
        flags.append(Quality.BLANK.value)
    elif m["brightness"] < 80:
        flags.append(Quality.UNDER_EXPOSED.value)
    if not flags and (m["pink"] < 0.5 or m["foreground"] > 0.9 or m["background_tint"] > 60):
        flags.append(Quality.NOT_A_SMEAR.value)
    if not flags and m["focus"] < cfg.focus_min:
        flags.append(Quality.OUT_OF_FOCUS.value)
    return flags, {k: round(v, 4) for k, v in m.items()}


# ----------------------------------------------------------------------------------------------
# detection


@dataclass
class _Blob:
    """A candidate cell in analysis pixels: its box and mask, and its nucleus area (analysis px)."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    nucleus: float
    centre: tuple[float, float]


def _nucleus_threshold(h: np.ndarray, valid: np.ndarray, floor: float) -> float:
    values = h[valid][::3]
    if values.size < 64 or float(values.max()) <= floor:
        return floor
    try:
        return max(float(threshold_multiotsu(values, classes=3)[1]), floor)
    except ValueError:  # fewer than 3 distinct values
        return floor


def _blobs(h: np.ndarray, valid: np.ndarray, threshold: float, rbc: float, cfg: DetectionConfig) -> list[_Blob]:
    """Candidate cells of one analysis-scale image (or tile) from its stain map."""
    nucleus = ((h > threshold) & valid).astype(np.uint8)
    nucleus = cv2.morphologyEx(nucleus, cv2.MORPH_OPEN, _disk(1))
    groups = cv2.morphologyEx(nucleus, cv2.MORPH_CLOSE, _disk(cfg.lobe_gap * rbc))
    labels, n = ndi.label(groups)
    if n == 0:
        return []
    areas = np.bincount(labels[nucleus > 0], minlength=n + 1)
    min_area = cfg.min_nucleus_area * math.pi * (rbc / 2) ** 2
    H, W = h.shape
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or areas[k] < min_area:
            continue
        margin = cfg.margin_rbc * rbc + cfg.margin_nucleus * 2 * math.sqrt(areas[k] / math.pi)
        m = int(math.ceil(margin))
        y0, y1 = max(0, sl[0].start - m), min(H, sl[0].stop + m)
        x0, x1 = max(0, sl[1].start - m), min(W, sl[1].stop + m)
        core = (labels[y0:y1, x0:x1] == k).astype(np.uint8)
        mask = _fill_holes(cv2.dilate(core, _disk(margin)) > 0)
        cy, cx = (sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2
        out.append(_Blob((x0, y0, x1, y1), mask, float(areas[k]), (cx, cy)))
    return out


def _union(a: _Blob, b: _Blob) -> _Blob:
    x0, y0 = min(a.box[0], b.box[0]), min(a.box[1], b.box[1])
    x1, y1 = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for blob in (a, b):
        bx0, by0, bx1, by1 = blob.box
        mask[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] |= blob.mask
    return _Blob((x0, y0, x1, y1), mask, a.nucleus + b.nucleus, ((x0 + x1) / 2, (y0 + y1) / 2))


def overlap_fraction(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection of two ``(x0, y0, x1, y1)`` boxes over the area of the smaller one.

    >>> overlap_fraction((0, 0, 10, 10), (5, 0, 25, 10))
    0.5
    """
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def merge_overlapping(blobs: list, threshold: float) -> list:
    """Merge blobs whose boxes overlap by more than ``threshold`` of the smaller box, until none do."""
    blobs = list(blobs)
    merged = True
    while merged:
        merged = False
        for i in range(len(blobs)):
            for j in range(i + 1, len(blobs)):
                if overlap_fraction(blobs[i].box, blobs[j].box) > threshold:
                    blobs[i] = _union(blobs[i], blobs[j])
                    del blobs[j]
                    merged = True
                    break
            if merged:
                break
    return blobs


def tile_grid(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as ``(start, stop, core_start, core_stop)``; cores partition ``[0, length)``.

    >>> tile_grid(100, 100, 20)
    [(0, 100, 0, 100)]
    >>> tile_grid(250, 100, 20)
    [(0, 100, 0, 87), (75, 175, 87, 162), (150, 250, 162, 250)]
    """
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [(0, length, 0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    out = []
    for i, s in enumerate(starts):
        core0 = 0 if i == 0 else (s + starts[i - 1] + tile) // 2
        core1 = length if i == n - 1 else (starts[i + 1] + s + tile) // 2
        out.append((s, s + tile, core0, core1))
    return out


def _detect_analysis(rgb: np.ndarray, cfg: DetectionConfig) -> list[_Blob]:
    """All cells of an analysis-scale image, tile by tile; each cell from the tile whose core holds it."""
    H, W = rgb.shape[:2]
    single = max(H, W) <= cfg.tile
    thumb, _ = _thumbnail(rgb, cfg.tile)
    background = background_colour(thumb)
    h, _, valid = _stain(thumb, background)
    threshold = _nucleus_threshold(h, valid, cfg.nucleus_floor)  # one threshold for all tiles
    rbc = cfg.analysis_rbc_px
    overlap = int(math.ceil(cfg.overlap * rbc))
    blobs: list[_Blob] = []
    for ty0, ty1, cy0, cy1 in tile_grid(H, cfg.tile, overlap):
        for tx0, tx1, cx0, cx1 in tile_grid(W, cfg.tile, overlap):
            if not single:
                h, _, valid = _stain(rgb[ty0:ty1, tx0:tx1], background)
            found = merge_overlapping(_blobs(h, valid, threshold, rbc, cfg), cfg.merge_overlap)
            for b in found:
                cx, cy = b.centre[0] + tx0, b.centre[1] + ty0
                if cx0 <= cx < cx1 and cy0 <= cy < cy1:
                    x0, y0, x1, y1 = b.box
                    blobs.append(_Blob((x0 + tx0, y0 + ty0, x1 + tx0, y1 + ty0), b.mask, b.nucleus, (cx, cy)))
    return merge_overlapping(blobs, cfg.merge_overlap)


def detect_wbcs(rgb: np.ndarray, config: DetectionConfig | None = None, *, rbc_px: float | None = None,
                check_quality: bool = True) -> FieldResult:
    """Every WBC of a smear field, with the scale used and quality flags.

    Args:
        rgb: ``HxWx3`` uint8 image of any size.
        config: detector parameters (default :class:`DetectionConfig`).
        rbc_px: red-cell diameter in pixels (default: ``config.rbc_px``, else estimated from this field
            and snapped to the BCCD reference when within ``config.snap``).
        check_quality: look for blank, non-smear, badly exposed and blurred fields first; blank and
            non-smear fields return no cells.

    Returns:
        :class:`FieldResult`; boxes are in ``rgb`` pixels.

    Raises:
        ValueError: if ``rgb`` is not ``HxWx3``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    cfg = config or DetectionConfig()
    flags, measures = field_quality(rgb, cfg) if check_quality else ([], {})
    if set(flags) & SKIP:
        return FieldResult([], None, flags, measures)
    rbc = rbc_px or cfg.rbc_px
    if rbc is None:
        rbc = pooled_rbc_diameter([estimate_rbc_diameter(rgb)], cfg.snap)
    if rbc is None:
        rbc = REFERENCE_RBC_PX
        flags.append(Quality.SCALE_UNKNOWN.value)
    scale = cfg.analysis_rbc_px / rbc
    blobs = _detect_analysis(_resize(rgb, scale), cfg)
    H, W = rgb.shape[:2]
    rbc_area = math.pi * (cfg.analysis_rbc_px / 2) ** 2
    cells = []
    for b in sorted(blobs, key=lambda b: (b.box[1], b.box[0])):
        x0, y0 = max(0, int(math.floor(b.box[0] / scale))), max(0, int(math.floor(b.box[1] / scale)))
        x1, y1 = min(W, int(math.ceil(b.box[2] / scale))), min(H, int(math.ceil(b.box[3] / scale)))
        if x1 <= x0 or y1 <= y0:
            continue
        mask = cv2.resize(b.mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0
        at_edge = x0 == 0 or y0 == 0 or x1 == W or y1 == H
        cells.append(Cell((x0, y0, x1, y1), mask, round(b.nucleus / rbc_area, 3), at_edge))
    return FieldResult(cells, float(rbc), flags, measures)


# ----------------------------------------------------------------------------------------------
# evaluation against Pascal VOC boxes (BCCD)


def voc_boxes(xml_path: str | Path, name: str = "WBC") -> list[tuple[int, int, int, int]]:
    """``(xmin, ymin, xmax, ymax)`` of every object called ``name`` in a Pascal VOC annotation."""
    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() == name.upper():
            bb = obj.find("bndbox")
            out.append(tuple(int(round(float(bb.findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def evaluate_detection(annotations_dir: str | Path, images_dir: str | Path, config: DetectionConfig | None = None,
                       *, iou_threshold: float = 0.5, limit: int | None = None, pooled: bool = True,
                       progress: bool = False) -> dict:
    """Recall and precision of :func:`detect_wbcs` against the WBC boxes of a VOC dataset (one-to-one, IoU).

    With ``pooled`` the magnification is estimated over all fields (BCCD is one microscope), as
    ``wbc count`` does for a sample; without it, every field is measured on its own.
    """
    import time

    from .data import load_image
    from .progress import progress as progress_bar
    from .segmentation import box_iou, match_boxes, resolve_link

    cfg = config or DetectionConfig()
    annotations_dir, images_dir = Path(annotations_dir), resolve_link(Path(images_dir))
    xmls = sorted(annotations_dir.glob("*.xml"))[:limit]
    if not xmls:
        raise ValueError(f"no *.xml annotations in {annotations_dir}")
    images = [(x, images_dir / f"{x.stem}.jpg") for x in xmls if (images_dir / f"{x.stem}.jpg").is_file()]
    rbc = cfg.rbc_px
    if rbc is None and pooled:
        rbc = pooled_rbc_diameter([estimate_rbc_diameter(np.asarray(load_image(p))) for _, p in images], cfg.snap)
    tp = n_pred = n_true = 0
    ious, misses, extras = [], [], []
    seconds = 0.0
    bar = progress_bar(total=len(images), desc="detecting", unit="field", enabled=progress)
    for xml, img_path in images:
        truth = voc_boxes(xml)
        rgb = np.asarray(load_image(img_path))
        t0 = time.perf_counter()
        pred = detect_wbcs(rgb, cfg, rbc_px=rbc).boxes
        seconds += time.perf_counter() - t0
        pairs = match_boxes(pred, truth, iou_threshold)
        tp += len(pairs)
        n_pred += len(pred)
        n_true += len(truth)
        ious += [max([box_iou(p, t) for p in pred] or [0.0]) for t in truth]
        matched_p, matched_t = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
        misses += [{"image": xml.stem, "box": list(t)} for j, t in enumerate(truth) if j not in matched_t]
        extras += [{"image": xml.stem, "box": list(p)} for i, p in enumerate(pred) if i not in matched_p]
        bar.update(1)
    bar.close()
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    return {"fields": len(images), "wbc_boxes": n_true, "detected": n_pred, "matched": tp,
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "iou_threshold": iou_threshold, "median_iou": float(np.median(ious)) if ious else float("nan"),
            "iou_p05": float(np.percentile(ious, 5)) if ious else float("nan"),
            "rbc_px": rbc if pooled else "per field", "ms_per_field": 1000 * seconds / max(len(images), 1),
            "misses": misses, "extras": extras, "config": cfg.to_dict()}
