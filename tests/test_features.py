"""Cell features: known shapes give known values; real crops give >= 40 finite features."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from wbc.features import (FEATURE_NAMES, FEATURES, NO_CELL, OK, CellFeatureExtractor, FeatureConfig, cached_matrix,
                          cell_features, count_lobes, extract_features_to_csv, extract_matrix, features_markdown,
                          image_features, shape_features)

from conftest import KAGGLE, PBC, need_shared


def disc(r: int = 40, size: int = 101) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    return (yy - c) ** 2 + (xx - c) ** 2 <= r ** 2


def test_feature_table_is_complete_and_unique():
    assert len(FEATURE_NAMES) >= 40
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert {f.region for f in FEATURES} == {"cell", "nucleus", "cytoplasm"}
    assert all(f.definition for f in FEATURES)
    table = features_markdown()
    assert all(f"`{n}`" in table for n in FEATURE_NAMES)


@pytest.mark.parametrize("r", [20, 40, 80])  # cell- and nucleus-sized discs
def test_disc_is_circular(r):
    f = shape_features(disc(r, 2 * r + 21))
    assert f["circularity"] == pytest.approx(1.0, abs=0.04)
    assert f["eccentricity"] == pytest.approx(0.0, abs=0.05)
    assert f["solidity"] > 0.95 and f["convexity"] > 0.97
    assert f["feret_max"] == pytest.approx(2 * r + 1, rel=0.05)
    assert f["feret_min"] == pytest.approx(2 * r + 1, rel=0.05)
    assert f["area"] == pytest.approx(math.pi * r * r, rel=0.05)


@pytest.mark.parametrize("name, mask, key, lo, hi", [
    # pi/4 = 0.785; the Crofton perimeter is ~6 % short on axis-aligned straight edges
    ("square", np.pad(np.ones((40, 40), bool), 5), "circularity", 0.74, 0.9),
    ("2:1 ellipse", (np.mgrid[:61, :101][0] - 30) ** 2 / 20 ** 2 + (np.mgrid[:61, :101][1] - 50) ** 2 / 40 ** 2 <= 1,
     "eccentricity", 0.84, 0.89),  # sqrt(1 - 1/4) = 0.866
    ("bar", np.pad(np.ones((10, 60), bool), 5), "feret_min", 10, 12),
])
def test_known_shapes(name, mask, key, lo, hi):
    assert lo <= shape_features(mask)[key] <= hi, name


def test_concave_shape_has_lower_solidity_and_convexity():
    m = disc(30, 81)
    m[:, 38:44] = False  # cut it in two
    m[38:44, :] |= disc(30, 81)[38:44, :]  # ... joined by a bar: a cross-shaped notch
    f = shape_features(m)
    assert f["solidity"] < 0.95 and f["convexity"] < 0.99


def test_empty_mask_gives_nan():
    assert all(math.isnan(v) for v in shape_features(np.zeros((10, 10), bool)).values())


def test_lobes():
    two = np.zeros((40, 80), bool)
    two[10:30, 5:30] = True
    two[10:30, 50:75] = True
    two[19:21, 30:50] = True  # a thin filament
    assert count_lobes(two) == 2
    assert count_lobes(disc(20, 50)) == 1
    assert count_lobes(np.zeros((5, 5), bool)) == 0


def test_synthetic_cell_features():
    rgb = np.zeros((101, 101, 3), np.uint8) + (230, 225, 220)
    cell, nucleus = disc(40), disc(20)
    rgb[cell] = (200, 180, 220)
    rgb[nucleus] = (90, 60, 160)
    f = cell_features(rgb, cell, nucleus)
    assert list(f) == FEATURE_NAMES
    assert f["nucleus_cell_ratio"] == pytest.approx(0.25, rel=0.05)
    assert f["nucleus_cytoplasm_ratio"] == pytest.approx(1 / 3, rel=0.08)
    assert f["nucleus_r_mean"] == pytest.approx(90, abs=1) and f["cytoplasm_b_mean"] == pytest.approx(220, abs=1)
    assert f["nucleus_r_std"] == pytest.approx(0, abs=1e-6)
    assert f["nucleus_glcm_homogeneity_d1"] == pytest.approx(1.0)  # a flat region
    assert f["cell_circularity"] > 0.95 and f["nucleus_lobes"] == 1


def test_cell_features_rejects_bad_masks():
    rgb = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError):
        cell_features(rgb, np.zeros((20, 20), bool), np.zeros((20, 20), bool))
    with pytest.raises(ValueError):
        cell_features(rgb, np.ones((10, 10), bool), np.ones((10, 10), bool))


@pytest.mark.parametrize("source", ["pbc", "kaggle"])
def test_real_crops_give_finite_features(source):
    need_shared()
    if source == "pbc":
        paths = [sorted((PBC / c).glob("*.jpg"))[0] for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil")]
    else:
        paths = [sorted((KAGGLE / "TEST" / c).glob("*.jpeg"))[0] for c in ("NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE")]
    for p in paths:
        f = image_features(np.asarray(Image.open(p).convert("RGB")))
        values = np.array(list(f.values()))
        assert len(values) >= 40 and np.isfinite(values).all(), (p, [k for k, v in f.items() if not np.isfinite(v)])


def test_lymphocyte_vs_neutrophil_shape():
    """Known biology: a lymphocyte nucleus fills most of the cell; a neutrophil's is lobed and smaller."""
    need_shared()
    ratio = {}
    for cls in ("lymphocyte", "neutrophil"):
        vals = [image_features(np.asarray(Image.open(p).convert("RGB")))["nucleus_cell_ratio"]
                for p in sorted((PBC / cls).glob("*.jpg"))[:6]]
        ratio[cls] = np.median(vals)
    assert ratio["lymphocyte"] > ratio["neutrophil"] + 0.1, ratio


def test_failures_are_counted_never_dropped(tmp_path, caplog):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((60, 60, 3), 235, np.uint8)).save(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with caplog.at_level("WARNING"):
        X, status = extract_matrix([blank, broken], workers=1, progress=False)
    assert X.shape == (2, len(FEATURE_NAMES)) and np.isnan(X).all()
    assert status[0] == NO_CELL and status[1].startswith("unreadable")
    assert "2 of 2 images gave no features" in caplog.text


def test_csv_output(tmp_path):
    need_shared()
    import shutil
    src = tmp_path / "neutrophil"
    src.mkdir()
    for f in sorted((PBC / "neutrophil").glob("*.jpg"))[:2]:
        shutil.copy(f, src)
    Image.fromarray(np.full((60, 60, 3), 235, np.uint8)).save(src / "blank.png")
    summary = extract_features_to_csv([tmp_path], tmp_path / "features.csv", workers=1, progress=False)
    assert summary["images"] == 3 and summary["ok"] == 2 and summary["no_cell_found"] == 1
    rows = list(csv.DictReader(open(tmp_path / "features.csv")))
    assert len(rows) == 3 and rows[0]["label"] == "neutrophil"
    assert list(rows[0])[:3] == ["path", "label", "status"] and len(rows[0]) == 3 + len(FEATURE_NAMES)
    blank_row = next(r for r in rows if r["path"].endswith("blank.png"))
    assert blank_row["status"] == NO_CELL and blank_row["cell_area"] == ""


def test_parallel_matches_serial(monkeypatch):
    need_shared()
    import wbc.features
    monkeypatch.setattr(wbc.features, "MIN_PARALLEL", 2)
    paths = sorted((PBC / "monocyte").glob("*.jpg"))[:4]
    a, sa = extract_matrix(paths, workers=1, progress=False)
    b, sb = extract_matrix(paths, workers=2, progress=False)
    assert sa == sb and np.allclose(a, b, equal_nan=True)


def test_cache_returns_the_same_rows(tmp_path):
    need_shared()
    paths = sorted((PBC / "basophil").glob("*.jpg"))[:3]
    a, sa = cached_matrix(paths, workers=1, progress=False, cache_dir=tmp_path)
    assert list(tmp_path.glob("features-*.npz"))
    b, sb = cached_matrix(paths[::-1], workers=1, progress=False, cache_dir=tmp_path)
    assert sa == sb[::-1] == [OK] * 3 and np.array_equal(a, b[::-1])
    other = FeatureConfig(contrast="clahe")
    assert other.key() != FeatureConfig().key()


def test_sklearn_transformer_accepts_arrays_and_paths():
    need_shared()
    paths = sorted((PBC / "lymphocyte").glob("*.jpg"))[:2]
    ext = CellFeatureExtractor()
    from_paths = ext.fit(paths).transform(paths)
    from_arrays = ext.transform([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert from_paths.shape == (2, len(FEATURE_NAMES)) and np.allclose(from_paths, from_arrays, equal_nan=True)
    assert list(ext.get_feature_names_out()) == FEATURE_NAMES


def test_docs_list_every_feature():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "features.md").read_text()
    assert features_markdown() in doc, "docs/features.md is stale: regenerate its table with features_markdown()"
