"""Shared fixtures: real images from ../shared/data (skipped when absent) and the bundled samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLES = ROOT / "src" / "wbc" / "assets" / "samples"
PBC = SHARED / "PBC_dataset_normal_DIB"
KAGGLE = SHARED / "blood-cells" / "dataset2-master" / "dataset2-master" / "images"
SOURCE_MAP = SHARED / "blood-cells" / "provenance" / "dataset2_source_map.csv"
BCCD = SHARED / "BCCD_Dataset" / "BCCD"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # decoded-image caches of tests go to a temp dir, never the user's ~/.cache
    os.environ["WBC_CACHE_DIR"] = str(tmp_path_factory.mktemp("wbc-cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def need_shared() -> None:
    if not PBC.is_dir():
        pytest.skip("../shared/data is not available")


@pytest.fixture
def shared():
    need_shared()
    return SHARED


def tiny_class_tree(dst: Path, per_class: int = 6, classes=("lymphocyte", "neutrophil", "eosinophil")) -> Path:
    """Copy a few real PBC images per class into ``dst/<class>/`` (for fast training tests)."""
    need_shared()
    import shutil
    for c in classes:
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((PBC / c).glob("*.jpg"))[:per_class]:
            shutil.copy(f, dst / c / f.name)
    return dst
