"""Photometric preprocessing: denoising, contrast enhancement and stain normalisation.

Each step is a named, configurable function in a registry (name -> function); the names
are :class:`StrEnum` members so that configs, the CLI and the model file agree on them.
:func:`apply` runs the selected steps in the order denoise -> contrast -> stain and is what
:func:`wbc.preprocessing.apply_photometric` calls for training, prediction and evaluation.

Options (``options`` dict, recorded in the model's :class:`~wbc.preprocessing.PreprocessConfig`;
defaults in :data:`DEFAULT_OPTIONS`):

* ``median_ksize`` (3), ``gaussian_sigma`` (1.0), ``bilateral_d`` (5), ``bilateral_sigma_color`` (40),
  ``bilateral_sigma_space`` (5), ``nlmeans_h`` (5), ``nlmeans_template`` (7), ``nlmeans_search`` (21);
* ``clahe_clip`` (2.0), ``clahe_tiles`` (8);
* ``stain_reference``: path of a reference image (default: the bundled PBC crop
  ``wbc/assets/stain_reference.png``); ``macenko_alpha`` (1.0 percentile), ``macenko_beta`` (0.15 OD).

>>> import numpy as np
>>> rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
>>> apply(rgb, denoise="median", contrast="clahe").shape
(32, 32, 3)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import WbcError

log = logging.getLogger(__name__)

__all__ = ["CONTRAST", "DEFAULT_OPTIONS", "DENOISERS", "STAIN_NORMALISERS", "Contrast", "Denoise", "StainNorm",
           "apply", "contact_sheet", "default_reference_path", "preprocess_files"]


class Denoise(StrEnum):
    MEDIAN = "median"
    GAUSSIAN = "gaussian"
    BILATERAL = "bilateral"
    NLMEANS = "nlmeans"


class Contrast(StrEnum):
    CLAHE = "clahe"
    HISTEQ = "histeq"


class StainNorm(StrEnum):
    REINHARD = "reinhard"
    MACENKO = "macenko"
    BACKGROUND = "background"


DEFAULT_OPTIONS: dict[str, Any] = {
    "median_ksize": 3,
    "gaussian_sigma": 1.0,
    "bilateral_d": 5,
    "bilateral_sigma_color": 40.0,
    "bilateral_sigma_space": 5.0,
    "nlmeans_h": 5.0,
    "nlmeans_template": 7,
    "nlmeans_search": 21,
    "clahe_clip": 2.0,
    "clahe_tiles": 8,
    "stain_reference": None,
    "macenko_alpha": 1.0,
    "macenko_beta": 0.15,
}


def _opt(options: dict[str, Any] | None, key: str) -> Any:
    value = (options or {}).get(key)
    return DEFAULT_OPTIONS[key] if value is None else value


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {rgb.dtype}")
    return np.ascontiguousarray(rgb)


# --- denoising ------------------------------------------------------------------------------


def denoise_median(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Median filter (odd kernel ``median_ksize``): removes salt-and-pepper noise, keeps edges."""
    k = int(_opt(options, "median_ksize"))
    if k < 1 or k % 2 == 0:
        raise ValueError(f"median_ksize must be a positive odd integer, got {k}")
    return cv2.medianBlur(rgb, k)


def denoise_gaussian(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Gaussian blur with standard deviation ``gaussian_sigma`` px."""
    sigma = float(_opt(options, "gaussian_sigma"))
    if sigma <= 0:
        raise ValueError(f"gaussian_sigma must be > 0, got {sigma}")
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def denoise_bilateral(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Bilateral filter (Tomasi & Manduchi 1998): smooths within regions, not across edges."""
    return cv2.bilateralFilter(rgb, int(_opt(options, "bilateral_d")), float(_opt(options, "bilateral_sigma_color")),
                               float(_opt(options, "bilateral_sigma_space")))


def denoise_nlmeans(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Non-local means (Buades et al. 2005), OpenCV's fast colour variant."""
    h = float(_opt(options, "nlmeans_h"))
    return cv2.fastNlMeansDenoisingColored(rgb, None, h, h, int(_opt(options, "nlmeans_template")),
                                           int(_opt(options, "nlmeans_search")))


DENOISERS: dict[Denoise, Callable[[np.ndarray, dict | None], np.ndarray]] = {
    Denoise.MEDIAN: denoise_median,
    Denoise.GAUSSIAN: denoise_gaussian,
    Denoise.BILATERAL: denoise_bilateral,
    Denoise.NLMEANS: denoise_nlmeans,
}


# --- contrast (on the L channel of CIE Lab, so hues are kept) -------------------------------


def _on_luminance(rgb: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = fn(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def contrast_clahe(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld 1994) of the luminance."""
    tiles = int(_opt(options, "clahe_tiles"))
    clahe = cv2.createCLAHE(clipLimit=float(_opt(options, "clahe_clip")), tileGridSize=(tiles, tiles))
    return _on_luminance(rgb, clahe.apply)


def contrast_histeq(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Global histogram equalisation of the luminance."""
    return _on_luminance(rgb, cv2.equalizeHist)


CONTRAST: dict[Contrast, Callable[[np.ndarray, dict | None], np.ndarray]] = {
    Contrast.CLAHE: contrast_clahe,
    Contrast.HISTEQ: contrast_histeq,
}


# --- stain normalisation --------------------------------------------------------------------


def default_reference_path() -> Path:
    return Path(str(resources.files("wbc") / "assets" / "stain_reference.png"))


def _reference_rgb(options: dict | None) -> tuple[np.ndarray, str]:
    ref = _opt(options, "stain_reference") or default_reference_path()
    return _load_reference(str(ref)), str(ref)


@functools.lru_cache(maxsize=8)
def _load_reference(path: str) -> np.ndarray:
    from .data import load_image

    try:
        return np.asarray(load_image(path), dtype=np.uint8)
    except WbcError as exc:
        raise WbcError(f"stain reference image unusable: {exc}") from None


def _foreground(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are neither pure-black fill nor the brightest background."""
    valid = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > 25  # 6x faster than .max(axis=2)
    if np.count_nonzero(valid) < 16:
        return np.ones(rgb.shape[:2], bool)
    return valid


def _lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    px = lab[_foreground(rgb)]
    return px.mean(axis=0), px.std(axis=0) + 1e-6


@functools.lru_cache(maxsize=8)
def _reference_lab_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    return _lab_stats(_load_reference(path))


def stain_reinhard(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer: match the mean and std of each CIE Lab channel."""
    _, ref_path = _reference_rgb(options)
    ref_mean, ref_std = _reference_lab_stats(ref_path)
    rgb = np.ascontiguousarray(rgb)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    fg = _foreground(rgb)
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / 20000))))  # statistics from <= ~20k pixels
    m, sd = cv2.meanStdDev(np.ascontiguousarray(lab[::step, ::step]),
                           mask=np.ascontiguousarray(fg[::step, ::step]).astype(np.uint8))
    mean, std = m.ravel().astype(np.float32), sd.ravel().astype(np.float32) + 1e-6
    # the transfer is affine per Lab channel: one lookup table per channel on the uint8 Lab image
    v = np.arange(256, dtype=np.float32)[:, None]
    lut = np.clip((v - mean) * (ref_std / std) + ref_mean, 0, 255).astype(np.uint8)
    out = cv2.cvtColor(cv2.LUT(lab, lut.reshape(256, 1, 3)), cv2.COLOR_LAB2RGB)
    if not fg.all():
        out[~fg] = rgb[~fg]  # keep augmentation fill black
    return out


def background_rgb(rgb: np.ndarray) -> np.ndarray:
    """The light-source colour ``I0``: the median of the brightest 10 % of (non-fill) pixels."""
    px = rgb.reshape(-1, 3).astype(np.float32)
    px = px[px.max(axis=1) > 25] if (px.max(axis=1) > 25).sum() >= 16 else px
    bright = px.sum(axis=1)
    return np.median(px[bright >= np.percentile(bright, 90)], axis=0)


def _od(rgb: np.ndarray, io: np.ndarray) -> np.ndarray:
    return np.maximum(np.log((io + 1.0) / (rgb.astype(np.float32) + 1.0)), 0.0)


def macenko_stains(rgb: np.ndarray, alpha: float = 1.0, beta: float = 0.15
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stain matrix (3x2, unit OD vectors as columns), 99th-percentile concentrations and background
    colour of an image, after Macenko et al. (2009).

    Optical density is taken relative to the image's own background (not 255), so the
    yellowish or grey plasma of different microscopes counts as unstained.

    Raises:
        WbcError: when the image has too few stained pixels to estimate two stains.
    """
    io = background_rgb(rgb)
    od_all = _od(rgb, io).reshape(-1, 3)
    od = od_all[(od_all.sum(axis=1) > beta) & (rgb.reshape(-1, 3).max(axis=1) > 25)]
    if len(od) < 50:
        raise WbcError("too few stained pixels for Macenko stain estimation")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = np.abs(v1), np.abs(v2)
    # order: the nuclear (azure/methylene blue: absorbs red relative to green) stain first, then eosin
    # (absorbs green), so that each stain maps onto its counterpart in the reference
    stains = np.stack([v1, v2], axis=1) if v1[0] / (v1[1] + 1e-6) >= v2[0] / (v2[1] + 1e-6) \
        else np.stack([v2, v1], axis=1)
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_conc = np.percentile(conc, 99, axis=1)
    return stains, max_conc, io


@functools.lru_cache(maxsize=8)
def _reference_macenko(path: str, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return macenko_stains(_load_reference(path), alpha, beta)


def stain_macenko(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """Macenko et al. (2009) stain normalisation to the reference's stain vectors, concentrations and background.

    An image without enough stained pixels (e.g. blank) is returned unchanged, with a debug log.
    """
    alpha, beta = float(_opt(options, "macenko_alpha")), float(_opt(options, "macenko_beta"))
    _, ref_path = _reference_rgb(options)
    ref_stains, ref_max, ref_io = _reference_macenko(ref_path, alpha, beta)
    try:
        stains, max_conc, io = macenko_stains(rgb, alpha, beta)
    except WbcError:
        log.debug("Macenko: too few stained pixels, image left unchanged")
        return rgb
    h, w, _ = rgb.shape
    conc = np.linalg.lstsq(stains, _od(rgb, io).reshape(-1, 3).T, rcond=None)[0]
    conc = np.maximum(conc, 0.0) * (ref_max / np.maximum(max_conc, 1e-6))[:, None]
    od = (ref_stains @ conc).T.reshape(h, w, 3)
    out = np.clip((ref_io + 1.0) * np.exp(-od) - 1.0, 0, 255).astype(np.uint8)
    fill = rgb.max(axis=2) <= 25
    out[fill] = rgb[fill]
    return out


def stain_background(rgb: np.ndarray, options: dict | None = None) -> np.ndarray:
    """White balance on the plasma: scale each channel so that the image's own light-source colour
    (:func:`background_rgb`) becomes the reference's.

    Cancels the lamp colour and camera white balance of another microscope (PBC's peach plasma vs
    BCCD's grey-blue) without touching how the cells themselves are stained relative to the plasma;
    it does not depend on how much of the image the cell covers, unlike Reinhard's statistics.
    """
    _, ref_path = _reference_rgb(options)
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / 10000))))  # ~10k pixels give the plasma colour
    gain = _reference_background(ref_path) / np.maximum(background_rgb(rgb[::step, ::step]), 1.0)
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain[None, :], 0, 255).astype(np.uint8)  # (256, 3)
    out = cv2.LUT(np.ascontiguousarray(rgb), lut.reshape(256, 1, 3))
    fill = rgb.max(axis=2) <= 25
    out[fill] = rgb[fill]  # keep augmentation fill black
    return out


@functools.lru_cache(maxsize=8)
def _reference_background(path: str) -> np.ndarray:
    return background_rgb(_load_reference(path))


STAIN_NORMALISERS: dict[StainNorm, Callable[[np.ndarray, dict | None], np.ndarray]] = {
    StainNorm.REINHARD: stain_reinhard,
    StainNorm.MACENKO: stain_macenko,
    StainNorm.BACKGROUND: stain_background,
}


def _lookup(registry: dict, enum: type[StrEnum], name: str | None, what: str):
    if name is None or str(name).lower() in ("", "none"):
        return None
    try:
        return registry[enum(str(name).lower())]
    except ValueError:
        raise WbcError(f"unknown {what} '{name}'; choose one of {', '.join(m.value for m in enum)}") from None


def check_names(denoise: str | None = None, contrast: str | None = None, stain_norm: str | None = None) -> None:
    """Raise :class:`WbcError` for an unknown step name (for early CLI validation)."""
    _lookup(DENOISERS, Denoise, denoise, "denoiser")
    _lookup(CONTRAST, Contrast, contrast, "contrast method")
    _lookup(STAIN_NORMALISERS, StainNorm, stain_norm, "stain normalisation")


def apply(rgb: np.ndarray, denoise: str | None = None, contrast: str | None = None, stain_norm: str | None = None,
          options: dict[str, Any] | None = None) -> np.ndarray:
    """Run the selected steps (denoise -> contrast -> stain normalisation) on an RGB uint8 image.

    Args:
        rgb: ``HxWx3`` uint8 image.
        denoise: a :class:`Denoise` name or ``None``.
        contrast: a :class:`Contrast` name or ``None``.
        stain_norm: a :class:`StainNorm` name or ``None``.
        options: step parameters, see :data:`DEFAULT_OPTIONS`.

    Returns:
        A new ``HxWx3`` uint8 image (the input when no step is selected).

    Raises:
        WbcError: unknown step name or unusable stain reference.
        ValueError: ``rgb`` is not ``HxWx3`` uint8, or an option is out of range.
    """
    rgb = _check_rgb(rgb)
    steps = [_lookup(DENOISERS, Denoise, denoise, "denoiser"),
             _lookup(CONTRAST, Contrast, contrast, "contrast method"),
             _lookup(STAIN_NORMALISERS, StainNorm, stain_norm, "stain normalisation")]
    unknown = set(options or {}) - set(DEFAULT_OPTIONS)
    if unknown:
        raise WbcError(f"unknown preprocessing option(s) {sorted(unknown)}; known: {', '.join(DEFAULT_OPTIONS)}")
    out = rgb
    for step in steps:
        if step is not None:
            out = step(out, options)
    return out


# --- files ----------------------------------------------------------------------------------


def contact_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], titles: list[str] | None = None,
                  thumb: int = 192) -> np.ndarray:
    """Before/after thumbnails, one pair per row (left: original, right: processed)."""
    if not pairs:
        raise ValueError("contact_sheet needs at least one (before, after) pair")
    rows = []
    for i, (before, after) in enumerate(pairs):
        cells = []
        for img in (before, after):
            h, w = img.shape[:2]
            s = thumb / max(h, w)
            small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            canvas = np.full((thumb, thumb, 3), 255, np.uint8)
            canvas[:small.shape[0], :small.shape[1]] = small
            cells.append(canvas)
        row = np.concatenate([cells[0], np.full((thumb, 4, 3), 255, np.uint8), cells[1]], axis=1)
        if titles:
            cv2.putText(row, titles[i][:40], (4, thumb - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([row, np.full((4, row.shape[1], 3), 255, np.uint8)], axis=0))
    return np.concatenate(rows, axis=0)


def _unique_names(paths: list[Path]) -> list[str]:
    """Output stems; a stem that repeats gets its parent folder prefixed (``neutrophil_x``)."""
    seen: dict[str, int] = {}
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
    names, used = [], set()
    for p in paths:
        name = p.stem if seen[p.stem] == 1 else f"{p.parent.name}_{p.stem}"
        base, i = name, 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        names.append(name)
    return names


def preprocess_files(inputs: Iterable[str | Path], out_dir: str | Path, config: Any = None,
                     stain_reference: str | Path | None = None, *, sheet_size: int = 8,
                     skip_bad: bool = True) -> list[Path]:
    """Apply the photometric steps of ``config`` to every image; write PNGs and ``contact_sheet.png``.

    Args:
        inputs: image files and/or folders (searched recursively).
        out_dir: output folder (created); each image is written as ``<stem>.png``.
        config: a :class:`~wbc.preprocessing.PreprocessConfig` or a dict with ``denoise``,
            ``contrast``, ``stain_norm`` and ``options``.
        stain_reference: reference image for stain normalisation (overrides ``options``).
        sheet_size: how many before/after pairs the contact sheet shows.
        skip_bad: warn about and skip unreadable files (``False``: raise).

    Returns:
        The written image paths (the contact sheet is ``out_dir / "contact_sheet.png"``).
    """
    from .data import image_files, load_image
    from .errors import BadImageError, BadImagesError
    from .io import write_bytes

    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    options = dict(cfg.get("options") or {})
    if stain_reference is not None:
        if not Path(stain_reference).is_file():
            raise WbcError(f"{stain_reference}: stain reference image not found")
        options["stain_reference"] = str(stain_reference)
    steps = {k: cfg.get(k) for k in ("denoise", "contrast", "stain_norm")}
    check_names(**steps)
    paths = image_files(list(inputs))
    if not paths:
        raise WbcError("no images found in the given inputs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, pairs, titles, bad = [], [], [], []
    for path, name in zip(paths, _unique_names(paths)):
        try:
            rgb = np.asarray(load_image(path), dtype=np.uint8)
        except BadImageError as exc:
            bad.append(exc)
            continue
        out = apply(rgb, options=options, **steps)
        target = out_dir / f"{name}.png"
        ok, buf = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV can always encode uint8 RGB
            raise WbcError(f"{target}: could not encode PNG")
        write_bytes(target, buf.tobytes())
        written.append(target)
        if len(pairs) < sheet_size:
            pairs.append((rgb, out))
            titles.append(name)
    if bad:
        if not skip_bad:
            raise BadImagesError(bad)
        for b in bad:
            log.warning("skipped %s", b)
    if pairs:
        sheet = contact_sheet(pairs, titles)
        buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))[1]
        write_bytes(out_dir / "contact_sheet.png", buf.tobytes())
    return written
