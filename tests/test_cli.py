"""The command line end to end: the README's main job, models, compare, split, audit."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLES, tiny_class_tree
from wbc.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "wbc.cli", *args], capture_output=True, text=True, timeout=600)


def test_predict_bundled_samples_table():
    r = run("-q", "predict", str(SAMPLES))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["image", "type", "confidence"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 12
    correct = sum(Path(path).name.split("_")[1] == label for path, label, _ in rows)
    assert correct >= 10, rows  # held-out samples: the bundled model must get nearly all of them
    assert all(0 < float(conf) <= 1 for *_, conf in rows)


def test_predict_json_has_all_probabilities(capsys):
    assert main(["-q", "predict", "--format", "json", str(next(SAMPLES.glob("pbc_platelet*")))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["label"] == "platelet"
    assert len(out[0]["probabilities"]) == 8
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1, abs=1e-3)


def test_predict_csv_and_skip_bad(tmp_path, capsys):
    good = next(SAMPLES.glob("pbc_eosinophil*"))
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["-q", "predict", "--format", "csv", str(good), str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["-q", "predict", "--format", "csv", "--skip-bad", str(good), str(tmp_path / "bad.png")]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["label"] for r in rows] == ["eosinophil"]


def test_models_lists_every_model_with_parameters():
    r = run("models", "--classes", "4")
    assert r.returncode == 0, r.stderr
    assert "973,188" in r.stdout  # risodkar-cnn for 4 classes, as in the paper
    for name in ("asghar-cnn", "vgg16", "resnet50", "inception_v3", "mobilenet_v2", "efficientnet_lite0",
                 "mobilenet_v3_small"):
        assert name in r.stdout


@pytest.mark.slow
def test_compare_two_models(tmp_path):
    tree = tiny_class_tree(tmp_path / "d", per_class=8)
    (tmp_path / "m.csv").write_text("path,label,split\n" + "".join(
        f"{p},{p.parent.name},{'test' if i % 4 == 0 else 'train'}\n"
        for c in sorted(tree.iterdir()) for i, p in enumerate(sorted(c.iterdir()))))
    args = ["-q", "compare", "--data", str(tmp_path / "m.csv"), "--archs", "asghar-cnn,risodkar-cnn",
            "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.3", "--out", str(tmp_path / "cmp")]
    assert main(args) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| asghar-cnn |" in table and "| risodkar-cnn |" in table and "Per class" in table
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "comparison.csv")))
    assert [r["model"] for r in rows] == ["asghar-cnn", "risodkar-cnn"]
    assert all(int(r["n_test"]) == 6 for r in rows)
    # a second run reuses the finished models instead of training again
    before = (tmp_path / "cmp" / "asghar-cnn" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "cmp" / "asghar-cnn" / "model.safetensors").stat().st_mtime_ns == before


def test_split_command_writes_a_manifest(tmp_path, shared):
    tree = tiny_class_tree(tmp_path / "d", per_class=10)
    assert main(["-q", "split", "--data", str(tree), "--val", "0.2", "--test", "0.2", "--out",
                 str(tmp_path / "s.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 30 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert all((tmp_path / r["path"]).is_file() for r in rows)
