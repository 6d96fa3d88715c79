import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLES
from wbc.augment import (PRESETS, AugmentConfig, augment, downscale, gaussian_blur, hed_jitter, hue_rotate,
                         jpeg_recompress)


def _cells() -> torch.Tensor:
    imgs = [np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in sorted(SAMPLES.glob("pbc_*.jpg"))[:4]]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def test_hed_jitter_zero_is_identity_and_sigma_changes_stain():
    x = _cells()
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(hed_jitter(x, 0.0, g), x.clamp(min=1e-3), atol=1e-4)
    y = hed_jitter(x, 0.1, g)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert 0.005 < (y - x).abs().mean() < 0.2  # a stain change, not noise


def _sharpness(t: torch.Tensor) -> float:
    """Mean absolute horizontal gradient: how much fine detail an image batch holds."""
    return float((t[..., 1:] - t[..., :-1]).abs().mean())


def test_blur_smooths_only_picked_images():
    x = _cells()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(gaussian_blur(x, 0.0, g), x)
    y = gaussian_blur(x, 1.0, g)
    assert _sharpness(y) < 0.8 * _sharpness(x)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_shape_range_and_are_seeded(name):
    x = _cells()
    a = augment(x, PRESETS[name], torch.Generator().manual_seed(1))
    b = augment(x, PRESETS[name], torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1


def test_free_rotation_uses_any_angle():
    x = _cells()
    cfg = AugmentConfig(free_rotation=True, scale=(1, 1), translate=0, brightness=0, contrast=0, saturation=0,
                        channel_gain=0)
    outs = [augment(x[:1], cfg, torch.Generator().manual_seed(s)) for s in range(6)]
    assert len({round(float(o.sum()), 2) for o in outs}) == 6


def test_hue_rotation_keeps_luminance_and_turns_chroma():
    x = _cells()
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(hue_rotate(x, 0.0, g), x, atol=1e-5)
    y = hue_rotate(x, 0.5, g)
    lum = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    assert (lum(y) - lum(x)).abs().mean() < 0.01  # only clipping can move the luminance
    assert (y - x).abs().mean() > 0.01


def test_downscale_loses_fine_detail_but_keeps_the_picture():
    x = _cells()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(downscale(x, 0.0, g), x)
    y = downscale(x, 1.0, g)
    assert y.shape == x.shape and _sharpness(y) < 0.9 * _sharpness(x)
    assert (y.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max() < 0.02  # same colours, coarser camera


def test_robust_preset_varies_colour_more_than_standard():
    x = _cells()
    spread = {}
    for name in ("standard", "robust"):
        outs = torch.stack([augment(x, PRESETS[name], torch.Generator().manual_seed(s)).mean(dim=(2, 3))
                            for s in range(8)])  # (8 draws, B, 3) mean colours
        spread[name] = float(outs.std(dim=0).mean())
    assert spread["robust"] > 1.3 * spread["standard"], spread


def test_cli_augment_choices_are_the_presets():
    from wbc.cli import build_parser
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = next(a.choices for a in train._actions if "--augment" in a.option_strings)
    assert sorted(choices) == sorted(PRESETS)


def test_model_input_and_onnx_input_equal_normalise_of_to_float():
    """The hot paths' one-pass conversions give the training path's tensor: channels_last torch for the
    torch path, plain NCHW NumPy (no torch op) for ONNX Runtime."""
    from wbc.augment import model_input, normalise, onnx_input, to_float

    u8 = np.random.default_rng(3).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = normalise(to_float(torch.from_numpy(u8)), mean, std)
    x = model_input(torch.from_numpy(u8), mean, std)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    assert x.dtype == torch.float32 and x.shape == (5, 3, 24, 24)
    assert x.is_contiguous(memory_format=torch.channels_last)
    y = onnx_input(u8, mean, std)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(y, x.contiguous().numpy(), atol=1e-6, rtol=0)  # both paths feed a network the same numbers


def test_mixstyle_mixes_feature_statistics_in_training_only():
    """MixStyle hooks give each image the statistics mixed with another image's, in training mode only,
    keep each image's normalised content, are seeded, and come off without a trace."""
    from wbc.augment import mixstyle, style_stages
    from wbc.models.registry import get_spec

    net = get_spec("mobilenet_v2").build(num_classes=4, pretrained=False)
    stage = style_stages(net)[0]
    after = list(net.features)[list(net.features).index(stage) + 1]
    seen = []  # what the block after the first style stage receives
    after.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    x = torch.rand(6, 3, 64, 64)
    x[:3] *= 0.3  # two "styles": dark and bright images
    net.train()
    net(x)
    plain = seen.pop()
    handles = mixstyle(net, 1.0, torch.Generator().manual_seed(0))
    net(x)
    mixed = seen.pop()
    stats = lambda t: (t.mean(dim=(2, 3)), t.std(dim=(2, 3)))  # noqa: E731
    (mu0, sd0), (mu1, sd1) = stats(plain), stats(mixed)
    assert not torch.allclose(mu0, mu1, atol=1e-3)  # statistics changed ...
    z0 = (plain - mu0[..., None, None]) / sd0[..., None, None]
    z1 = (mixed - mu1[..., None, None]) / sd1[..., None, None]
    torch.testing.assert_close(z0, z1, atol=2e-3, rtol=0)  # ... the normalised content did not
    # seeded: the same generator seed mixes the same way
    for h in handles:
        h.remove()
    handles = mixstyle(net, 1.0, torch.Generator().manual_seed(0))
    net(x)
    torch.testing.assert_close(seen.pop(), mixed)
    net.eval()  # inference: no mixing
    net(x)
    eval_with = seen.pop()
    for h in handles:
        h.remove()
    net(x)
    torch.testing.assert_close(seen.pop(), eval_with)
    net.train()
    net(x)  # removed: training forward is plain again (BatchNorm in train mode: same batch, same output)
    torch.testing.assert_close(seen.pop(), plain)


def test_jpeg_recompression_adds_block_artefacts_to_picked_images_only():
    x = _cells()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert jpeg_recompress(x, 0.0, g()) is x
    y = jpeg_recompress(x, 1.0, g())
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    err = (y - x).abs().mean()
    assert 0.002 < err < 0.05  # artefacts, not a different picture
    assert torch.equal(y, jpeg_recompress(x, 1.0, g()))  # seeded
    worse = jpeg_recompress(x, 1.0, g(), quality=(10, 10))
    better = jpeg_recompress(x, 1.0, g(), quality=(95, 95))
    assert (better - x).abs().mean() < err < (worse - x).abs().mean()  # lower quality, larger error
    half = jpeg_recompress(x, 0.5, torch.Generator().manual_seed(0))
    changed = [(half[i] - x[i]).abs().max() > 0 for i in range(len(x))]
    assert 0 < sum(changed) < len(x) or len(x) < 2
    assert PRESETS["robust-jpeg"] == AugmentConfig(**{**PRESETS["robust"].__dict__, "jpeg": 0.5})
