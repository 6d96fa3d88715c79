"""The bundled model and the batched predictor."""

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES
from wbc.classes import PBC_CLASSES
from wbc.errors import BadImageError, WbcError
from wbc.inference import Predictor, load_predictor
from wbc.modelio import default_model_path, load_model, read_info
from wbc.preprocessing import crop_on_wbc, wbc_centre

FILES = sorted(SAMPLES.glob("*.jp*g"))


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def test_bundled_model_is_small_and_self_describing():
    path = default_model_path()
    assert path.stat().st_size <= 20 * 2**20
    info = read_info(path)
    assert info.classes == list(PBC_CLASSES)
    assert info.temperature > 0 and info.training["command"]
    for member in info.training["members"]:  # an ensemble (docs/decisions/0015): each member's provenance
        assert member["command"] and "best_val_accuracy" in member


def test_paths_and_images_agree(predictor):
    from_paths = dict(predictor.predict_paths(FILES))
    from_images = predictor.predict_images([Image.open(f) for f in FILES])
    for f, p in zip(FILES, from_images):
        np.testing.assert_allclose(from_paths[f], p, atol=1e-5)
        assert p.sum() == pytest.approx(1, abs=1e-4)


def test_bf16_and_fp32_agree_on_real_images():
    a = Predictor(precision="bf16").predict_images([Image.open(f) for f in FILES])
    b = Predictor(precision="fp32").predict_images([Image.open(f) for f in FILES])
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() < 0.05


def test_streaming_reports_bad_files_and_keeps_going(predictor, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    errors: list[BadImageError] = []
    out = list(predictor.predict_paths([FILES[0], bad, FILES[1]] * 50, bad=errors))  # > 2 batches: worker path
    assert len(out) == 100 and len(errors) == 50 and errors[0].path == bad


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(WbcError, match="model not found"):
        load_predictor(tmp_path / "nope.safetensors")
    (tmp_path / "run").mkdir()
    with pytest.raises(WbcError, match="no model file in this folder"):
        load_model(tmp_path / "run")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(WbcError, match="not a readable wbc model file"):
        load_model(tmp_path / "junk.safetensors")


def test_wbc_centre_finds_an_off_centre_cell():
    cell = np.asarray(Image.open(next(SAMPLES.glob("pbc_lymphocyte*"))).convert("RGB"))
    field = np.full((700, 900, 3), (230, 200, 190), np.uint8)  # pinkish background
    field[300:603, 450:750] = cell[:303, :300]
    r, c = wbc_centre(field)
    assert 300 < r < 600 and 450 < c < 750
    crop = crop_on_wbc(Image.fromarray(field), 0.5)
    assert crop.size == (350, 350)
    left, top = (c - 175, r - 175)
    np.testing.assert_array_equal(np.asarray(crop), field[top:top + 350, left:left + 350])


def test_onnxruntime_backend_matches_torch(tmp_path):
    from wbc.export import export_model
    onnx_file = export_model(None, tmp_path / "m.onnx", "onnx")
    images = [Image.open(f) for f in FILES]
    ref = Predictor(precision="fp32").predict_images(images)
    ort = load_predictor(onnx_file).predict_images(images)
    assert (ref.argmax(1) == ort.argmax(1)).all()
    assert np.abs(ref - ort).max() < 1e-3  # same fp32 network, different kernels


def test_batchnorm_folding_keeps_outputs():
    import numpy as np
    import torch
    from wbc.inference import fuse_batchnorm
    from wbc.modelio import load_model
    net, _ = load_model(None)
    x = torch.rand(4, 3, 160, 160)
    with torch.inference_mode():
        before = net(x)
        n = fuse_batchnorm(net)
        after = net(x)
    assert n >= 50 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-4)


def test_auto_backend_runs_the_bundled_int8_twin_and_agrees_with_torch():
    import numpy as np
    from conftest import SAMPLES
    from wbc.inference import Backend, load_predictor
    from wbc.modelio import default_int8_path, default_model_path, read_info
    assert default_int8_path().is_file()
    fast, ref = load_predictor(None), load_predictor(None, backend="torch", precision="fp32")
    assert fast.backend is Backend.ONNXRUNTIME and ref.backend is Backend.TORCH
    assert fast.info.review_threshold == read_info(default_model_path()).review_threshold
    paths = sorted(SAMPLES.glob("*.jp*g"))
    p_fast = np.stack([p for _, p in fast.predict_paths(paths)])
    p_ref = np.stack([p for _, p in ref.predict_paths(paths)])
    assert (p_fast.argmax(1) == p_ref.argmax(1)).mean() >= 11 / 12  # int8: same top-1 on the samples
    assert np.abs(p_fast - p_ref).max() < 0.15


def test_int8_export_needs_calibration_images(tmp_path, capsys):
    from wbc.cli import main
    code = main(["export", "--format", "onnx-int8", "--out", str(tmp_path / "m.onnx")])
    assert code == 2 and "--calibration" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
