"""Photometric preprocessing: every step changes the image the way it should, on real crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wbc import enhancement as E
from wbc.errors import WbcError

from conftest import KAGGLE, PBC, need_shared


def _real(kind: str = "pbc") -> np.ndarray:
    need_shared()
    if kind in ("pbc", "pbc-ig"):
        path = sorted((PBC / ("ig" if kind == "pbc-ig" else "neutrophil")).glob("*.jpg"))[3]
    else:
        path = sorted((KAGGLE / "TEST" / "NEUTROPHIL").glob("*.jpeg"))[3]
    return np.asarray(Image.open(path).convert("RGB"))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0]


def _noisy(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 12, rgb.shape)
    return np.clip(rgb.astype(float) + noise, 0, 255).astype(np.uint8)


def test_registries_cover_every_name():
    assert set(E.DENOISERS) == set(E.Denoise)
    assert set(E.CONTRAST) == set(E.Contrast)
    assert set(E.STAIN_NORMALISERS) == set(E.StainNorm)


def test_no_step_is_identity():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(E.apply(rgb), rgb)


@pytest.mark.parametrize("name", [d.value for d in E.Denoise])
def test_denoisers_reduce_added_noise(name):
    clean = _real("kaggle")[60:180, 100:260].copy()
    noisy = _noisy(clean)
    out = E.apply(noisy, denoise=name)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    err_before = np.abs(noisy.astype(int) - clean).mean()
    err_after = np.abs(out.astype(int) - clean).mean()
    assert err_after < 0.8 * err_before, (name, err_before, err_after)


@pytest.mark.parametrize("name", [c.value for c in E.Contrast])
def test_contrast_spreads_luminance(name):
    rgb = _real("pbc")
    lum_before, lum_after = _luminance(rgb), _luminance(E.apply(rgb, contrast=name))
    assert lum_after.std() > 1.1 * lum_before.std()
    assert np.ptp(np.percentile(lum_after, [1, 99])) > np.ptp(np.percentile(lum_before, [1, 99]))


def test_histeq_flattens_the_histogram():
    lum = _luminance(E.apply(_real("pbc"), contrast="histeq"))
    # after equalisation the 10th..90th percentiles span ~80 % of the range
    assert np.percentile(lum, 90) - np.percentile(lum, 10) > 0.6 * 255


def _lab_mean(x: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.cvtColor(x, cv2.COLOR_RGB2LAB).reshape(-1, 3)[x.reshape(-1, 3).max(1) > 25].mean(0)


def test_reinhard_moves_colour_to_reference():
    ref = np.asarray(Image.open(E.default_reference_path()).convert("RGB"))
    src = _real("kaggle")
    out = E.apply(src, stain_norm="reinhard")
    before = np.linalg.norm(_lab_mean(src) - _lab_mean(ref))
    after = np.linalg.norm(_lab_mean(out) - _lab_mean(ref))
    assert after < 0.3 * before, (before, after)
    assert (out[src.max(axis=2) <= 25] == src[src.max(axis=2) <= 25]).all()  # augmentation fill stays black


def test_reinhard_matches_the_reference_lab_statistics_exactly_enough():
    """The lookup-table implementation is the textbook transfer: the output's Lab mean/std are the reference's."""
    import cv2
    ref = np.asarray(Image.open(E.default_reference_path()).convert("RGB"))
    for kind in ("kaggle", "pbc"):
        src = _real(kind)
        out = E.apply(src, stain_norm="reinhard")
        lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[src.max(axis=2) > 25].astype(float)  # black fill excluded
        ref_lab = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
        assert np.abs(lab.mean(0) - ref_lab.mean(0)).max() < 4, kind
        assert np.abs(lab.std(0) / ref_lab.std(0) - 1).max() < 0.15, kind


def test_background_white_balance_makes_plasma_the_reference_colour():
    ref_bg = E.background_rgb(np.asarray(Image.open(E.default_reference_path()).convert("RGB")))
    src = _real("kaggle")  # grey-blue BCCD plasma; the reference's is peach
    out = E.apply(src, stain_norm="background")
    assert np.abs(E.background_rgb(src) - ref_bg).max() > 15
    assert np.abs(E.background_rgb(out) - ref_bg).max() <= 3
    assert (out[src.max(axis=2) <= 25] == src[src.max(axis=2) <= 25]).all()  # augmentation fill stays black
    # a per-channel gain: dark nuclei stay dark, the order of grey levels within a channel is kept
    fg = src.max(axis=2) > 25
    for c in range(3):
        order = np.argsort(src[..., c][fg], kind="stable")
        assert (np.diff(out[..., c][fg][order].astype(int)) >= 0).all()


@pytest.mark.parametrize("kind", ["kaggle", "pbc-ig"])  # a bluer PBC crop than the reference
def test_macenko_maps_stain_vectors_onto_the_reference(kind):
    ref = np.asarray(Image.open(E.default_reference_path()).convert("RGB"))
    ref_stains = E.macenko_stains(ref)[0]
    src = _real(kind)
    out = E.apply(src, stain_norm="macenko")

    def angles(stains):
        return np.degrees(np.arccos(np.clip((stains * ref_stains).sum(0), -1, 1)))

    before, after = angles(E.macenko_stains(src)[0]), angles(E.macenko_stains(out)[0])
    assert after.sum() < 0.5 * before.sum(), (before, after)


def test_stain_reference_option(tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((32, 32, 3), (200, 120, 200), np.uint8)).save(ref)
    out = E.apply(_real("pbc"), stain_norm="reinhard", options={"stain_reference": str(ref)})
    assert abs(out[..., 1].mean() - 120) < 15


def test_macenko_blank_image_is_left_unchanged():
    blank = np.full((20, 20, 3), 240, np.uint8)
    assert np.array_equal(E.apply(blank, stain_norm="macenko"), blank)


@pytest.mark.parametrize("kwargs, message", [
    ({"denoise": "wavelet"}, "unknown denoiser"),
    ({"contrast": "gamma"}, "unknown contrast"),
    ({"stain_norm": "vahadane"}, "unknown stain"),
    ({"options": {"clahe_clipp": 2}}, "unknown preprocessing option"),
    ({"stain_norm": "reinhard", "options": {"stain_reference": "/nonexistent.png"}}, "stain reference"),
])
def test_bad_names_raise_wbc_error(kwargs, message):
    with pytest.raises(WbcError, match=message):
        E.apply(np.zeros((8, 8, 3), np.uint8) + 128, **kwargs)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32)])
def test_bad_arrays_raise_value_error(bad):
    with pytest.raises(ValueError):
        E.apply(bad, denoise="median")


def test_preprocess_files_writes_images_and_contact_sheet(tmp_path):
    need_shared()
    import shutil
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((PBC / "lymphocyte").glob("*.jpg"))[:3]:
        shutil.copy(f, src / f.name)
    (src / "broken.jpg").write_bytes(b"not an image")
    from wbc.preprocessing import PreprocessConfig
    out = E.preprocess_files([src], tmp_path / "out", PreprocessConfig(denoise="median", contrast="clahe"))
    assert len(out) == 3 and all(p.suffix == ".png" and p.is_file() for p in out)
    sheet = Image.open(tmp_path / "out" / "contact_sheet.png")
    assert sheet.width > sheet.height / 3  # two thumbnails side by side per row
    processed = np.asarray(Image.open(out[0]))
    original = np.asarray(Image.open(sorted(src.glob("*.jpg"))[0]).convert("RGB"))
    assert processed.shape == original.shape and not np.array_equal(processed, original)
