"""`wbc ensemble`: one model file that averages the logits of several trained networks."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLES
from wbc.cli import main
from wbc.errors import WbcError
from wbc.inference import Predictor
from wbc.modelio import ModelInfo, combine_models, default_model_path, load_model, read_info, save_model
from wbc.models.ensemble import Ensemble
from wbc.models.registry import get_spec
from wbc.preprocessing import PreprocessConfig

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def _model(path, seed, classes=CLASSES, img_size=100):
    torch.manual_seed(seed)
    net = get_spec("asghar-cnn").build(num_classes=len(classes), pretrained=False)
    save_model(path, net, ModelInfo(arch="asghar-cnn", classes=list(classes), preprocess=PreprocessConfig(img_size=img_size),
                                    training={"seed": seed}))
    return path


def _samples():
    return [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))[:6]]


def test_ensemble_is_the_mean_of_its_members_logits(tmp_path):
    a, b = _model(tmp_path / "a.safetensors", 1), _model(tmp_path / "b.safetensors", 2)
    out = combine_models([a, b], tmp_path / "ens.safetensors")
    info = read_info(out)
    assert info.arch == "ensemble" and info.members == ["asghar-cnn", "asghar-cnn"] and info.classes == CLASSES
    assert [m["seed"] for m in info.training["members"]] == [1, 2]
    images = _samples()
    la, lb = (Predictor(p, precision="fp32").logits_images(images) for p in (a, b))
    le = Predictor(out, precision="fp32").logits_images(images)
    assert not np.allclose(la, lb)
    np.testing.assert_allclose(le, (la + lb) / 2, rtol=1e-4, atol=1e-4)
    # an ensemble of an ensemble and a model is one flat ensemble of three
    three = combine_models([out, _model(tmp_path / "c.safetensors", 3)], tmp_path / "three.safetensors")
    net, info3 = load_model(three)
    assert isinstance(net, Ensemble) and len(net.members) == 3 and info3.members == ["asghar-cnn"] * 3


def test_ensemble_runs_through_onnxruntime(tmp_path):
    from wbc.export import export_model
    ens = combine_models([_model(tmp_path / "a.safetensors", 1), _model(tmp_path / "b.safetensors", 2)],
                         tmp_path / "ens.safetensors")
    onnx_file = export_model(ens, tmp_path / "ens.onnx", "onnx")
    images = _samples()
    torch_logits = Predictor(ens, precision="fp32").logits_images(images)
    ort_logits = Predictor(onnx_file, backend="onnxruntime").logits_images(images)
    np.testing.assert_allclose(ort_logits, torch_logits, rtol=1e-3, atol=1e-3)


def test_members_must_agree_on_classes_and_preprocessing(tmp_path):
    a = _model(tmp_path / "a.safetensors", 1)
    with pytest.raises(WbcError, match="classes"):
        combine_models([a, _model(tmp_path / "b.safetensors", 2, classes=CLASSES[:3])], tmp_path / "x.safetensors")
    with pytest.raises(WbcError, match="preprocessing"):
        combine_models([a, _model(tmp_path / "c.safetensors", 2, img_size=120)], tmp_path / "x.safetensors")
    with pytest.raises(WbcError, match="at least two"):
        combine_models([a], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_ensemble(tmp_path, capsys):
    a, b = _model(tmp_path / "a.safetensors", 1), _model(tmp_path / "b.safetensors", 2)
    assert main(["ensemble", str(a), str(b), "--half", "--out", str(tmp_path / "e.safetensors")]) == 0
    assert "wbc calibrate" in capsys.readouterr().out
    assert read_info(tmp_path / "e.safetensors").members == ["asghar-cnn", "asghar-cnn"]
    assert main(["ensemble", str(a), str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "f.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and "Traceback" not in err


def test_bundled_model_is_a_calibrated_ensemble():
    info = read_info(default_model_path())
    assert info.arch == "ensemble" and len(info.members) == 2
    assert info.temperature != 1.0 and info.review_threshold is not None and info.unknown_threshold is not None


def test_wbc_ensemble_rejects_bad_inputs_in_one_line(tmp_path, capsys):
    a, b = _model(tmp_path / "a.safetensors", 1), _model(tmp_path / "b.safetensors", 2)
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    cases = {"twice": [str(a), str(a), "--out", str(tmp_path / "e.safetensors")],
             ".safetensors models": [str(a), str(tmp_path / "m.onnx"), "--out", str(tmp_path / "e.safetensors")],
             "ending in .safetensors": [str(a), str(b), "--out", str(tmp_path / "e.onnx")]}
    for expected, argv in cases.items():
        assert main(["ensemble", *argv]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and err.count("\n") == 1, err
    assert main(["ensemble", str(a), str(b), "--out", str(tmp_path)]) == 2  # a folder is not a model file
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "e.onnx").exists()
    # a missing output folder is created
    assert main(["ensemble", str(a), str(b), "--out", str(tmp_path / "new" / "e.safetensors")]) == 0


def test_batchnorm_ensemble_through_the_predictor_and_adaptation_helpers(tmp_path):
    # MobileNetV2 members (BatchNorm): folded BatchNorm in the predictor and the adaptation helpers
    # must see the ensemble's mean logits, not one member's
    from wbc.adapt import _mean_logits, _members
    from wbc.augment import normalise, to_float
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = get_spec("mobilenet_v2").build(num_classes=4, pretrained=False).eval()
        for m in net.modules():  # non-trivial running statistics, different per member
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        p = tmp_path / f"m{seed}.safetensors"
        save_model(p, net, ModelInfo(arch="mobilenet_v2", classes=CLASSES, preprocess=PreprocessConfig(img_size=64)))
        paths.append(p)
    ens = combine_models(paths, tmp_path / "ens.safetensors")
    images = _samples()
    la, lb = (Predictor(p, precision="fp32").logits_images(images) for p in paths)
    np.testing.assert_allclose(Predictor(ens, precision="fp32").logits_images(images), (la + lb) / 2,
                               rtol=1e-3, atol=1e-3)
    net, info = load_model(ens)
    from wbc.preprocessing import prepare
    x = normalise(to_float(torch.from_numpy(np.stack([prepare(im, info.preprocess) for im in images]))),
                  info.preprocess.mean, info.preprocess.std)
    with torch.no_grad():
        direct = net(x)
    np.testing.assert_allclose(_mean_logits(_members(net), x, precision="fp32").numpy(), direct.numpy(),
                               rtol=1e-3, atol=1e-3)
