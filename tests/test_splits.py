from collections import Counter
from pathlib import Path

import pytest

from conftest import KAGGLE, SOURCE_MAP
from wbc.data import ImageRecord, discover
from wbc.splits import check_disjoint, split_off, three_way


def _records(n_groups=40, per_group=5, classes=("a", "b")):
    return [ImageRecord(Path(f"/x/{c}{g}_{i}.jpg"), c, f"{c}{g}")
            for c in classes for g in range(n_groups) for i in range(per_group)]


def test_groups_stay_on_one_side_and_classes_are_stratified():
    recs = _records()
    train, held = split_off(recs, 0.2, seed=0)
    assert check_disjoint(train, held) == 0
    assert len(held) == pytest.approx(0.2 * len(recs), rel=0.2)
    assert Counter(r.label for r in held)["a"] == pytest.approx(Counter(r.label for r in held)["b"], abs=5)


def test_three_way_is_reproducible_and_disjoint():
    recs = _records()
    a, b = three_way(recs, 0.2, 0.1, seed=3), three_way(recs, 0.2, 0.1, seed=3)
    assert a == b
    by = {s: [r for r in a if r.split == s] for s in ("train", "val", "test")}
    assert all(by.values())
    assert check_disjoint(by["train"], by["test"]) == check_disjoint(by["train"], by["val"]) == 0


def test_source_map_split_has_no_leakage(shared):
    ds = discover(KAGGLE, SOURCE_MAP)
    train, val = split_off(ds.split("train").records, 0.15, seed=0)
    assert check_disjoint(train, val) == 0
    assert {r.label for r in val} == {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}


def test_committed_splits_are_leakage_free(shared):
    root = Path(__file__).resolve().parents[1] / "data" / "splits"
    for name in ("pbc.csv", "kaggle.csv"):
        ds = discover(root / name)
        parts = {s: ds.split(s).records for s in ds.splits}
        assert check_disjoint(parts["train"], parts["val"]) == 0
        if name == "pbc.csv":
            assert check_disjoint(parts["train"], parts["test"]) == 0
        assert all(r.path.is_file() for r in parts["val"][:20])


def test_too_few_images_to_stratify_is_a_clear_error():
    from wbc.errors import WbcError
    records = [ImageRecord(Path(f"{c}{i}.png"), c, None) for c in "abc" for i in range(4)]
    with pytest.raises(WbcError, match="12 images in 3 classes are too few to hold out 15%"):
        split_off(records, 0.15, seed=0)
    rest, held = split_off(records, 0.25, seed=0)  # 3 held out: one per class
    assert sorted(r.label for r in held) == ["a", "b", "c"] and len(rest) == 9
