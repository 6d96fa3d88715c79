"""Batched data augmentation and normalisation on uint8 image tensors.

Working on whole batches (one affine ``grid_sample``, vectorised colour jitter) keeps
augmentation cheap next to the model on a 2-core CPU. Blood cells have no preferred
orientation, so flips and 90-degree rotations are exact label-preserving symmetries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 20.0  # degrees, uniform in [-rotation, rotation] on top of rot90
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05  # fraction of the side
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    channel_gain: float = 0.05  # per-channel gain, a cheap stand-in for stain variation


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1], channels_last memory."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random dihedral transform, small affine and colour jitter on a (B, 3, H, W) batch in [0, 1]."""
    b = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    # dihedral group: rot90 k times then optional flip, composed into the affine matrix
    k = torch.randint(0, 4, (b,), generator=generator).float()
    flip = (u(b) < 0.5).float() * 2 - 1
    angle = k * (math.pi / 2) + (u(b) * 2 - 1) * math.radians(cfg.rotation)
    scale = cfg.scale[0] + u(b) * (cfg.scale[1] - cfg.scale[0])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = (u(b, 2) * 2 - 1) * cfg.translate * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # colour: brightness, contrast, saturation, per-channel gain
    bright = 1 + (u(b, 1, 1, 1) * 2 - 1) * cfg.brightness
    x = x * bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + (u(b, 1, 1, 1) * 2 - 1) * cfg.contrast) + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * (1 + (u(b, 1, 1, 1) * 2 - 1) * cfg.saturation) + gray
    x = x * (1 + (u(b, 3, 1, 1) * 2 - 1) * cfg.channel_gain)
    return x.clamp_(0, 1).contiguous(memory_format=torch.channels_last)
