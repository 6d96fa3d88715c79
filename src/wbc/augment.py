"""Batched data augmentation and normalisation on uint8 image tensors.

Working on whole batches (one affine ``grid_sample``, vectorised colour jitter) keeps
augmentation cheap next to the model on a 2-core CPU. Blood cells have no preferred
orientation, so flips and 90-degree rotations are exact label-preserving symmetries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    hed: float = 0.0  # stain jitter in haematoxylin-eosin-DAB space (Tellez et al. 2018), e.g. 0.05
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.5-1.5 px): focus differences
    free_rotation: bool = False  # any angle instead of rot90 + small angle
    hue: float = 0.0  # radians, uniform in [-hue, hue]: rotation of the chroma plane (YIQ), stain hue differences
    gamma: tuple[float, float] = (1.0, 1.0)  # exponent range: lamp / camera response differences
    downscale: float = 0.0  # probability of losing resolution (down to 35-80 % of the side and back up)
    noise: float = 0.0  # maximum standard deviation of additive Gaussian sensor noise (in [0, 1] units)
    jpeg: float = 0.0  # probability of JPEG re-compression at quality 30-90: another lab's camera and storage


#: Named recipes for ``wbc train --augment`` (measured against each other in docs/decisions/0011-domain-robustness.md).
PRESETS: dict[str, AugmentConfig] = {
    "standard": AugmentConfig(),
    "stain": AugmentConfig(scale=(0.8, 1.25), translate=0.08, brightness=0.25, contrast=0.25, saturation=0.25,
                           channel_gain=0.05, hed=0.05, blur=0.3, free_rotation=True),
    # another lab's microscope: stain hue and strength, lamp colour and gamma, focus, camera resolution and noise
    "robust": AugmentConfig(scale=(0.8, 1.25), translate=0.08, brightness=0.3, contrast=0.3, saturation=0.4,
                            channel_gain=0.1, hed=0.08, blur=0.3, free_rotation=True, hue=0.15, gamma=(0.7, 1.4),
                            downscale=0.5, noise=0.03),
}
#: ``robust`` plus JPEG re-compression (measured as a recipe of scripts/robust_sweep.py, docs/decisions/0014)
PRESETS["robust-jpeg"] = AugmentConfig(**{**PRESETS["robust"].__dict__, "jpeg": 0.5})

# Ruifrok & Johnston (2001) stain vectors, as in skimage.color.hed_from_rgb
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Scale and shift each stain's optical density by ``1 +/- sigma`` and ``+/- sigma`` per image."""
    b = x.shape[0]
    od = -torch.log(x.clamp(min=1e-3))  # (B, 3, H, W)
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB)
    alpha = 1 + (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * sigma
    od = torch.einsum("bdhw,dc->bchw", hed * alpha + beta, _RGB_FROM_HED)
    return torch.exp(-od).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Blur a random share ``p`` of the batch with sigma uniform in [0.5, 1.5] px."""
    pick = torch.rand(x.shape[0], generator=generator) < p
    if not bool(pick.any()):
        return x
    sigma = 0.5 + torch.rand(1, generator=generator).item()
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    sub = x[pick]
    c = sub.shape[1]
    sub = F.conv2d(F.pad(sub, (3, 3, 0, 0), mode="reflect"), k.view(1, 1, 1, 7).repeat(c, 1, 1, 1), groups=c)
    sub = F.conv2d(F.pad(sub, (0, 0, 3, 3), mode="reflect"), k.view(1, 1, 7, 1).repeat(c, 1, 1, 1), groups=c)
    x = x.clone()
    x[pick] = sub
    return x


_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def hue_rotate(x: torch.Tensor, max_angle: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image's chroma (the I/Q plane of YIQ) by an angle uniform in ``[-max_angle, max_angle]``."""
    b = x.shape[0]
    a = (torch.rand(b, generator=generator) * 2 - 1) * max_angle
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = a.cos(), -a.sin(), a.sin(), a.cos()
    m = _RGB_FROM_YIQ @ rot @ _YIQ_FROM_RGB  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x).clamp_(0, 1)


def downscale(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Resample a random share ``p`` of the batch down to 35-80 % of its side and back: a coarser camera."""
    pick = torch.rand(x.shape[0], generator=generator) < p
    if not bool(pick.any()):
        return x
    f = 0.35 + 0.45 * torch.rand(1, generator=generator).item()
    size = x.shape[-1]
    sub = F.interpolate(x[pick], size=max(8, int(round(size * f))), mode="bilinear", antialias=True,
                        align_corners=False)
    x = x.clone()
    x[pick] = F.interpolate(sub, size=size, mode="bilinear", align_corners=False)
    return x


def jpeg_recompress(x: torch.Tensor, p: float, generator: torch.Generator,
                    quality: tuple[int, int] = (30, 90)) -> torch.Tensor:
    """Re-encode a random share ``p`` of the batch as JPEG at a quality drawn from ``quality``: the block and
    ringing artefacts of another lab's camera and image storage (the Kaggle crops are JPEGs of JPEGs)."""
    import cv2

    pick = torch.rand(x.shape[0], generator=generator) < p
    q = torch.randint(quality[0], quality[1] + 1, (x.shape[0],), generator=generator)
    if not bool(pick.any()):
        return x
    x = x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        rgb = (x[i].permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(q[i])])
        back = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        x[i] = torch.from_numpy(np.ascontiguousarray(back)).permute(2, 0, 1).to(x.dtype) / 255
    return x


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1], channels_last memory."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def _input_affine(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """``(x / 255 - mean) / std`` as ``x * a + b``: the per-channel ``a`` and ``b``, shape (3,)."""
    std = np.asarray(std, np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-np.asarray(mean, np.float64) / std).astype(np.float32)


def model_input(batch_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """``normalise(to_float(batch_u8))`` in one conversion and two in-place passes (the torch hot path).

    (B, H, W, 3) uint8 -> (B, 3, H, W) float in channels_last memory.
    """
    a, b = (torch.from_numpy(v).view(1, 3, 1, 1) for v in _input_affine(mean, std))
    x = batch_u8.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).float()
    return x.mul_(a).add_(b)


def onnx_input(batch_u8: np.ndarray, mean, std) -> np.ndarray:
    """The same input as :func:`model_input`, as a plain NCHW float32 array for ONNX Runtime, in NumPy.

    No torch op runs here on purpose: after a parallel torch op its OpenMP workers keep spinning and take
    a core from ONNX Runtime's own threads (docs/benchmarks.md, "What feeds ONNX Runtime"; docs/decisions/0009).
    """
    a, b = _input_affine(mean, std)
    x = np.ascontiguousarray(np.asarray(batch_u8).transpose(0, 3, 1, 2)).astype(np.float32)
    x *= a.reshape(1, 3, 1, 1)
    x += b.reshape(1, 3, 1, 1)
    return x


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random dihedral transform, small affine and colour jitter on a (B, 3, H, W) batch in [0, 1]."""
    b = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    # dihedral group: rot90 k times then optional flip, composed into the affine matrix
    k = torch.randint(0, 4, (b,), generator=generator).float()
    flip = (u(b) < 0.5).float() * 2 - 1
    angle = (u(b) * 2 * math.pi if cfg.free_rotation
             else k * (math.pi / 2) + (u(b) * 2 - 1) * math.radians(cfg.rotation))
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
    x = x.clamp_(0, 1)
    if cfg.hed:
        x = hed_jitter(x, cfg.hed, generator)
    if cfg.hue:
        x = hue_rotate(x, cfg.hue, generator)
    if cfg.gamma != (1.0, 1.0):
        g = cfg.gamma[0] + u(b, 1, 1, 1) * (cfg.gamma[1] - cfg.gamma[0])
        x = x.clamp(min=1e-4) ** g
    if cfg.blur:
        x = gaussian_blur(x, cfg.blur, generator)
    if cfg.downscale:
        x = downscale(x, cfg.downscale, generator)
    if cfg.noise:
        x = (x + torch.randn(x.shape, generator=generator) * (u(b, 1, 1, 1) * cfg.noise)).clamp_(0, 1)
    if cfg.jpeg:
        x = jpeg_recompress(x, cfg.jpeg, generator)
    return x.contiguous(memory_format=torch.channels_last)


def style_stages(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The early stages after which :func:`mixstyle` mixes feature statistics: the blocks at 1/6, 1/3 and
    1/2 of a ``features``/``blocks`` stack (MobileNet, EfficientNet, VGG, the papers' CNNs), or ResNet's
    ``layer1``-``layer3``; style lives in the early layers' statistics (Zhou et al., ICLR 2021)."""
    if all(hasattr(net, f"layer{i}") for i in (1, 2, 3)):
        return [net.layer1, net.layer2, net.layer3]
    stack = getattr(net, "features", None) or getattr(net, "blocks", None)
    if isinstance(stack, torch.nn.Sequential) and len(stack) >= 3:
        n = len(stack)
        return [stack[i] for i in sorted({max(0, n // 6 - 1), max(1, n // 3 - 1), max(2, n // 2 - 1)})]
    raise ValueError(f"MixStyle does not know the stages of {type(net).__name__}")


def mixstyle(net: torch.nn.Module, p: float, generator: torch.Generator, alpha: float = 0.1,
             eps: float = 1e-6) -> list[torch.utils.hooks.RemovableHandle]:
    """MixStyle (Zhou et al., ICLR 2021): in training only, with probability ``p`` per stage and batch, give
    each image's feature maps (after :func:`style_stages`) the channel mean and std mixed ``Beta(alpha,
    alpha)`` with those of another image of the batch. A feature-level style augmentation: the network,
    its weights and inference are unchanged (forward hooks; remove them with ``h.remove()``).
    """
    def hook(module, _inputs, out):
        if not module.training or out.shape[0] < 2 or torch.rand(1, generator=generator).item() >= p:
            return None
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        x = out.float()
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
        b = x.shape[0]
        lam = torch.from_numpy(rng.beta(alpha, alpha, (b, 1, 1, 1)).astype(np.float32))
        perm = torch.from_numpy(rng.permutation(b))
        mixed = (x - mu) / sig * (lam * sig + (1 - lam) * sig[perm]) + (lam * mu + (1 - lam) * mu[perm])
        return mixed.to(out.dtype)

    return [stage.register_forward_hook(hook) for stage in style_stages(net)]
