"""Image preprocessing shared by training, prediction and evaluation.

A model records its :class:`PreprocessConfig` so that prediction applies exactly what
training applied. The geometric step (square resize) always runs; the optional
photometric steps (denoise, contrast, stain normalisation) run before it, in that order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """What is done to every image before the model sees it."""

    img_size: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    denoise: str | None = None  # see wbc.preprocessing.DENOISERS
    contrast: str | None = None  # see wbc.preprocessing.CONTRAST
    stain_norm: str | None = None  # see wbc.preprocessing.STAIN_NORMALISERS
    crop: float | None = None  # centre a square of this fraction of the short side on the WBC (None: whole image)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def photometric(self) -> bool:
        return any((self.denoise, self.contrast, self.stain_norm))


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the whole image (no crop: BCCD cells sit off-centre) to ``size x size`` RGB uint8."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.uint8)


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    """How nucleus-like each pixel is: Romanowsky-stained nuclei are blue/purple, red cells and plasma are not."""
    a = rgb.astype(np.float32)
    return np.clip((a[..., 2] - a[..., 0]) + 0.5 * (a[..., 2] - a[..., 1]), 0, None)


def wbc_centre(rgb: np.ndarray) -> tuple[int, int]:
    """(row, col) of the densest blue/purple mass: the leukocyte's nucleus in a single-cell crop."""
    from scipy.ndimage import gaussian_filter

    h, w = rgb.shape[:2]
    step = max(1, min(h, w) // 96)  # work on a ~96 px map; the centre needs no more precision
    score = gaussian_filter(nucleus_score(rgb[::step, ::step]), sigma=max(h, w) / step / 24)
    r, c = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(r * step + step // 2), int(c * step + step // 2)


def crop_on_wbc(img: Image.Image, fraction: float) -> Image.Image:
    """Square crop of side ``fraction * min(H, W)`` centred on the WBC, shifted to stay inside the image.

    Kaggle/BCCD crops hold their leukocyte anywhere among red cells; PBC crops hold it in the
    centre. Centring both on the cell makes the two domains look alike (same scale as before).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    rgb = np.asarray(img)
    h, w = rgb.shape[:2]
    side = max(2, int(round(fraction * min(h, w))))
    r, c = wbc_centre(rgb)
    top = min(max(0, r - side // 2), h - side)
    left = min(max(0, c - side // 2), w - side)
    return img.crop((left, top, left + side, top + side))


def apply_photometric(rgb: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Denoise, enhance contrast and normalise stain, as configured (identity by default)."""
    if not config.photometric:
        return rgb
    from . import enhancement  # OpenCV-based steps, imported only when used

    return enhancement.apply(rgb, denoise=config.denoise, contrast=config.contrast,
                             stain_norm=config.stain_norm, options=config.options)


#: an image whose 99th-percentile :func:`nucleus_score` stays below this holds no blue/purple-stained
#: nucleus or granules at all (plasma, an empty field): on validation cells of both sources the lowest
#: value was 36.5 (a PBC platelet), WBCs >= 39.5, plasma windows mostly < 30 (docs/decisions/0013).
MIN_STAIN = 30.0


def stain_scores(rgb: np.ndarray) -> np.ndarray:
    """:func:`nucleus_score` on a 2x-subsampled grid of an RGB image: what :func:`has_stain` looks at."""
    return nucleus_score(np.asarray(rgb)[::2, ::2])


def has_stain(rgb: np.ndarray) -> bool:
    """Does an RGB image (before colour normalisation) hold any nucleus-like stain? At least 1 % of
    :func:`stain_scores` >= :data:`MIN_STAIN` (their 99th percentile).

    >>> has_stain(np.full((8, 8, 3), 128, np.uint8)), has_stain(np.tile(np.array([120, 60, 160], np.uint8), (8, 8, 1)))
    (False, True)
    """
    s = stain_scores(rgb)
    return bool(np.count_nonzero(s >= MIN_STAIN) >= 0.01 * s.size)


def prepare_checked(img: Image.Image, config: PreprocessConfig) -> tuple[np.ndarray, bool]:
    """:func:`prepare`, plus whether the (cropped) image holds any stain at all (:func:`has_stain`)."""
    if config.crop:
        img = crop_on_wbc(img, config.crop)
    stain = has_stain(np.asarray(img))
    return _finish(img, config), stain


def prepare(img: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """PIL RGB image -> preprocessed ``img_size x img_size x 3`` uint8 array."""
    if config.crop:
        img = crop_on_wbc(img, config.crop)
    return _finish(img, config)


def _finish(img: Image.Image, config: PreprocessConfig) -> np.ndarray:
    if config.photometric:
        img = Image.fromarray(apply_photometric(np.asarray(img, dtype=np.uint8), config))
    return resize_square(img, config.img_size)
