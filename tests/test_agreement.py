"""Agreement statistics checked against hand-computed values, input pairing, and the end-to-end command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from wbc.agreement import (bland_altman, cohen_kappa, correlations, input_kind, ols, pair_cells, passing_bablok,
                           per_class_agreement, read_rows, run_agreement, write_bccd_reference)
from wbc.errors import WbcError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BLOOD = SHARED / "blood-cells"


def test_kappa_hand_computed():
    # n = 50, p_o = 35/50 = 0.7, p_e = (25*30 + 25*20) / 50^2 = 0.5, kappa = 0.2/0.5 = 0.4
    # SE = sqrt(0.7 * 0.3 / (50 * 0.5^2)) = sqrt(0.0168) = 0.129615
    k = cohen_kappa(np.array([[20, 5], [10, 15]]))
    assert k.observed == pytest.approx(0.7) and k.expected == pytest.approx(0.5)
    assert k.kappa == pytest.approx(0.4)
    assert k.se == pytest.approx(math.sqrt(0.0168))
    assert k.ci95 == pytest.approx((0.4 - 1.959964 * 0.1296148, 0.4 + 1.959964 * 0.1296148), abs=1e-5)


def test_kappa_three_classes_hand_computed():
    cm = np.array([[10, 2, 0], [1, 8, 1], [0, 2, 6]])  # n = 30, p_o = 24/30 = 0.8
    # row sums 12, 10, 8; column sums 11, 12, 7: p_e = (132 + 120 + 56) / 900 = 0.342222
    k = cohen_kappa(cm)
    assert k.expected == pytest.approx(308 / 900)
    assert k.kappa == pytest.approx((0.8 - 308 / 900) / (1 - 308 / 900))  # 0.695946


@pytest.mark.parametrize("cm,kappa", [
    (np.diag([5, 7, 3]), 1.0),  # perfect agreement
    (np.array([[0, 5], [5, 0]]), -1.0),  # perfect disagreement on a balanced 2x2
    (np.array([[5, 5], [5, 5]]), 0.0),  # chance
])
def test_kappa_edge_cases(cm, kappa):
    assert cohen_kappa(cm).kappa == pytest.approx(kappa)


def test_kappa_single_class_is_undefined_not_an_error():
    assert math.isnan(cohen_kappa(np.array([[7]])).kappa)
    with pytest.raises(ValueError):
        cohen_kappa(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        cohen_kappa(np.zeros((2, 3)))


def test_per_class_sensitivity_specificity_hand_computed():
    rows = per_class_agreement(np.array([[20, 5], [10, 15]]), ["a", "b"])
    a, b = rows
    assert a["sensitivity"] == pytest.approx(20 / 25) and a["specificity"] == pytest.approx(15 / 25)
    assert a["ppv"] == pytest.approx(20 / 30) and a["npv"] == pytest.approx(15 / 20)
    assert b["sensitivity"] == pytest.approx(15 / 25) and b["specificity"] == pytest.approx(20 / 25)
    assert per_class_agreement(np.array([[3, 0], [0, 0]]), ["a", "b"])[1]["sensitivity"] is None


def test_bland_altman_hand_computed():
    # d = [1, 0, 2, 0]: mean 0.75, sd = sqrt(2.75 / 3) = 0.957427; LoA = 0.75 -+ 1.96 sd
    ba = bland_altman(np.array([1.0, 2, 3, 4]), np.array([2.0, 2, 5, 4]))
    sd = math.sqrt(2.75 / 3)
    assert ba.bias == pytest.approx(0.75) and ba.sd == pytest.approx(sd)
    assert ba.loa == pytest.approx((0.75 - 1.96 * sd, 0.75 + 1.96 * sd))
    t = 3.182446  # t(0.975, 3)
    assert ba.bias_ci95 == pytest.approx((0.75 - t * sd / 2, 0.75 + t * sd / 2), abs=1e-5)
    se_loa = sd * math.sqrt(3 / 4)
    assert ba.loa_high_ci95 == pytest.approx((ba.loa[1] - t * se_loa, ba.loa[1] + t * se_loa), abs=1e-5)
    with pytest.raises(ValueError):
        bland_altman(np.array([1.0]), np.array([1.0]))


def test_regressions_and_correlations():
    x = np.array([1.0, 2, 3, 4, 5])
    y = 2 * x + 1
    r = ols(x, y)
    assert r.slope == pytest.approx(2) and r.intercept == pytest.approx(1) and r.r2 == pytest.approx(1)
    pb = passing_bablok(x, y)
    assert pb.slope == pytest.approx(2) and pb.intercept == pytest.approx(1)
    # an outlier moves least squares but not Passing-Bablok
    y2 = y.copy()
    y2[4] = 40
    assert passing_bablok(x, y2).slope == pytest.approx(2)
    assert ols(x, y2).slope > 4
    c = correlations(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]))
    assert c["pearson_r"] == pytest.approx(0.8)  # hand: cov 1.0 (n-1) / var 1.6667 each -> 1.3333/1.6667
    assert c["spearman_rho"] == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert correlations(np.ones(4), np.arange(4.0))["pearson_r"] is None


def test_passing_bablok_slope_interval_covers_truth():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 60, 40)
    y = 1.0 * x + rng.normal(0, 2, 40)
    pb = passing_bablok(x, y)
    assert pb.slope_ci95[0] < 1.0 < pb.slope_ci95[1]


# ----------------------------------------------------------------------------------------------
# pairing


def write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_pair_by_image_when_reference_has_one_label_per_image(tmp_path):
    ref = [{"image": "a.jpg", "label": "NEUTROPHIL"}, {"image": "b.jpg", "label": "lymphocyte"},
           {"image": "c.jpg", "label": "neutrophil, eosinophil"}, {"image": "d.jpg", "label": "monocyte"},
           {"image": "e.jpg", "label": ""}]
    test = [{"image": "/x/a.jpg", "cell_id": "1", "label": "neutrophil"},
            {"image": "/x/b.jpg", "cell_id": "2", "label": "monocyte"},
            {"image": "/x/d.jpg", "cell_id": "3", "label": "monocyte"},
            {"image": "/x/d.jpg", "cell_id": "4", "label": "neutrophil"}]
    p = pair_cells(ref, test)
    assert p.keys == ["a", "b"] and p.reference == ["neutrophil", "lymphocyte"] and p.test == ["neutrophil", "monocyte"]
    assert p.excluded["reference: several labels"] == 1 and p.excluded["reference: no label"] == 1
    assert p.excluded["image where the test found several cells"] == 1


def test_pair_by_boxes(tmp_path):
    ref = [{"image": "f.png", "label": "neutrophil", "x_min": 0, "y_min": 0, "x_max": 100, "y_max": 100},
           {"image": "f.png", "label": "lymphocyte", "x_min": 300, "y_min": 300, "x_max": 380, "y_max": 380},
           {"image": "f.png", "label": "monocyte", "x_min": 600, "y_min": 0, "x_max": 700, "y_max": 100}]
    test = [{"image": "dir/f.png", "label": "lymphocyte", "x_min": 305, "y_min": 298, "x_max": 385, "y_max": 377},
            {"image": "dir/f.png", "label": "neutrophil", "x_min": 5, "y_min": 3, "x_max": 104, "y_max": 98},
            {"image": "dir/f.png", "label": "neutrophil", "x_min": 900, "y_min": 0, "x_max": 990, "y_max": 90}]
    ref = [{k: str(v) for k, v in r.items()} for r in ref]
    test = [{k: str(v) for k, v in r.items()} for r in test]
    p = pair_cells(ref, test)
    assert sorted(zip(p.reference, p.test)) == [("lymphocyte", "lymphocyte"), ("neutrophil", "neutrophil")]
    assert p.excluded["reference cell not found by the test"] == 1
    assert p.excluded["test cell not in the reference"] == 1


def test_input_kind():
    assert input_kind({"image": "image", "label": "label"}) == "cells"
    assert input_kind({"sample_id": "sample_id", "neutrophil_percent": "x"}) == "samples"
    with pytest.raises(WbcError, match="cannot tell"):
        input_kind({"foo": "foo"})


# ----------------------------------------------------------------------------------------------
# end to end


def test_run_agreement_per_cell(tmp_path):
    ref = write(tmp_path / "ref.csv", [{"image": f"{i}.jpg", "label": lab} for i, lab in
                                       enumerate(["neutrophil"] * 25 + ["lymphocyte"] * 25)])
    test = write(tmp_path / "test.csv", [{"image": f"{i}.jpg", "cell_id": i, "label": lab} for i, lab in
                                         enumerate(["neutrophil"] * 20 + ["lymphocyte"] * 5
                                                   + ["neutrophil"] * 10 + ["lymphocyte"] * 15)])
    res = run_agreement(ref, test, tmp_path / "out")
    assert res["kind"] == "cells" and res["n"] == 50
    assert res["kappa"] == pytest.approx(0.4)
    assert res["confusion_matrix"] == [[20, 5], [10, 15]]
    for f in ("agreement.json", "pairs.csv", "confusion_matrix.png", "report.html"):
        assert (tmp_path / "out" / f).is_file()
    assert json.loads((tmp_path / "out" / "agreement.json").read_text())["kappa"] == pytest.approx(0.4)


def test_run_agreement_per_sample(tmp_path):
    ref_pct = [(60, 30, 10), (50, 40, 10), (70, 20, 10), (40, 50, 10)]
    test_pct = [(62, 28, 10), (50, 41, 9), (71, 19, 10), (45, 45, 10)]
    ref = write(tmp_path / "ref.csv", [{"sample_id": f"s{i}", "neutrophil_percent": a, "lymphocyte_percent": b,
                                        "monocyte_percent": c} for i, (a, b, c) in enumerate(ref_pct)])
    # counts out of 200 instead of percentages on the test side
    test = write(tmp_path / "test.csv", [{"sample_id": f"s{i}", "neutrophil": 2 * a, "lymphocyte": 2 * b,
                                          "monocyte": 2 * c} for i, (a, b, c) in enumerate(test_pct)])
    res = run_agreement(ref, test, tmp_path / "out")
    assert res["kind"] == "samples" and res["n_samples"] == 4
    neu = res["per_type"]["neutrophil"]["bland_altman"]
    d = np.array([2, 0, 1, 5.0])
    assert neu["bias"] == pytest.approx(2.0) and neu["sd"] == pytest.approx(d.std(ddof=1))
    assert (tmp_path / "out" / "bland_altman.png").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_mismatched_kinds_and_missing_files(tmp_path):
    cells = write(tmp_path / "c.csv", [{"image": "a.jpg", "label": "neutrophil"}])
    samples = write(tmp_path / "s.csv", [{"sample_id": "s", "neutrophil": 3}])
    with pytest.raises(WbcError, match="same kind"):
        run_agreement(cells, samples, tmp_path / "o")
    with pytest.raises(WbcError, match="not found"):
        run_agreement(tmp_path / "nope.csv", cells, tmp_path / "o")


def test_bccd_reference_keeps_only_kaggle_test_sources(tmp_path):
    if not (BLOOD / "provenance" / "dataset2_source_map.csv").is_file():
        pytest.skip("../shared/data is not available")
    master = BLOOD / "dataset-master" / "dataset-master"
    n_all = write_bccd_reference(master / "labels.csv", master / "JPEGImages", tmp_path / "all.csv")
    n_test = write_bccd_reference(master / "labels.csv", master / "JPEGImages", tmp_path / "test.csv",
                                  BLOOD / "provenance" / "dataset2_source_map.csv",
                                  BLOOD / "provenance" / "dataset_master_near_duplicates.csv")
    assert 300 < n_all < 367 and 50 < n_test < 72
    rows, _ = read_rows(tmp_path / "test.csv")
    smap, _ = read_rows(BLOOD / "provenance" / "dataset2_source_map.csv")
    train = {r["inferred_source_image"] for r in smap if r["split"] == "TRAIN"}
    assert not {Path(r["image"]).stem for r in rows} & train
