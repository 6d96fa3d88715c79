"""Segmentation: synthetic cells, real single-cell crops and BCCD smear fields against their WBC boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wbc.segmentation import (Region, SegmentationConfig, box_iou, central_cell, draw_overlay, evaluate_on_voc,
                              match_boxes, resolve_link, segment_cells, segment_files, segment_single_cell,
                              wbc_instances)

from conftest import BCCD, KAGGLE, PBC, need_shared

# fields with one WBC box, a field with two WBCs and one where the WBC is an eosinophil
BCCD_FIELDS = ["BloodImage_00000", "BloodImage_00020", "BloodImage_00042", "BloodImage_00140", "BloodImage_00407"]


def synthetic_smear(centres=((60, 60),), size=(160, 200), cell_r=26, nucleus_r=14) -> np.ndarray:
    """Light plasma, pink red cells, WBCs with a lilac cytoplasm and a purple nucleus."""
    h, w = size
    img = np.zeros((h, w, 3), np.float32) + (232, 228, 220)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in ((20, 170), (130, 30), (140, 170)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 18 ** 2] = (215, 160, 165)  # red cells
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= cell_r ** 2] = (200, 185, 220)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= nucleus_r ** 2] = (95, 60, 160)
    noise = np.random.default_rng(0).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_blank_image_has_no_cell():
    seg = segment_cells(np.full((50, 60, 3), 230, np.uint8))
    assert seg.n_cells == 0 and seg.labels.shape == (50, 60) and not seg.labels.any()


def test_black_image_has_no_cell():
    assert segment_cells(np.zeros((40, 40, 3), np.uint8)).n_cells == 0


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="HxWx3"):
        segment_cells(np.zeros((10, 10), np.uint8))


def test_synthetic_cell_nucleus_and_cytoplasm():
    seg = segment_cells(synthetic_smear())
    assert seg.n_cells == 1
    nucleus = seg.labels == Region.NUCLEUS
    cell = seg.labels > 0
    assert abs(nucleus.sum() - np.pi * 14 ** 2) / (np.pi * 14 ** 2) < 0.25
    assert abs(cell.sum() - np.pi * 26 ** 2) / (np.pi * 26 ** 2) < 0.25
    assert seg.labels[130, 30] == Region.BACKGROUND  # a red cell is background
    assert set(np.unique(seg.labels)) <= {0, 1, 2}


def test_touching_cells_are_split():
    img = synthetic_smear(centres=((70, 70), (70, 118)), size=(150, 200))  # cytoplasms overlap
    seg = segment_cells(img)
    assert seg.n_cells == 2
    (a, b) = seg.bboxes()
    assert box_iou(a, b) < 0.2
    assert seg.instances[70, 70] != seg.instances[70, 118]


def test_wbc_instances_and_overlay():
    img = synthetic_smear(centres=((50, 50), (110, 150)))
    inst = wbc_instances(img)
    assert len(inst) == 2
    for (x0, y0, x1, y1), mask in inst:
        assert mask.shape == img.shape[:2] and mask[y0:y1, x0:x1].sum() == mask.sum()
    overlay = draw_overlay(img, segment_cells(img))
    assert overlay.shape == img.shape and not np.array_equal(overlay, img)


def test_box_iou_and_matching():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    pairs = match_boxes([(0, 0, 10, 10), (50, 50, 60, 60)], [(1, 1, 10, 10)])
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)]


@pytest.mark.parametrize("cls", ["neutrophil", "lymphocyte", "eosinophil", "monocyte", "basophil", "platelet"])
def test_pbc_crop_has_a_central_cell(cls):
    need_shared()
    for path in sorted((PBC / cls).glob("*.jpg"))[:2]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        cell, nucleus = segment_single_cell(rgb)
        assert cell.any() and nucleus.any(), path
        assert (nucleus & ~cell).sum() == 0
        h, w = cell.shape
        ys, xs = np.nonzero(cell)
        # the cell contains, or lies next to, the image centre
        assert np.min((ys - h / 2) ** 2 + (xs - w / 2) ** 2) < (0.15 * min(h, w)) ** 2, path
        if cls != "platelet":
            assert 0.05 < nucleus.sum() / cell.sum() < 1.0


def test_kaggle_crop_cell_found():
    need_shared()
    for path in sorted((KAGGLE / "TEST" / "MONOCYTE").glob("*.jpeg"))[:3]:
        seg = segment_cells(np.asarray(Image.open(path).convert("RGB")))
        k = central_cell(seg)
        assert k > 0 and seg.nucleus_mask(k).sum() > 500, path


def _bccd():
    need_shared()
    if not (BCCD / "Annotations").is_dir():
        pytest.skip("BCCD annotations not available")
    return BCCD / "Annotations", resolve_link(BCCD / "JPEGImages")


def test_bccd_fields_match_annotated_boxes(tmp_path):
    annotations, images = _bccd()
    ann = tmp_path / "ann"
    ann.mkdir()
    for stem in BCCD_FIELDS:
        (ann / f"{stem}.xml").write_bytes((annotations / f"{stem}.xml").read_bytes())
    result = evaluate_on_voc(ann, images)
    assert result["single_wbc_fields"] >= 4
    assert result["single_wbc_hit_rate"] == 1.0, result["failures"]
    assert result["precision"] >= 0.8 and result["recall"] == 1.0


def test_bccd_two_wbc_field():
    annotations, images = _bccd()
    from wbc.segmentation import _read_voc_boxes
    stem = "BloodImage_00065"
    truth = _read_voc_boxes(annotations / f"{stem}.xml")
    assert len(truth) == 2
    seg = segment_cells(np.asarray(Image.open(images / f"{stem}.jpg").convert("RGB")))
    assert len(match_boxes(seg.bboxes(), truth)) == 2


def test_segment_files_writes_masks_and_overlays(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(synthetic_smear()).save(src / "field.png")
    Image.fromarray(np.full((40, 40, 3), 230, np.uint8)).save(src / "empty.png")
    (src / "bad.png").write_bytes(b"junk")
    summary = segment_files([src], tmp_path / "out")
    assert summary["images"] == 3 and summary["segmented"] == 1 and summary["cells"] == 1
    assert len(summary["unreadable"]) == 1 and len(summary["no_wbc"]) == 1
    mask = np.asarray(Image.open(tmp_path / "out" / "field.png"))
    assert mask.shape == (160, 200) and set(np.unique(mask)) == {0, 1, 2}
    assert (tmp_path / "out" / "field_overlay.png").is_file()
    assert (tmp_path / "out" / "segmentation.csv").read_text().count("\n") == 2


def test_config_is_respected():
    img = synthetic_smear()
    assert segment_cells(img, SegmentationConfig(min_area_fraction=0.5)).n_cells == 0
