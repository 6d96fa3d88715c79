"""WBC detection on real BCCD fields (VOC boxes), tiling de-duplication, scale and field-quality checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.detection import (REFERENCE_RBC_PX, DetectionConfig, Quality, detect_wbcs, estimate_rbc_diameter,
                           field_quality, merge_overlapping, overlap_fraction, pooled_rbc_diameter, tile_grid,
                           voc_boxes)
from wbc.segmentation import box_iou, match_boxes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BCCD = SHARED / "BCCD_Dataset" / "BCCD"
FIELDS = SHARED / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"


def need_bccd() -> None:
    if not (BCCD / "Annotations").is_dir() or not FIELDS.is_dir():
        pytest.skip("../shared/data (BCCD) is not available")


def field(stem: str) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    from wbc.data import load_image
    return np.asarray(load_image(FIELDS / f"{stem}.jpg")), voc_boxes(BCCD / "Annotations" / f"{stem}.xml")


# the first 24 annotated fields, every one with its VOC WBC box(es)
STEMS = [f"BloodImage_{i:05d}" for i in range(0, 30)]


@pytest.fixture(scope="module")
def bccd_fields():
    need_bccd()
    return {s: field(s) for s in STEMS if (BCCD / "Annotations" / f"{s}.xml").is_file()}


def test_detection_matches_voc_boxes_on_real_fields(bccd_fields):
    tp = n_pred = n_true = 0
    for stem, (rgb, truth) in bccd_fields.items():
        pred = detect_wbcs(rgb).boxes
        tp += len(match_boxes(pred, truth, 0.5))
        n_pred += len(pred)
        n_true += len(truth)
    assert n_true >= 20
    assert tp / n_true >= 0.95, f"recall {tp}/{n_true}"
    assert tp / n_pred >= 0.95, f"precision {tp}/{n_pred}"


def test_two_wbcs_in_one_field_are_two_cells():
    need_bccd()
    rgb, truth = field("BloodImage_00070")  # two separate WBCs
    assert len(truth) == 2
    res = detect_wbcs(rgb, rbc_px=REFERENCE_RBC_PX)  # the scale wbc count pools over a BCCD sample
    assert len(res.cells) == 2
    assert len(match_boxes(res.boxes, truth, 0.5)) == 2


def test_cell_has_box_sized_mask_and_nucleus_size(bccd_fields):
    rgb, _ = bccd_fields["BloodImage_00000"]
    cell = detect_wbcs(rgb).cells[0]
    x0, y0, x1, y1 = cell.box
    assert cell.mask.shape == (y1 - y0, x1 - x0) and cell.mask.dtype == bool
    assert 0.3 < cell.mask.mean() <= 1.0
    assert 0.4 <= cell.nucleus_area < 5
    assert cell.full_mask(rgb.shape).sum() == cell.mask.sum()


def test_red_cell_diameter_is_measured_and_scales(bccd_fields):
    estimates = [estimate_rbc_diameter(rgb) for rgb, _ in list(bccd_fields.values())[:8]]
    assert all(e is not None and 0.65 * REFERENCE_RBC_PX < e < 1.5 * REFERENCE_RBC_PX for e in estimates)
    assert pooled_rbc_diameter(estimates) == REFERENCE_RBC_PX  # BCCD is the reference magnification
    rgb, _ = bccd_fields["BloodImage_00001"]
    big = cv2.resize(rgb, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    ratio = estimate_rbc_diameter(big) / estimate_rbc_diameter(rgb)
    assert 1.7 < ratio < 2.3


def test_detection_follows_magnification(bccd_fields):
    rgb, truth = bccd_fields["BloodImage_00002"]
    big = cv2.resize(rgb, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    res = detect_wbcs(big)  # magnification estimated from the red cells
    single = estimate_rbc_diameter(rgb)  # raw, not snapped to the reference
    assert res.rbc_px is not None and 1.7 * single < res.rbc_px < 2.3 * single
    doubled = [tuple(2 * v for v in b) for b in truth]
    assert len(res.cells) == len(truth)
    assert len(match_boxes(res.boxes, doubled, 0.5)) == len(truth)


# ----------------------------------------------------------------------------------------------
# tiles


@pytest.mark.parametrize("length,tile,overlap", [(100, 100, 20), (250, 100, 20), (1000, 300, 120), (1283, 400, 206)])
def test_tile_cores_partition_the_axis(length, tile, overlap):
    grid = tile_grid(length, tile, overlap)
    assert grid[0][0] == 0 and grid[-1][1] == length
    assert grid[0][2] == 0 and grid[-1][3] == length
    for (s0, e0, _, c1), (s1, _, c0, _) in zip(grid, grid[1:]):
        assert c1 == c0  # cores touch: every pixel is owned by exactly one tile
        assert e0 - s1 >= overlap  # neighbours overlap by at least the requested amount
        assert s1 + overlap // 2 - 1 <= c0 <= e0 - overlap // 2 + 1  # the core edge is mid-overlap
    assert all(e - s == min(tile, length) for s, e, _, _ in grid)


def test_tile_grid_rejects_overlap_larger_than_tile():
    with pytest.raises(ValueError, match="larger than overlap"):
        tile_grid(1000, 100, 100)


def test_overlap_merge():
    class B:
        def __init__(self, box):
            self.box, self.mask = box, np.ones((box[3] - box[1], box[2] - box[0]), bool)
            self.nucleus, self.centre = 1.0, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    assert overlap_fraction((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert overlap_fraction((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    merged = merge_overlapping([B((0, 0, 10, 10)), B((2, 2, 12, 12)), B((50, 50, 60, 60))], 0.3)
    assert sorted(m.box for m in merged) == [(0, 0, 12, 12), (50, 50, 60, 60)]


def test_tiled_mosaic_counts_every_cell_once(bccd_fields):
    """A 2560x1920 mosaic of 16 real fields, detected with small tiles so that cells straddle tile borders."""
    stems = [s for s, (_, t) in bccd_fields.items() if len(t) == 1][:16]
    assert len(stems) == 16
    rows, truth = [], []
    for r in range(4):
        row = []
        for c in range(4):
            rgb, boxes = bccd_fields[stems[4 * r + c]]
            row.append(rgb)
            truth += [(x0 + 640 * c, y0 + 480 * r, x1 + 640 * c, y1 + 480 * r) for x0, y0, x1, y1 in boxes]
        rows.append(np.hstack(row))
    mosaic = np.ascontiguousarray(np.vstack(rows))
    cfg = DetectionConfig(tile=400)  # analysis pixels: the mosaic is 1280x960 there, cut into 5x4 tiles
    res = detect_wbcs(mosaic, cfg, rbc_px=REFERENCE_RBC_PX)
    # the test means something only if some cells straddle a tile border
    overlap = int(np.ceil(cfg.overlap * cfg.analysis_rbc_px))
    starts = {s * 2 for s, *_ in tile_grid(mosaic.shape[1] // 2, cfg.tile, overlap)[1:]}
    assert any(x0 < s < x1 for x0, _, x1, _ in truth for s in starts)
    pairs = match_boxes(res.boxes, truth, 0.5)
    whole = detect_wbcs(mosaic, DetectionConfig(tile=4096), rbc_px=REFERENCE_RBC_PX)
    assert len(res.cells) == len(whole.cells)  # tiling neither loses nor duplicates cells
    assert len(pairs) >= len(truth) - 1
    assert len(res.cells) <= len(truth) + 1
    for a in res.boxes:  # no two detections of the same cell
        assert sum(box_iou(a, b) > 0.3 for b in res.boxes) == 1


def test_cell_straddling_a_tile_border_is_counted_once(bccd_fields):
    """One real WBC pasted exactly across the core border of two tiles."""
    rgb, (box,) = bccd_fields["BloodImage_00003"]
    canvas = np.zeros((480, 1600, 3), np.uint8)
    canvas[:] = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)  # plasma-coloured background
    cfg = DetectionConfig(tile=400)
    overlap = int(np.ceil(cfg.overlap * cfg.analysis_rbc_px))
    grid = tile_grid(800, cfg.tile, overlap)
    border = 2 * grid[1][0] + 60  # inside the overlap of tiles 0 and 1 (full-resolution pixels)
    x0, y0, x1, y1 = box
    crop = rgb[y0:y1, x0:x1]
    px = border - (x1 - x0) // 2
    canvas[y0:y1, px:px + (x1 - x0)] = crop
    res = detect_wbcs(canvas, cfg, rbc_px=REFERENCE_RBC_PX, check_quality=False)
    assert len(res.cells) == 1
    assert box_iou(res.cells[0].box, (px, y0, px + x1 - x0, y1)) > 0.5


# ----------------------------------------------------------------------------------------------
# robustness


def test_blank_field_gives_no_cells_and_a_flag():
    res = detect_wbcs(np.full((480, 640, 3), 220, np.uint8))
    assert res.cells == [] and Quality.BLANK.value in res.quality


def test_black_image_is_blank():
    res = detect_wbcs(np.zeros((300, 300, 3), np.uint8))
    assert res.cells == [] and res.quality == [Quality.BLANK.value]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"])
def test_non_smear_photographs_are_flagged_and_not_counted(name):
    import skimage.data
    rgb = getattr(skimage.data, name)()
    res = detect_wbcs(rgb)
    assert res.cells == [] and Quality.NOT_A_SMEAR.value in res.quality


def test_overexposed_and_blurred_fields_are_flagged(bccd_fields):
    rgb, _ = bccd_fields["BloodImage_00001"]
    over = np.clip(rgb.astype(float) * 1.8, 0, 255).astype(np.uint8)
    assert Quality.OVER_EXPOSED.value in detect_wbcs(over).quality
    blurred = cv2.GaussianBlur(rgb, (0, 0), 6)
    flags, measures = field_quality(blurred)
    assert flags == [Quality.OUT_OF_FOCUS.value], measures
    assert field_quality(rgb)[0] == []


def test_noise_and_tiny_images_do_not_crash():
    rng = np.random.default_rng(0)
    assert detect_wbcs(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).cells == []
    assert detect_wbcs(np.full((3, 3, 3), 128, np.uint8)).cells == []


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="HxWx3"):
        detect_wbcs(np.zeros((10, 10), np.uint8))
