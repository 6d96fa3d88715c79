"""Differential counts, exact (Rümke / Clopper-Pearson) intervals, flags and reference ranges."""

from __future__ import annotations

import json

import pytest

from wbc.differential import LEUKOCYTES, clopper_pearson, compute_differential, plot_differential
from wbc.errors import WbcError
from wbc.reference_ranges import RangeBand, RangeTable, load_ranges, select_band


# ----------------------------------------------------------------------------------------------
# exact binomial intervals, checked against closed forms and published values


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 100, 0.0, 1 - 0.025 ** (1 / 100)),  # closed form for k = 0: 0.0362 (Rümke: 0-4 % of 100 cells)
    (100, 100, 0.025 ** (1 / 100), 1.0),  # closed form for k = n
    (0, 10, 0.0, 1 - 0.025 ** (1 / 10)),  # 0.3085
    (50, 100, 0.39832, 0.60168),  # Clopper-Pearson 50/100
    (1, 10, 0.002529, 0.445016),  # Clopper-Pearson 1/10
    (5, 200, 0.008166, 0.057374),  # 2.5 % of a 200-cell count
])
def test_clopper_pearson(k, n, lo, hi):
    got = clopper_pearson(k, n)
    assert got[0] == pytest.approx(lo, abs=2e-5)
    assert got[1] == pytest.approx(hi, abs=2e-5)


@pytest.mark.parametrize("k,n,level", [(-1, 10, 0.95), (11, 10, 0.95), (0, 0, 0.95), (1, 10, 1.0)])
def test_clopper_pearson_rejects_bad_input(k, n, level):
    with pytest.raises(ValueError):
        clopper_pearson(k, n, level)


def test_interval_narrows_with_more_cells():
    w100 = clopper_pearson(10, 100)
    w400 = clopper_pearson(40, 400)
    assert (w400[1] - w400[0]) < 0.6 * (w100[1] - w100[0])


# ----------------------------------------------------------------------------------------------
# differential


def labels(**counts: int) -> list[str]:
    return [c for c, n in counts.items() for _ in range(n)]


def test_counts_percentages_and_intervals():
    d = compute_differential(labels(neutrophil=60, lymphocyte=30, monocyte=6, eosinophil=3, basophil=1),
                             sample_id="s1")
    assert d.n_cells == 100 and d.sample_id == "s1"
    assert d.percent == {"neutrophil": 60.0, "lymphocyte": 30.0, "monocyte": 6.0, "eosinophil": 3.0,
                         "basophil": 1.0, "ig": 0.0}
    assert d.ci95["ig"] == [0.0, 3.62]
    assert d.ci95["neutrophil"] == pytest.approx([49.72, 69.67], abs=0.01)
    assert d.flags == [] and d.absolute is None


def test_absolute_counts_and_their_intervals():
    d = compute_differential(labels(neutrophil=50, lymphocyte=50), wbc_count=8.0)
    assert d.absolute["neutrophil"] == 4.0 and d.absolute["lymphocyte"] == 4.0
    assert d.absolute_ci95["neutrophil"] == pytest.approx([8.0 * 0.39832, 8.0 * 0.60168], abs=2e-3)


def test_erythroblasts_and_platelets_are_not_leukocytes():
    d = compute_differential(labels(neutrophil=90, lymphocyte=10, erythroblast=5, platelet=2))
    assert d.n_cells == 100
    assert d.nrbc_per_100_wbc == 5.0
    assert d.n_excluded == 2
    assert d.counts["erythroblast"] == 5 and d.counts["platelet"] == 2
    assert "erythroblasts_present" in d.flags


FLAG_CASES = [
    # name, counts, wbc_count, expected flags (subset), absent flags
    ("neutrophilia relative", dict(neutrophil=90, lymphocyte=8, monocyte=2), None, {"neutrophilia", "lymphopenia"},
     {"too_few_cells"}),
    ("neutropenia absolute", dict(neutrophil=30, lymphocyte=60, monocyte=6, eosinophil=4), 4.0,
     {"neutropenia"}, {"lymphocytosis"}),  # 1.2 neutrophils x10^9/L; 2.4 lymphocytes is within 1.0-3.0
    ("lymphocytosis", dict(neutrophil=40, lymphocyte=55, monocyte=5), 9.0, {"lymphocytosis"}, {"neutropenia"}),
    ("monocytosis", dict(neutrophil=60, lymphocyte=22, monocyte=18), None, {"monocytosis"}, set()),
    ("eosinophilia", dict(neutrophil=60, lymphocyte=25, monocyte=5, eosinophil=10), None, {"eosinophilia"}, set()),
    ("basophilia", dict(neutrophil=60, lymphocyte=30, monocyte=5, eosinophil=2, basophil=3), None, {"basophilia"},
     set()),
    ("immature granulocytes", dict(neutrophil=60, lymphocyte=30, monocyte=6, eosinophil=2, ig=2), None,
     {"immature_granulocytes_present"}, set()),
    ("leukocytosis", dict(neutrophil=60, lymphocyte=30, monocyte=6, eosinophil=4), 15.0, {"leukocytosis"}, set()),
    ("leukopenia", dict(neutrophil=60, lymphocyte=30, monocyte=6, eosinophil=4), 3.0, {"leukopenia"}, set()),
    ("too few", dict(neutrophil=6, lymphocyte=3, monocyte=1), None, {"too_few_cells"}, set()),
    ("normal", dict(neutrophil=60, lymphocyte=30, monocyte=6, eosinophil=3, basophil=1), 6.0, set(),
     {"neutrophilia", "too_few_cells", "leukocytosis"}),
]


@pytest.mark.parametrize("name,counts,wbc,expected,absent", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_flags(name, counts, wbc, expected, absent):
    d = compute_differential(labels(**counts), wbc_count=wbc)
    assert expected <= set(d.flags), d.flag_details
    assert not absent & set(d.flags)
    if not expected:
        assert d.flags == []


def test_flag_basis_and_significance():
    d = compute_differential(labels(neutrophil=82, lymphocyte=15, monocyte=3))  # 82 % vs 40-80 %
    (f,) = [f for f in d.flag_details if f["flag"] == "neutrophilia"]
    assert f["basis"] == "relative" and f["value"] == 82.0
    assert f["significant"] is False  # the 95 % interval (73-89 %) reaches into the range
    d = compute_differential(labels(neutrophil=95, lymphocyte=5), wbc_count=10.0)
    (f,) = [f for f in d.flag_details if f["flag"] == "neutrophilia"]
    assert f["basis"] == "absolute" and f["significant"] is True


def test_no_cells_is_a_result_not_an_error():
    d = compute_differential([])
    assert d.n_cells == 0 and d.flags == ["no_cells"]
    assert all(v is None for v in d.percent.values())
    json.dumps(d.to_dict())


def test_review_count_and_bad_arguments():
    d = compute_differential(["neutrophil", "lymphocyte"], review=[True, False])
    assert d.n_review == 1
    with pytest.raises(ValueError):
        compute_differential(["neutrophil"], review=[True, False])
    with pytest.raises(ValueError):
        compute_differential(["neutrophil"], wbc_count=-1)


def test_table_and_plot(tmp_path):
    d = compute_differential(labels(neutrophil=70, lymphocyte=25, monocyte=5), wbc_count=7.0)
    rows = d.table()
    assert [r["Cell type"] for r in rows][:2] == ["Neutrophil", "Lymphocyte"] and len(rows) == len(LEUKOCYTES)
    assert rows[0]["Reference (%)"] == "40 – 80" and rows[0]["x10^9/L"] == 4.9
    assert plot_differential(d, tmp_path / "d.png").stat().st_size > 1000
    assert plot_differential(compute_differential([]), tmp_path / "e.png").is_file()


# ----------------------------------------------------------------------------------------------
# reference ranges


def test_default_ranges_are_adult_and_cited():
    table = load_ranges()
    band = select_band(table)
    assert band.label == "adult" and band.age_min == 18
    assert "Dacie" in table.source
    assert set(band.relative) >= {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"}
    assert band.absolute["neutrophil"] == (2.0, 7.0) and band.wbc == (4.0, 10.0)
    d = compute_differential(["neutrophil"] * 10)
    assert d.reference_ranges["label"] == "adult" and "Dacie" in d.reference_ranges["source"]


LAB_CSV = """age_min,age_max,sex,cell,relative_low,relative_high,absolute_low,absolute_high
0,1,,neutrophil,20,45,1.0,8.5
0,1,,lymphocytes,40,70,4.0,10.5
0,1,,wbc,,,6.0,17.5
1,18,,neutrophil,30,65,1.5,8.0
1,18,,lymphocyte,25,55,1.5,6.5
18,,male,neutrophil,45,75,2.0,7.5
18,,female,neutrophil,40,75,2.0,7.5
18,,,lymphocyte,20,45,1.0,4.0
"""


def test_lab_csv_with_age_bands(tmp_path):
    p = tmp_path / "lab.csv"
    p.write_text(LAB_CSV)
    table = load_ranges(p)
    assert len(table.bands) == 5
    infant = select_band(table, age=0.5)
    assert infant.relative["lymphocyte"] == (40.0, 70.0) and infant.wbc == (6.0, 17.5)
    child = select_band(table, age=6)
    assert child.absolute["neutrophil"] == (1.5, 8.0)
    assert select_band(table, age=40, sex="male").relative["neutrophil"] == (45.0, 75.0)
    assert select_band(table, age=40, sex="F").relative["neutrophil"] == (40.0, 75.0)
    # a 6-year-old's 50 % lymphocytes are normal, an adult's are not
    counts = ["neutrophil"] * 45 + ["lymphocyte"] * 50 + ["monocyte"] * 5
    assert "lymphocytosis" not in compute_differential(counts, band=child, table=table).flags
    assert "lymphocytosis" in compute_differential(counts).flags


def test_lab_json_file(tmp_path):
    p = tmp_path / "lab.json"
    p.write_text(json.dumps({"name": "Lab X", "source": "our validation 2024", "bands": [
        {"age_min": 0, "age_max": 18, "relative": {"NEUTROPHILS": [30, 60]}},
        {"age_min": 18, "default": True, "relative": {"neutrophil": [50, 70]}, "absolute": {"neu": [2, 7]}}]}))
    table = load_ranges(p)
    assert table.name == "Lab X"
    assert select_band(table).relative == {"neutrophil": (50.0, 70.0)}
    assert select_band(table, age=10).label == "0-18 y"


@pytest.mark.parametrize("content,suffix,match", [
    ('{"bands": []}', ".json", "non-empty 'bands'"),
    ("not json", ".json", "not valid JSON"),
    ('{"bands": [{"relative": {"martian": [1, 2]}}]}', ".json", "unknown cell type"),
    ('{"bands": [{"relative": {"neutrophil": [70, 40]}}]}', ".json", "low must be <= high"),
    ("cell,relative_low\n", ".csv", "no rows"),
    ("age,x\n1,2\n", ".csv", "'cell' column"),
])
def test_bad_range_files_are_reported(tmp_path, content, suffix, match):
    p = tmp_path / f"r{suffix}"
    p.write_text(content)
    with pytest.raises(WbcError, match=match):
        load_ranges(p)


def test_age_outside_every_band():
    table = RangeTable("t", "s", (RangeBand("adult", 18, None, relative={"neutrophil": (40, 80)}),))
    with pytest.raises(WbcError, match="no reference band covers age 5"):
        select_band(table, age=5)
    with pytest.raises(WbcError, match="not found"):
        load_ranges("/nonexistent/ranges.json")
