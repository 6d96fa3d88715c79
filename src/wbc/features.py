"""Hand-crafted features of one white blood cell: shape, texture, colour and granularity.

Every feature has a name, the region it is measured on (``cell``, ``nucleus`` or
``cytoplasm``) and a one-line definition in :data:`FEATURES`; ``docs/features.md`` is
generated from that table (:func:`features_markdown`), so the two never disagree.

A cell whose segmentation fails (no stained cell found) gives a row of NaN with a status
and a warning; it is counted in every summary, never dropped silently.

References: Haralick et al. (1973) grey-level co-occurrence matrices; Ojala et al. (2002)
uniform local binary patterns; Putzu et al. (2014) and Rezatofighi & Soltanian-Zadeh
(2011) for the choice of leukocyte shape and colour features.

>>> import numpy as np
>>> yy, xx = np.mgrid[:101, :101]
>>> disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 40 ** 2
>>> round(shape_features(disc)["circularity"], 2)
0.99
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from scipy import ndimage as ndi
from sklearn.base import BaseEstimator, TransformerMixin

from .segmentation import CROP_CONFIG, SegmentationConfig, segment_cells, segment_single_cell

log = logging.getLogger(__name__)

#: Bump when a feature's definition changes: invalidates cached feature matrices.
FEATURE_VERSION = 2
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_LEVELS = 32
GLCM_PROPS = ("contrast", "correlation", "energy", "homogeneity")
LBP_POINTS, LBP_RADIUS = 8, 1
LBP_WIDE_POINTS, LBP_WIDE_RADIUS = 16, 3  # coarser texture: granules and chromatin clumps
COLOUR_CHANNELS = ("r", "g", "b", "h", "s", "v", "L", "a", "bb")
MIN_PARALLEL = 32  # fewer images than this are measured in-process (a pool costs ~1 s to start)


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    region: str
    definition: str


def _shape_defs(region: str) -> list[FeatureInfo]:
    d = {
        "area": "number of pixels",
        "perimeter": "boundary length in pixels (sum over connected parts)",
        "equivalent_diameter": "diameter of the disc with the same area",
        "circularity": "4 pi area / perimeter^2 (1 for a disc, smaller for irregular outlines)",
        "eccentricity": "eccentricity of the ellipse with the same second moments (0 = circle)",
        "solidity": "area / area of the convex hull",
        "convexity": "perimeter of the convex hull / perimeter (1 for a convex outline)",
        "feret_max": "largest caliper (Feret) diameter of the convex hull",
        "feret_min": "smallest caliper (Feret) diameter of the convex hull",
        "major_axis": "major axis length of the moment ellipse",
        "minor_axis": "minor axis length of the moment ellipse",
        "extent": "area / area of the axis-aligned bounding box",
    }
    return [FeatureInfo(f"{region}_{k}", region, v) for k, v in d.items()]


def _build_feature_table() -> list[FeatureInfo]:
    out = _shape_defs("cell") + _shape_defs("nucleus")
    out += [
        FeatureInfo("nucleus_lobes", "nucleus", "number of lobes: connected cores where the distance to the nucleus "
                    "edge is >= 0.5 x its maximum (filaments between lobes are thin)"),
        FeatureInfo("nucleus_fragments", "nucleus", "number of connected parts of the nucleus mask"),
        FeatureInfo("nucleus_cytoplasm_ratio", "cell", "nucleus area / cytoplasm area (cytoplasm at least 1 px)"),
        FeatureInfo("nucleus_cell_ratio", "cell", "nucleus area / cell area"),
    ]
    for region in ("nucleus", "cytoplasm"):
        for prop in GLCM_PROPS:
            for dist in GLCM_DISTANCES:
                out.append(FeatureInfo(
                    f"{region}_glcm_{prop}_d{dist}", region,
                    f"GLCM {prop} of the grey image ({GLCM_LEVELS} levels), distance {dist} px, "
                    "mean over 0/45/90/135 degrees, pixel pairs inside the region only"))
    for region in ("nucleus", "cytoplasm"):
        for b in range(LBP_POINTS + 2):
            what = (f"uniform pattern with {b} of {LBP_POINTS} neighbours brighter" if b <= LBP_POINTS
                    else "non-uniform patterns")
            out.append(FeatureInfo(f"{region}_lbp_{b}", region,
                                   f"fraction of pixels with rotation-invariant uniform LBP "
                                   f"(P={LBP_POINTS}, R={LBP_RADIUS}) code {b}: {what}"))
    for region in ("nucleus", "cytoplasm"):
        for b in range(LBP_WIDE_POINTS + 2):
            what = (f"uniform pattern with {b} of {LBP_WIDE_POINTS} neighbours brighter" if b <= LBP_WIDE_POINTS
                    else "non-uniform patterns")
            out.append(FeatureInfo(f"{region}_lbp{LBP_WIDE_POINTS}r{LBP_WIDE_RADIUS}_{b}", region,
                                   f"fraction of pixels with rotation-invariant uniform LBP "
                                   f"(P={LBP_WIDE_POINTS}, R={LBP_WIDE_RADIUS}) code {b}: {what}"))
    od_doc = {"od": "total optical density OD_r + OD_g + OD_b (OD_c = log(background_c / I_c), background = "
                    "the image's brightest 10 %): stain amount, independent of lamp brightness",
              "hstain": "OD_red - OD_blue: azure/methylene-blue (nuclear, basophilic) stain",
              "estain": "OD_green - OD_red: eosin (eosinophilic granules, haemoglobin)"}
    for region in ("nucleus", "cytoplasm"):
        for k, doc in od_doc.items():
            out.append(FeatureInfo(f"{region}_{k}_mean", region, f"mean of {doc}"))
            out.append(FeatureInfo(f"{region}_{k}_std", region, f"standard deviation of {doc}"))
    out.append(FeatureInfo("nucleus_offset", "cell", "distance between the nucleus and cell centroids / "
                           "the cell's equivalent radius (0 = centred nucleus)"))
    chan_doc = {"r": "red (0-255)", "g": "green (0-255)", "b": "blue (0-255)",
                "h": "hue (OpenCV 0-180, rotated by 90 so the wrap-around falls on green, absent in stained cells)",
                "s": "HSV saturation (0-255)", "v": "HSV value (0-255)", "L": "CIE Lab lightness (OpenCV 0-255)",
                "a": "CIE Lab a* (green-red, OpenCV offset 128)", "bb": "CIE Lab b* (blue-yellow, OpenCV offset 128)"}
    for region in ("nucleus", "cytoplasm", "cell"):
        stats = ("mean", "std", "skew") if region != "cell" else ("mean", "std")
        for ch in COLOUR_CHANNELS:
            for st in stats:
                out.append(FeatureInfo(f"{region}_{ch}_{st}", region, f"{st} of {chan_doc[ch]}"))
    for r in (1, 2, 3):
        out.append(FeatureInfo(f"cytoplasm_granularity_r{r}", "cytoplasm",
                               f"mean black top-hat (disc radius {r} px) of the grey image / 255: "
                               f"dark granules of about {2 * r + 1} px"))
    out += [
        FeatureInfo("cytoplasm_granule_fraction", "cytoplasm",
                    "fraction of cytoplasm pixels whose black top-hat (radius 3) exceeds 10 grey levels"),
        FeatureInfo("cytoplasm_granule_density", "cytoplasm",
                    "granules (connected top-hat spots) per 100 cytoplasm pixels"),
        FeatureInfo("cytoplasm_bright_granularity", "cytoplasm",
                    "mean white top-hat (radius 2) of the grey image / 255: light granules and vacuoles"),
    ]
    return out


#: Every feature, in column order.
FEATURES: list[FeatureInfo] = _build_feature_table()
FEATURE_NAMES: list[str] = [f.name for f in FEATURES]


# --- shape ----------------------------------------------------------------------------------


def _feret(points: np.ndarray) -> tuple[float, float]:
    """(max, min) caliper diameters of a point set via its convex hull (rotating calipers, brute force)."""
    if len(points) < 3:
        return float(len(points) > 0), float(len(points) > 0)
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 3:
        span = float(np.ptp(hull, axis=0).max()) + 1.0
        return span, 1.0
    diff = hull[:, None, :] - hull[None, :, :]
    fmax = float(np.sqrt((diff ** 2).sum(-1)).max()) + 1.0
    edges = np.roll(hull, -1, axis=0) - hull
    norms = np.linalg.norm(edges, axis=1)
    ok = norms > 0
    normals = np.stack([-edges[ok, 1], edges[ok, 0]], axis=1) / norms[ok, None]
    widths = np.abs((hull[None, :, :] - hull[ok][:, None, :]) @ normals[:, :, None]).max(axis=1).ravel()
    return fmax, float(widths.min()) + 1.0


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Shape descriptors of a binary mask (all its parts taken together); NaN for an empty mask.

    >>> round(shape_features(np.ones((10, 20), bool))["extent"], 2)
    1.0
    """
    keys = ["area", "perimeter", "equivalent_diameter", "circularity", "eccentricity", "solidity", "convexity",
            "feret_max", "feret_min", "major_axis", "minor_axis", "extent"]
    mask = np.asarray(mask, dtype=bool)
    area = float(np.count_nonzero(mask))
    if area < 3:
        return {k: math.nan for k in keys}
    from skimage.measure import perimeter_crofton

    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours])
    hull_mask = np.zeros_like(m8)
    cv2.fillConvexPoly(hull_mask, cv2.convexHull(points), 1)
    hull_mask |= m8
    # Crofton perimeter: unbiased for digital discs (a disc scores circularity ~1, not ~0.9)
    perimeter = max(float(perimeter_crofton(np.pad(m8, 1), 4)), 1.0)
    hull_perimeter = max(float(perimeter_crofton(np.pad(hull_mask, 1), 4)), 1.0)
    yy, xx = np.nonzero(mask)
    cov = np.cov(np.stack([xx, yy]).astype(np.float64))
    ev = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
    major, minor = 4 * math.sqrt(ev[0]), 4 * math.sqrt(ev[1])
    ecc = math.sqrt(1 - ev[1] / ev[0]) if ev[0] > 0 else 0.0
    fmax, fmin = _feret(points)
    bbox_area = float((np.ptp(yy) + 1) * (np.ptp(xx) + 1))
    return {"area": area, "perimeter": perimeter, "equivalent_diameter": math.sqrt(4 * area / math.pi),
            "circularity": min(4 * math.pi * area / perimeter ** 2, 1.0), "eccentricity": ecc,
            "solidity": area / float(np.count_nonzero(hull_mask)), "convexity": min(hull_perimeter / perimeter, 1.0),
            "feret_max": fmax, "feret_min": fmin, "major_axis": major, "minor_axis": minor,
            "extent": area / bbox_area}


def count_lobes(nucleus: np.ndarray, core: float = 0.5) -> int:
    """Lobes of a nucleus: connected parts of ``distance-to-edge >= core x max`` (per fragment).

    >>> m = np.zeros((40, 80), bool); m[10:30, 5:30] = True; m[10:30, 50:75] = True; m[19:21, 30:50] = True
    >>> count_lobes(m)
    2
    """
    if not nucleus.any():
        return 0
    frag, n = ndi.label(nucleus)
    lobes = 0
    for sl, k in zip(ndi.find_objects(frag), range(1, n + 1)):
        part = np.pad(frag[sl] == k, 1)
        dt = cv2.distanceTransform(part.astype(np.uint8), cv2.DIST_L2, 5)
        cores, m = ndi.label(dt >= core * dt.max())
        if m > 1:
            sizes = np.bincount(cores.ravel())[1:]
            m = int(np.count_nonzero(sizes >= 0.1 * sizes.max()))
        lobes += max(m, 1)
    return lobes


# --- texture --------------------------------------------------------------------------------


def glcm_features(grey: np.ndarray, mask: np.ndarray, prefix: str) -> dict[str, float]:
    """GLCM properties over pixel pairs that both lie in ``mask`` (Haralick 1973)."""
    from skimage.feature import graycomatrix, graycoprops

    out = {}
    q = (grey.astype(np.int32) * GLCM_LEVELS // 256 + 1).astype(np.uint8)
    q[~mask] = 0  # level 0 = outside; its row and column are dropped below
    if np.count_nonzero(mask) < 16:
        return {f"{prefix}_glcm_{p}_d{d}": math.nan for p in GLCM_PROPS for d in GLCM_DISTANCES}
    P = graycomatrix(q, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS + 1, symmetric=True, normed=False)
    P = P[1:, 1:].astype(np.float64)
    totals = P.sum(axis=(0, 1), keepdims=True)
    P = np.divide(P, totals, out=np.zeros_like(P), where=totals > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for prop in GLCM_PROPS:
            values = graycoprops(P, prop)  # (distances, angles)
            for i, d in enumerate(GLCM_DISTANCES):
                v = values[i][totals[0, 0, i] > 0]
                out[f"{prefix}_glcm_{prop}_d{d}"] = float(np.nanmean(v)) if v.size and np.isfinite(v).any() \
                    else math.nan
    return out


def lbp_histogram(lbp: np.ndarray, mask: np.ndarray, prefix: str, points: int = LBP_POINTS) -> dict[str, float]:
    n = points + 2
    values = lbp[mask].astype(np.int64)
    if values.size == 0:
        return {f"{prefix}_{b}": math.nan for b in range(n)}
    hist = np.bincount(values, minlength=n)[:n] / values.size
    return {f"{prefix}_{b}": float(hist[b]) for b in range(n)}


# --- colour ---------------------------------------------------------------------------------


def colour_channels(rgb: np.ndarray) -> np.ndarray:
    """``HxWx9`` float32: R, G, B, rotated hue, S, V, L, a, b (OpenCV 8-bit scales)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 90) % 180  # move the hue wrap-around from red to green
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    return np.concatenate([rgb.astype(np.float32), hsv, lab], axis=2)


def colour_stats(channels: np.ndarray, mask: np.ndarray, prefix: str, stats=("mean", "std", "skew")
                 ) -> dict[str, float]:
    """Mean, standard deviation and (Fisher-Pearson, biased) skewness of each channel inside ``mask``."""
    px = channels[mask]
    if len(px) < 2:
        return {f"{prefix}_{ch}_{st}": math.nan for ch in COLOUR_CHANNELS for st in stats}
    mean = px.mean(axis=0, dtype=np.float64)
    centred = px - mean.astype(np.float32)
    sq = centred * centred
    var = sq.mean(axis=0, dtype=np.float64)
    std = np.sqrt(var)
    third = (sq * centred).mean(axis=0, dtype=np.float64)
    sk = np.where(std > 1e-6, third / np.maximum(var, 1e-12) ** 1.5, 0.0)
    values = {"mean": mean, "std": std, "skew": sk}
    return {f"{prefix}_{ch}_{st}": float(values[st][i]) for i, ch in enumerate(COLOUR_CHANNELS) for st in stats}


def granularity_features(grey: np.ndarray, cytoplasm: np.ndarray) -> dict[str, float]:
    n = int(np.count_nonzero(cytoplasm))
    keys = [f"cytoplasm_granularity_r{r}" for r in (1, 2, 3)] + [
        "cytoplasm_granule_fraction", "cytoplasm_granule_density", "cytoplasm_bright_granularity"]
    if n < 16:
        return {k: math.nan for k in keys}
    out = {}
    black3 = None
    for r in (1, 2, 3):
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        bth = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, k)
        out[f"cytoplasm_granularity_r{r}"] = float(bth[cytoplasm].mean()) / 255.0
        black3 = bth
    spots = (black3 > 10) & cytoplasm
    out["cytoplasm_granule_fraction"] = float(np.count_nonzero(spots)) / n
    out["cytoplasm_granule_density"] = 100.0 * float(ndi.label(spots)[1]) / n
    wth = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    out["cytoplasm_bright_granularity"] = float(wth[cytoplasm].mean()) / 255.0
    return out


# --- one cell -------------------------------------------------------------------------------


def cell_features(rgb: np.ndarray, cell: np.ndarray, nucleus: np.ndarray) -> dict[str, float]:
    """All :data:`FEATURES` of one cell given its masks (``nucleus`` is clipped to ``cell``).

    Raises:
        ValueError: if the masks do not match the image size or the cell mask is empty.
    """
    from skimage.feature import local_binary_pattern

    rgb = np.asarray(rgb, dtype=np.uint8)
    cell = np.asarray(cell, dtype=bool)
    if cell.shape != rgb.shape[:2] or nucleus.shape != rgb.shape[:2]:
        raise ValueError(f"mask shapes {cell.shape}/{nucleus.shape} do not match image {rgb.shape[:2]}")
    if not cell.any():
        raise ValueError("empty cell mask")
    from .segmentation import optical_density

    od_full = optical_density(rgb)[0]  # background from the whole image, not the crop
    ys, xs = np.nonzero(cell)
    pad = max(LBP_RADIUS, LBP_WIDE_RADIUS) + max(GLCM_DISTANCES) + 3
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, rgb.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, rgb.shape[1])
    rgb, cell = np.ascontiguousarray(rgb[y0:y1, x0:x1]), cell[y0:y1, x0:x1]
    nucleus = np.asarray(nucleus, dtype=bool)[y0:y1, x0:x1] & cell
    cyto = cell & ~nucleus
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    f: dict[str, float] = {}
    f.update({f"cell_{k}": v for k, v in shape_features(cell).items()})
    f.update({f"nucleus_{k}": v for k, v in shape_features(nucleus).items()})
    n_area, c_area = float(np.count_nonzero(nucleus)), float(np.count_nonzero(cyto))
    f["nucleus_lobes"] = float(count_lobes(nucleus))
    f["nucleus_fragments"] = float(ndi.label(nucleus)[1])
    f["nucleus_cytoplasm_ratio"] = n_area / max(c_area, 1.0)
    f["nucleus_cell_ratio"] = n_area / float(np.count_nonzero(cell))
    f.update(glcm_features(grey, nucleus, "nucleus"))
    f.update(glcm_features(grey, cyto, "cytoplasm"))
    lbp = local_binary_pattern(grey, LBP_POINTS, LBP_RADIUS, method="uniform")
    f.update(lbp_histogram(lbp, nucleus, "nucleus_lbp"))
    f.update(lbp_histogram(lbp, cyto, "cytoplasm_lbp"))
    wide = local_binary_pattern(grey, LBP_WIDE_POINTS, LBP_WIDE_RADIUS, method="uniform")
    tag = f"lbp{LBP_WIDE_POINTS}r{LBP_WIDE_RADIUS}"
    f.update(lbp_histogram(wide, nucleus, f"nucleus_{tag}", LBP_WIDE_POINTS))
    f.update(lbp_histogram(wide, cyto, f"cytoplasm_{tag}", LBP_WIDE_POINTS))
    od = od_full[y0:y1, x0:x1]
    maps = {"od": od.sum(axis=2), "hstain": od[..., 0] - od[..., 2], "estain": od[..., 1] - od[..., 0]}
    for region, m in (("nucleus", nucleus), ("cytoplasm", cyto)):
        for k, v in maps.items():
            vals = v[m]
            f[f"{region}_{k}_mean"] = float(vals.mean()) if vals.size >= 2 else math.nan
            f[f"{region}_{k}_std"] = float(vals.std()) if vals.size >= 2 else math.nan
    if nucleus.any():
        cy, cx = np.argwhere(cell).mean(axis=0)
        ny, nx = np.argwhere(nucleus).mean(axis=0)
        f["nucleus_offset"] = float(math.hypot(cy - ny, cx - nx) / math.sqrt(np.count_nonzero(cell) / math.pi))
    else:
        f["nucleus_offset"] = math.nan
    chans = colour_channels(rgb)
    f.update(colour_stats(chans, nucleus, "nucleus"))
    f.update(colour_stats(chans, cyto, "cytoplasm"))
    f.update(colour_stats(chans, cell, "cell", stats=("mean", "std")))
    f.update(granularity_features(grey, cyto))
    return {name: f[name] for name in FEATURE_NAMES}


# --- images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """What is done to an image before its features are measured (recorded in classical models)."""

    denoise: str | None = None
    contrast: str | None = None
    stain_norm: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_side: int | None = 400  # larger images are downscaled so the longer side is this (bounded cost)
    segmentation: dict[str, Any] = field(default_factory=lambda: asdict(CROP_CONFIG))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureConfig":
        return cls(**{k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__})

    def key(self) -> str:
        payload = {"config": self.to_dict(), "version": FEATURE_VERSION, "features": FEATURE_NAMES}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_rgb(rgb: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Photometric steps, then the size cap, as configured."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    if config.denoise or config.contrast or config.stain_norm:
        from .enhancement import apply

        rgb = apply(rgb, config.denoise, config.contrast, config.stain_norm, config.options)
    h, w = rgb.shape[:2]
    if config.max_side and max(h, w) > config.max_side:
        s = config.max_side / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return rgb


class NoCellFound(ValueError):
    """Segmentation found no stained cell in the image."""


def image_features(rgb: np.ndarray, config: FeatureConfig | None = None) -> dict[str, float]:
    """Features of the central cell of a single-cell crop.

    Raises:
        NoCellFound: when segmentation finds no cell.
    """
    config = config or FeatureConfig()
    rgb = prepare_rgb(rgb, config)
    cell, nucleus = segment_single_cell(rgb, SegmentationConfig(**config.segmentation))
    if not cell.any():
        raise NoCellFound("no stained cell found")
    return cell_features(rgb, cell, nucleus)


def all_cell_features(rgb: np.ndarray, config: FeatureConfig | None = None) -> list[dict[str, float]]:
    """Features of every WBC of a smear field (one dict per cell, with ``cell`` and its box)."""
    config = config or FeatureConfig(segmentation=asdict(SegmentationConfig()))
    rgb = prepare_rgb(rgb, config)
    seg = segment_cells(rgb, SegmentationConfig(**config.segmentation))
    out = []
    for k, (x0, y0, x1, y1) in enumerate(seg.bboxes(), start=1):
        row = {"cell": k, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
        row.update(cell_features(rgb, seg.cell_mask(k), seg.nucleus_mask(k)))
        out.append(row)
    return out


OK, NO_CELL, UNREADABLE = "ok", "no_cell_found", "unreadable"


def _features_of_path(args: tuple[str, dict]) -> tuple[np.ndarray, str]:
    """Worker: ``(feature vector, status)``; NaN vector unless status is ``ok``."""
    from .data import load_image
    from .errors import BadImageError

    path, cfg = args
    nan = np.full(len(FEATURE_NAMES), np.nan, np.float32)
    try:
        rgb = np.asarray(load_image(path), dtype=np.uint8)
    except BadImageError as exc:
        return nan, f"{UNREADABLE}: {exc.reason}"
    try:
        f = image_features(rgb, FeatureConfig.from_dict(cfg))
    except NoCellFound:
        return nan, NO_CELL
    return np.array([f[n] for n in FEATURE_NAMES], np.float32), OK


def _one_thread() -> None:
    """Pool initialiser: one OpenCV thread per worker process (the pool is the parallelism)."""
    cv2.setNumThreads(1)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def extract_matrix(paths: Sequence[str | Path], config: FeatureConfig | None = None, *, workers: int | None = None,
                   progress: bool = True, desc: str = "features") -> tuple[np.ndarray, list[str]]:
    """``(X[N, F] float32, status per image)`` for single-cell crops; parallel over images.

    A failed image gets a NaN row and a status (``no_cell_found`` or ``unreadable: reason``),
    and one summary warning names how many failed: nothing is dropped.
    """
    from .progress import progress as _bar

    config = config or FeatureConfig()
    jobs = [(str(p), config.to_dict()) for p in paths]
    X = np.full((len(jobs), len(FEATURE_NAMES)), np.nan, np.float32)
    status = [""] * len(jobs)
    workers = default_workers() if workers is None else max(1, int(workers))
    bar = _bar(total=len(jobs), desc=desc, unit="cell", enabled=progress)
    if workers > 1 and len(jobs) >= MIN_PARALLEL:
        # spawn, not fork: forking a process that already runs torch/OpenMP threads can deadlock
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
            for i, (row, st) in enumerate(pool.map(_features_of_path, jobs, chunksize=16)):
                X[i], status[i] = row, st
                bar.update()
    else:
        for i, job in enumerate(jobs):
            X[i], status[i] = _features_of_path(job)
            bar.update()
    bar.close()
    failed = [(p, s) for p, s in zip(paths, status) if s != OK]
    if failed:
        n_cell = sum(s == NO_CELL for _, s in failed)
        examples = "; ".join(f"{p}: {s}" for p, s in failed[:3])
        log.warning("%d of %d images gave no features (%d without a detectable cell, %d unreadable), e.g. %s; "
                    "their rows are NaN", len(failed), len(jobs), n_cell, len(failed) - n_cell, examples)
    return X, status


# --- on-disk cache (per file, keyed by path, size, mtime and the feature config) ------------


def _file_key(path: str | Path) -> str:
    p = Path(path)
    try:
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{p}|missing"


def cached_matrix(paths: Sequence[str | Path], config: FeatureConfig | None = None, *, workers: int | None = None,
                  progress: bool = True, cache_dir: Path | None = None, desc: str = "features",
                  chunk: int = 500) -> tuple[np.ndarray, list[str]]:
    """:func:`extract_matrix` with a disk cache: each image is measured once per feature config.

    The cache lives in ``$WBC_CACHE_DIR`` (default ``~/.cache/wbc``) as ``features-<config>-<batch>.npz``
    files; a batch holds up to ``chunk`` newly measured rows, looked up by path, size and mtime.
    """
    from .imageset import default_cache_dir

    config = config or FeatureConfig()
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    ckey = config.key()
    index: dict[str, tuple[np.ndarray, str]] = {}
    for f in sorted(cache_dir.glob(f"features-{ckey}-*.npz")) if cache_dir.is_dir() else []:
        try:
            with np.load(f, allow_pickle=False) as z:
                for k, row, st in zip(z["keys"], z["X"], z["status"]):
                    index[str(k)] = (row, str(st))
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable feature cache %s", f)
    keys = [_file_key(p) for p in paths]
    missing = [i for i, k in enumerate(keys) if k not in index or index[k][1].startswith(UNREADABLE)]
    # measured in chunks, each saved at once: an interrupted run keeps what it measured
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        Xm, sm = extract_matrix([paths[i] for i in part], config, workers=workers, progress=progress,
                                desc=f"{desc} {start + len(part)}/{len(missing)}" if len(missing) > chunk else desc)
        for j, i in enumerate(part):
            index[keys[i]] = (Xm[j], sm[j])
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            batch = hashlib.sha256("\n".join(keys[i] for i in part).encode()).hexdigest()[:12]
            target = cache_dir / f"features-{ckey}-{batch}.npz"
            tmp = target.with_name(target.name + ".partial.npz")
            np.savez(tmp, keys=np.array([keys[i] for i in part]), X=Xm, status=np.array(sm))
            os.replace(tmp, target)
        except OSError as exc:  # a read-only home must not stop training
            log.warning("could not write feature cache: %s", exc)
    X = np.stack([index[k][0] for k in keys]) if keys else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    return X.astype(np.float32), [index[k][1] for k in keys]


# --- scikit-learn step ----------------------------------------------------------------------


class CellFeatureExtractor(TransformerMixin, BaseEstimator):
    """Scikit-learn transformer: images (paths or HxWx3 uint8 arrays) -> feature matrix.

    Stateless (``fit`` does nothing); its parameters are the :class:`FeatureConfig` as a dict,
    so a saved pipeline records exactly which preprocessing and segmentation it used.
    """

    def __init__(self, config: dict | None = None, workers: int = 1):
        self.config = config
        self.workers = workers

    def _config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.config) if self.config else FeatureConfig()

    def fit(self, X=None, y=None):  # noqa: D102 - nothing to learn
        return self

    def transform(self, X) -> np.ndarray:
        cfg = self._config()
        if len(X) and isinstance(X[0], (str, Path)):
            return extract_matrix(list(X), cfg, workers=self.workers, progress=False)[0]
        rows = []
        for rgb in X:
            try:
                f = image_features(np.asarray(rgb, dtype=np.uint8), cfg)
                rows.append([f[n] for n in FEATURE_NAMES])
            except NoCellFound:
                rows.append([math.nan] * len(FEATURE_NAMES))
        return np.asarray(rows, np.float32).reshape(len(rows), len(FEATURE_NAMES))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.array(FEATURE_NAMES, dtype=object)


# --- files and docs -------------------------------------------------------------------------


def extract_features_to_csv(paths: Iterable[str | Path], out_csv: str | Path, workers: int | None = None,
                            progress: bool = True, config: FeatureConfig | None = None) -> dict:
    """Measure every image (files and folders, recursively) into one CSV row per cell.

    Columns: ``path``, ``label`` (from the parent folder when it names a cell type),
    ``status`` (``ok``, ``no_cell_found``, ``unreadable: ...``), then :data:`FEATURE_NAMES`.

    Returns:
        Summary: ``images``, ``ok``, ``no_cell_found``, ``unreadable``, ``features``, ``seconds``,
        ``cells_per_second``, ``csv``.
    """
    from .classes import canonical_label
    from .data import image_files
    from .errors import WbcError
    from .io import write_csv

    files = image_files(list(paths))
    if not files:
        raise WbcError("no images found in the given inputs")
    t0 = time.perf_counter()
    X, status = extract_matrix(files, config, workers=workers, progress=progress)
    seconds = time.perf_counter() - t0
    rows = []
    for p, row, st in zip(files, X, status):
        rec = {"path": str(p), "label": canonical_label(p.parent.name) or "", "status": st}
        rec.update({n: (float(v) if np.isfinite(v) else None) for n, v in zip(FEATURE_NAMES, row)})
        rows.append(rec)
    write_csv(out_csv, rows, ["path", "label", "status"] + FEATURE_NAMES)
    n_ok = sum(s == OK for s in status)
    return {"images": len(files), "ok": n_ok, "no_cell_found": sum(s == NO_CELL for s in status),
            "unreadable": sum(s.startswith(UNREADABLE) for s in status), "features": len(FEATURE_NAMES),
            "seconds": round(seconds, 2), "cells_per_second": round(len(files) / seconds, 2) if seconds else None,
            "csv": str(out_csv)}


def features_markdown() -> str:
    """The feature table of docs/features.md."""
    lines = ["| # | name | region | definition |", "|---|---|---|---|"]
    for i, f in enumerate(FEATURES, start=1):
        lines.append(f"| {i} | `{f.name}` | {f.region} | {f.definition} |")
    return "\n".join(lines)
