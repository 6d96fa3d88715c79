import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import tiny_class_tree
from wbc.calibration import calibrate_model, coverage_at, fit_temperature, review_threshold_for
from wbc.modelio import default_model_path, read_info


@pytest.mark.parametrize("conf, correct, target, expected", [
    ([0.99, 0.9, 0.8, 0.6], [1, 1, 0, 1], 0.9, 0.9),       # keeping 0.8 would drop accuracy to 2/3
    ([0.99, 0.9, 0.8, 0.6], [1, 1, 0, 1], 0.75, 0.6),      # 3/4 correct overall: keep everything
    ([0.99, 0.9], [0, 0], 0.5, 1.0),                       # never accurate enough: review everything
    ([0.7, 0.7, 0.7], [1, 1, 1], 1.0, 0.7),                # ties kept together
])
def test_review_threshold_cases(conf, correct, target, expected):
    assert review_threshold_for(np.array(conf), np.array(correct), target) == pytest.approx(expected)


@pytest.mark.parametrize("conf, correct, target", [([], [], 0.9), ([0.5], [1, 0], 0.9), ([0.5], [1], 0.0)])
def test_review_threshold_rejects_bad_input(conf, correct, target):
    with pytest.raises(ValueError):
        review_threshold_for(np.array(conf), np.array(correct), target)


def test_coverage_at_counts_review_and_accuracy():
    c = coverage_at(np.array([0.95, 0.9, 0.5, 0.4]), np.array([1, 1, 0, 1]), 0.6)
    assert c["review_share"] == 0.5 and c["accuracy_kept"] == 1.0 and c["accuracy_reviewed"] == 0.5


def test_temperature_softens_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    logits = torch.randn(300, 3, generator=g) * 8  # confident and random: needs T >> 1
    assert fit_temperature(logits, labels) > 3


def test_calibrate_writes_threshold_and_keeps_weights(tmp_path):
    data = tiny_class_tree(tmp_path / "val", per_class=5)
    out = tmp_path / "calibrated.safetensors"
    s = calibrate_model(None, [str(data)], out, split=None, target_accuracy=0.9, progress=False)
    info = read_info(out)
    assert info.review_threshold == pytest.approx(s["threshold"]) and 0 < s["threshold"] <= 1
    assert info.temperature == pytest.approx(s["temperature"]) and info.training["calibration"]["n"] == 15
    assert s["accuracy_kept"] is None or s["accuracy_kept"] >= 0.9
    with safe_open(str(out), "pt") as a, safe_open(str(default_model_path()), "pt") as b:
        k = next(iter(a.keys()))
        assert torch.equal(a.get_tensor(k), b.get_tensor(k))  # weights (fp16) unchanged


def test_bundled_model_ships_a_review_threshold():
    info = read_info(default_model_path())
    assert info.review_threshold is not None and 0.5 < info.review_threshold < 1
    cal = info.training["calibration"]
    assert json.dumps(cal) and cal["accuracy_kept"] >= cal["target_accuracy"]


def test_calibration_is_copied_from_a_validated_twin(tmp_path, capsys):
    """wbc calibrate --from-model: a --refit model takes over its twin's temperature and thresholds."""
    from wbc.cli import main
    from wbc.modelio import load_model, save_model
    data = tiny_class_tree(tmp_path / "val", per_class=5)
    other = tmp_path / "other.safetensors"  # the same network, calibrated differently
    calibrate_model(None, [str(data)], other, split=None, target_accuracy=0.5, progress=False)
    assert read_info(other).temperature != read_info(default_model_path()).temperature
    out = tmp_path / "copied.safetensors"
    assert main(["-q", "calibrate", "--model", str(other), "--from-model", str(default_model_path()),
                 "--out", str(out)]) == 0
    assert "copied from" in capsys.readouterr().out
    src, new = read_info(default_model_path()), read_info(out)
    assert (new.temperature, new.review_threshold, new.unknown_threshold) == (
        src.temperature, src.review_threshold, src.unknown_threshold)
    assert new.training["calibration"]["copied_from"] == str(default_model_path())
    assert new.training["calibration"]["accuracy_kept"] == src.training["calibration"]["accuracy_kept"]
    # a twin with other preprocessing is refused in one line; so is --data together with --from-model
    net, info = load_model(other)
    info.preprocess = dataclasses.replace(info.preprocess, img_size=info.preprocess.img_size + 32)
    save_model(tmp_path / "bigger.safetensors", net, info)
    assert main(["-q", "calibrate", "--model", str(other), "--from-model", str(tmp_path / "bigger.safetensors"),
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "preprocessing differs" in capsys.readouterr().err
    assert main(["-q", "calibrate", "--model", str(other), "--from-model", str(default_model_path()),
                 "--data", str(data), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
