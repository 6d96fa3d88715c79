"""The command line end to end: the README's main job, models, compare, split, audit."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLES, tiny_class_tree
from wbc.cli import main
from wbc.modelio import default_model_path, read_info


def run(*args):
    return subprocess.run([sys.executable, "-m", "wbc.cli", *args], capture_output=True, text=True, timeout=600)


def test_predict_bundled_samples_table():
    r = run("-q", "predict", str(SAMPLES))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["image", "type", "confidence"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 12
    assert all(len(row) == 3 or row[3:] in (["UNKNOWN"], ["REVIEW"]) for row in rows), rows  # flagged, not hidden
    correct = sum(Path(path).name.split("_")[1] == label for path, label, *_ in rows)
    assert correct >= 10, rows  # held-out samples: the bundled model must get nearly all of them
    assert all(0 < float(row[2]) <= 1 for row in rows)
    threshold = read_info(default_model_path()).review_threshold
    assert 0 < threshold < 1
    for row in rows:  # below the bundled model's calibrated review threshold: REVIEW (UNKNOWN goes to review too)
        assert (row[3:] != []) == (float(row[2]) < threshold or row[3:] == ["UNKNOWN"]), (row, threshold)
    n_review = sum(row[3:] != [] for row in rows)
    assert n_review >= 1  # the samples hold a low-confidence Kaggle neutrophil
    assert f"{n_review} of 12 images to review: calibrated confidence below {threshold:.3f}" in r.stderr


def test_predict_review_flag_follows_the_threshold(capsys):
    sample = str(next(SAMPLES.glob("pbc_eosinophil*")))  # confidence ~0.99, not unknown
    for threshold, expected in (("0", False), ("1", True)):
        assert main(["-q", "predict", "--format", "json", "--review-threshold", threshold, sample]) == 0
        assert json.loads(capsys.readouterr().out)[0]["review"] is expected
    assert main(["-q", "predict", "--format", "csv", "--review-threshold", "1", sample]) == 0
    assert [row["review"] for row in csv.DictReader(capsys.readouterr().out.splitlines())] == ["1"]
    assert main(["-q", "predict", "--review-threshold", "1.5", sample]) == 2
    assert "--review-threshold must be in [0, 1], got 1.5" in capsys.readouterr().err


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


def test_preprocess_segment_features_commands(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    assert main(["-q", "preprocess", str(SAMPLES), "--out", str(tmp_path / "pre"),
                 "--denoise", "median", "--contrast", "clahe", "--stain-norm", "reinhard"]) == 0
    before = np.asarray(Image.open(SAMPLES / "pbc_neutrophil_SNE_193682.jpg").convert("RGB"))
    after = np.asarray(Image.open(tmp_path / "pre" / "pbc_neutrophil_SNE_193682.png"))
    assert after.shape == before.shape and np.abs(after.astype(int) - before).mean() > 1  # really processed
    assert (tmp_path / "pre" / "contact_sheet.png").stat().st_size > 10_000

    assert main(["-q", "segment", str(SAMPLES), "--out", str(tmp_path / "seg")]) == 0
    mask = np.asarray(Image.open(tmp_path / "seg" / "pbc_lymphocyte_LY_489582.png"))
    assert mask.shape == before.shape[:2] and set(np.unique(mask)) == {0, 1, 2}
    assert (tmp_path / "seg" / "pbc_lymphocyte_LY_489582_overlay.png").exists()

    out = tmp_path / "f.csv"
    assert main(["-q", "features", str(SAMPLES), "--out", str(out), "--workers", "1"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    assert len(rows[0]) >= 40 + 3 and float(rows[0]["nucleus_area"]) > 0


@pytest.mark.parametrize("command", [["segment"], ["features"], ["preprocess", "--contrast", "clahe"]])
def test_image_commands_name_unreadable_files(tmp_path, capsys, command):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["-q", *command, str(bad), str(SAMPLES / "pbc_neutrophil_SNE_193682.jpg"),
                 "--out", str(tmp_path / "out" / ("f.csv" if command == ["features"] else ""))])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and "--skip-bad" in err and "Traceback" not in err
