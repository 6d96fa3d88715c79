"""``wbc count`` end to end on real BCCD fields, sample discovery, the classifier window, broken and blank files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from wbc.cli import main
from wbc.counting import CountConfig, classifier_window, find_samples, run_count
from wbc.detection import REFERENCE_RBC_PX
from wbc.modelio import default_model_path
from wbc.preprocessing import PreprocessConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FIELDS = SHARED / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"


def need_fields_and_model() -> None:
    if not FIELDS.is_dir():
        pytest.skip("../shared/data is not available")
    if not default_model_path().is_file():
        pytest.skip("bundled model not present")


def png(path: Path, colour=(220, 215, 210), size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_find_samples(tmp_path):
    png(tmp_path / "a" / "1.png")
    png(tmp_path / "a" / "2.png")
    png(tmp_path / "b" / "p1" / "1.png")
    png(tmp_path / "b" / "p2" / "deep" / "1.png")
    (tmp_path / "b" / "notes.txt").write_text("x")
    s = find_samples([tmp_path / "a"])
    assert [(x.sample_id, len(x.paths)) for x in s] == [("a", 2)]
    s = find_samples([tmp_path / "b"])
    assert [(x.sample_id, len(x.paths)) for x in s] == [("p1", 1), ("p2", 1)]
    s = find_samples([tmp_path / "a", tmp_path / "b"], sample_id="patient 7")
    assert [(x.sample_id, len(x.paths)) for x in s] == [("patient 7", 4)]
    s = find_samples([tmp_path / "a" / "1.png", tmp_path / "missing.jpg"])
    assert s[0].sample_id == "a" and len(s[0].paths) == 2  # the missing file is reported when read


@pytest.mark.parametrize("box,size,rbc,crop,expected", [
    # a BCCD field: the classifier's 0.7 x 480 = 336 px square centred on the cell
    ((200, 150, 300, 250), (640, 480), REFERENCE_RBC_PX, 0.7, (82, 32, 418, 368)),
    # a cell in a corner: the square is shifted to stay inside the field
    ((0, 0, 100, 100), (640, 480), REFERENCE_RBC_PX, 0.7, (0, 0, 336, 336)),
    # twice the magnification: twice the window
    ((900, 700, 1100, 900), (2560, 1920), 2 * REFERENCE_RBC_PX, 0.7, (664, 464, 1336, 1136)),
    # a model without crop gets a 640x480-equivalent window
    ((600, 400, 700, 500), (1280, 960), REFERENCE_RBC_PX, None, (330, 210, 970, 690)),
])
def test_classifier_window(box, size, rbc, crop, expected):
    img = Image.new("RGB", size)
    win, cropped = classifier_window(img, box, rbc, PreprocessConfig(crop=crop))
    assert cropped == bool(crop)
    x0, y0, x1, y1 = expected
    assert win.size == (x1 - x0, y1 - y0)


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    need_fields_and_model()
    root = tmp_path_factory.mktemp("count")
    sample = root / "patient-1"
    sample.mkdir()
    for i in (1, 2, 3, 70):  # 70 holds two WBCs
        shutil.copy(FIELDS / f"BloodImage_{i:05d}.jpg", sample)
    (sample / "broken.jpg").write_bytes(b"not a jpeg")
    png(sample / "blank.png", size=(640, 480))
    out = root / "out"
    results = run_count(CountConfig(inputs=[str(sample)], out=str(out), wbc_count=7.5))
    return results, out


def test_count_outputs(counted):
    results, out = counted
    (res,) = results
    assert res.sample_id == "patient-1"
    for name in ("cells.csv", "differential.json", "differential.png", "report.html"):
        assert (out / name).is_file(), name
    with open(out / "cells.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:9] == ["image", "cell_id", "x_min", "y_min", "x_max", "y_max", "label", "confidence",
                                 "review"]
    assert "prob_neutrophil" in rows[0]
    assert len(rows) == 5  # 1 + 1 + 1 + 2 WBCs
    assert [int(r["cell_id"]) for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        probs = [float(v) for k, v in r.items() if k.startswith("prob_")]
        assert abs(sum(probs) - 1) < 1e-2 and float(r["confidence"]) == pytest.approx(max(probs), abs=1e-4)
        assert r["review"] in ("0", "1")


def test_count_differential_json(counted):
    _, out = counted
    d = json.loads((out / "differential.json").read_text())
    for key in ("sample_id", "n_cells", "counts", "percent", "ci95", "absolute", "reference_ranges", "flags",
                "n_review"):
        assert key in d, key
    assert d["n_cells"] == 5 and "too_few_cells" in d["flags"]
    assert sum(d["absolute"].values()) == pytest.approx(7.5, abs=0.01)
    by_name = {Path(i["image"]).name: i for i in d["images"]}
    assert "not an image" in by_name["broken.jpg"]["error"]  # reported by name, the rest still counts
    assert by_name["blank.png"]["quality"] == ["blank"] and by_name["blank.png"]["n_cells"] == 0
    assert any("broken.jpg" in w for w in d["warnings"])


def test_count_annotated_fields_and_report(counted):
    _, out = counted
    names = sorted(p.name for p in (out / "annotated").glob("*.png"))
    assert names == ["BloodImage_00001.png", "BloodImage_00002.png", "BloodImage_00003.png", "BloodImage_00070.png",
                     "blank.png"]
    img = Image.open(out / "annotated" / "BloodImage_00070.png")
    assert img.width == 640 and img.height > 480  # the legend strip is below the field
    html = (out / "report.html").read_text()
    for text in ("Differential", "Annotated fields", "Cells by type", "broken.jpg", "Neutrophil"):
        assert text in html


def test_classification_of_real_fields(counted):
    """Fields 1-3 are labelled neutrophil in BCCD labels.csv; the bundled model should agree."""
    results, _ = counted
    labels = {Path(c.image).stem: c.label for c in results[0].cells if "00070" not in c.image}
    assert sum(v == "neutrophil" for v in labels.values()) >= 2, labels


def test_cli_count_several_samples(tmp_path, capsys):
    need_fields_and_model()
    for s, i in (("s1", 4), ("s2", 5)):
        (tmp_path / "in" / s).mkdir(parents=True)
        shutil.copy(FIELDS / f"BloodImage_{i:05d}.jpg", tmp_path / "in" / s)
    code = main(["-q", "count", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert code == 0
    assert (tmp_path / "out" / "s1" / "differential.json").is_file()
    assert (tmp_path / "out" / "s2" / "report.html").is_file()
    with open(tmp_path / "out" / "samples.csv") as fh:
        assert [r["sample_id"] for r in csv.DictReader(fh)] == ["s1", "s2"]
    assert "s1: 1 WBC" in capsys.readouterr().out


def test_cli_count_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["count", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    need_fields_and_model()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    assert main(["count", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "no readable image" in capsys.readouterr().err
    assert main(["count", str(bad), "--out", str(tmp_path / "o3"), "--age", "5"]) == 2
    assert "no reference band covers age 5" in capsys.readouterr().err
