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


def apply_photometric(rgb: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Denoise, enhance contrast and normalise stain, as configured (identity by default)."""
    if not config.photometric:
        return rgb
    from . import enhancement  # OpenCV-based steps, imported only when used

    return enhancement.apply(rgb, denoise=config.denoise, contrast=config.contrast,
                             stain_norm=config.stain_norm, options=config.options)


def prepare(img: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """PIL RGB image -> preprocessed ``img_size x img_size x 3`` uint8 array."""
    rgb = np.asarray(img, dtype=np.uint8)
    if config.photometric:
        rgb = apply_photometric(rgb, config)
        img = Image.fromarray(rgb)
    return resize_square(img, config.img_size)
