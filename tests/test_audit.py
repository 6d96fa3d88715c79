"""Tests of wbc.audit on real images from ../shared/data (copied into tmp dirs; never written to)."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from wbc.audit import (
    DuplicatePair,
    audit,
    content_hash,
    duplicate_groups,
    format_report,
    hash_distance,
    near_pairs,
    perceptual_hashes,
    write_report,
)
from wbc.data import ImageRecord, discover, load_image
from wbc.errors import WbcError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PBC = SHARED / "PBC_dataset_normal_DIB"
TEST_SIMPLE = SHARED / "blood-cells" / "dataset2-master" / "dataset2-master" / "images" / "TEST_SIMPLE"



def needs_shared(test):
    """Mark a test as needing ../shared/data and skip it when that folder is absent."""
    return pytest.mark.shared(pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")(test))


def _pbc(rel: str) -> Path:
    p = PBC / rel
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


def _pairs(report, kind: str) -> set[frozenset[str]]:
    return {frozenset((p.path_a.name, p.path_b.name)) for p in report.pairs if p.kind == kind}


@pytest.fixture
def modified_copies(tmp_path: Path) -> dict[str, Path]:
    """A real PBC cell, four modified copies of it, four other real cells and one broken file."""
    src = _pbc("neutrophil/BNE_100878.jpg")
    img = load_image(src)
    d = tmp_path / "set"
    d.mkdir()
    files = {"orig": d / "orig.jpg", "bytecopy": d / "bytecopy.jpg", "small": d / "small.jpg",
             "flip": d / "flip.png", "rot90": d / "rot90.jpg"}
    shutil.copyfile(src, files["orig"])
    shutil.copyfile(src, files["bytecopy"])
    img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(files["small"], quality=70)
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(files["flip"])
    img.transpose(Image.Transpose.ROTATE_90).save(files["rot90"], quality=85)
    for rel in ("neutrophil/BNE_101082.jpg", "lymphocyte/LY_102859.jpg", "eosinophil/EO_100213.jpg",
                "monocyte/MO_100695.jpg"):
        other = _pbc(rel)
        files[other.stem] = d / other.name
        shutil.copyfile(other, files[other.stem])
    files["broken"] = d / "broken.jpg"
    files["broken"].write_bytes(src.read_bytes()[:200])
    return files


@needs_shared
def test_perceptual_hashes_match_imagehash_and_are_dihedral():
    img = load_image(_pbc("neutrophil/BNE_100878.jpg"))
    hs = perceptual_hashes(img)
    assert len(hs) == 8 and len(set(hs)) > 1
    assert hs[0] == int(str(imagehash.phash(img, hash_size=16)), 16)
    for t in (Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE):
        assert hash_distance(hs, perceptual_hashes(img.transpose(t))) <= 2
    assert content_hash(PBC / "neutrophil/BNE_100878.jpg") == hashlib.sha256(
        (PBC / "neutrophil/BNE_100878.jpg").read_bytes()).hexdigest()


@needs_shared
def test_finds_exact_and_near_copies_and_keeps_distinct_cells_apart(modified_copies, tmp_path):
    f = modified_copies
    records = [ImageRecord(p, "neutrophil", None, "train") for p in f.values()]
    records[1] = ImageRecord(f["bytecopy"], "lymphocyte", None, "test")  # a conflicting, leaked copy
    report = audit(records, progress=False)

    assert report.n_images == len(f)
    assert [u.path for u in report.unreadable] == [f["broken"]]
    assert _pairs(report, "exact") == {frozenset({"orig.jpg", "bytecopy.jpg"})}
    copies = {"orig.jpg", "bytecopy.jpg", "small.jpg", "flip.png", "rot90.jpg"}
    # every pair among the 5 versions except the byte-identical one is a near pair
    all_pairs = {frozenset((a, b)) for a in copies for b in copies if a < b}
    assert _pairs(report, "near") == all_pairs - _pairs(report, "exact")
    assert all(p.distance <= report.near_threshold for p in report.near_pairs)
    assert report.n_exact_groups == 1 and report.n_near_groups == 1
    assert {p.name for p in report.near_groups[0]} == copies
    # the 4 pairs with the relabelled test-split copy are both cross-split and cross-label
    assert report.n_cross_split_pairs == report.n_cross_label_pairs == 4

    groups = duplicate_groups(records, report=report)
    assert len({groups[f[k]] for k in ("orig", "bytecopy", "small", "flip", "rot90")}) == 1
    others = [p for k, p in f.items() if k not in ("orig", "bytecopy", "small", "flip", "rot90")]
    assert all(groups[p] == str(p) for p in others)
    assert duplicate_groups(records) == groups  # same result when it hashes by itself

    text = format_report(report)
    assert "1 groups" in text and "LABEL-CONFLICT" in text and "broken.jpg" in text

    out = tmp_path / "out"
    pairs_csv, summary_json = write_report(report, out)
    rows = list(csv.DictReader(pairs_csv.open()))
    assert len(rows) == report.n_exact_pairs + report.n_near_pairs == 10
    assert list(rows[0]) == ["kind", "distance", "path_a", "label_a", "split_a", "path_b", "label_b", "split_b"]
    summary = json.loads(summary_json.read_text())
    assert summary["n_exact_pairs"] == 1 and summary["n_near_pairs"] == 9 and summary["n_unreadable"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["pairs.csv", "summary.json"]  # no temp files left


def test_near_pairs_small_cases():
    a = (0b1011, 0b1101, 0, 0, 0, 0, 0, 0)
    b = (0b1101, 0b1011, 0, 0, 0, 0, 0, 0)  # a flipped: distance 0 through the transforms
    c = ((1 << 255) | (1 << 200) | (1 << 100) | (1 << 50) | (1 << 10),) * 8  # >= 5 bits from a and b
    assert hash_distance(a, b) == 0 and hash_distance(a, c) == 5
    assert near_pairs([a, b, c], threshold=2) == [(0, 1, 0)]
    assert near_pairs([a], threshold=2) == []
    with pytest.raises(ValueError):
        near_pairs([a, b], threshold=256)


@pytest.mark.parametrize("hash_size", [8, 12, 16])
def test_near_pairs_equals_brute_force(hash_size):
    rng = random.Random(hash_size)
    nbits = hash_size * hash_size
    base = [tuple(rng.getrandbits(nbits) for _ in range(8)) for _ in range(150)]
    def flip_bits(h: int) -> int:
        for _ in range(rng.randrange(6)):
            h ^= 1 << rng.randrange(nbits)
        return h

    noisy = [tuple(flip_bits(h) for h in hs) for hs in base[:60]]
    hashes = base + noisy
    for threshold in (0, 3, 9):
        brute = [(i, j, hash_distance(hashes[i], hashes[j])) for i in range(len(hashes))
                 for j in range(i + 1, len(hashes))]
        assert near_pairs(hashes, threshold, hash_size) == sorted(p for p in brute if p[2] <= threshold)


def test_empty_and_repeated_records(tmp_path):
    report = audit([], progress=False)
    assert report.counts()["n_images"] == 0 and report.pairs == []
    assert "Audited 0 images" in format_report(report)
    p = tmp_path / "missing.jpg"
    report = audit([ImageRecord(p), ImageRecord(p)], progress=False)  # same path twice is one image
    assert report.n_images == 1 and report.unreadable[0].reason == "file not found"
    assert duplicate_groups([ImageRecord(p)], report=report) == {p: str(p)}
    with pytest.raises(WbcError, match="threshold"):
        audit([ImageRecord(p)], near_threshold=300, progress=False)


@needs_shared
def test_test_simple_byte_identical_eosinophil_pairs():
    report = audit(discover(TEST_SIMPLE).records, progress=False)
    assert report.n_images == 71 and not report.unreadable
    assert _pairs(report, "exact") == {frozenset({"_0_5239.jpeg", "_4_8814.jpeg"}),
                                       frozenset({"_1_5031.jpeg", "_6_7701.jpeg"})}
    assert all(p.label_a == p.label_b == "eosinophil" for p in report.exact_pairs)
    assert report.n_exact_groups == 2


# The exact-duplicate pairs of the 46 % PBC subset, counted with `sha256sum` over all 7,871 files.
PBC_EXACT_PAIRS = {
    ("basophil/BA_20201.jpg", "basophil/BA_809918.jpg"),
    ("basophil/BA_225540.jpg", "basophil/BA_786369.jpg"),
    ("basophil/BA_251042.jpg", "basophil/BA_988506.jpg"),
    ("basophil/BA_381452.jpg", "basophil/BA_80990.jpg"),
    ("basophil/BA_435917.jpg", "basophil/BA_858229.jpg"),
    ("basophil/BA_546746.jpg", "basophil/BA_685720.jpg"),
    ("eosinophil/EO_65638.jpg", "eosinophil/EO_873756.jpg"),
    ("ig/PMY_187173.jpg", "ig/PMY_225787.jpg"),
    ("ig/PMY_497134.jpg", "ig/PMY_586364.jpg"),
}


@needs_shared
def test_pbc_exact_duplicates():  # ~25 s on a busy 2-core machine
    if not PBC.is_dir():
        pytest.skip(f"{PBC} not present")
    report = audit(discover(PBC).records, progress=False)
    assert report.n_images == 7871 and not report.unreadable

    def rel(p: Path) -> str:
        return p.relative_to(PBC).as_posix()

    found = {tuple(sorted((rel(p.path_a), rel(p.path_b)))) for p in report.exact_pairs}
    expected = set(PBC_EXACT_PAIRS)
    cross = ("eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg")  # the cross-class pair of the full set
    if all((PBC / c).is_file() for c in cross):
        expected.add(cross)
    assert found == expected
    assert report.n_exact_groups == len(expected)
    assert report.n_cross_label_pairs == sum(a.split("/")[0] != b.split("/")[0] for a, b in expected)
    # no other pair of distinct PBC cells comes within the threshold (nearest measured: 64 of 256 bits)
    assert report.near_pairs == [] and report.n_near_groups == report.n_exact_groups


def test_pair_flags():
    p = DuplicatePair("near", 3, Path("a"), "eosinophil", "train", Path("b"), "neutrophil", None)
    assert p.cross_label and not p.cross_split
