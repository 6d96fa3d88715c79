"""Shared by the web-service tests: what to do when a service (PostgreSQL, Chromium) is missing, test images."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: A Kaggle crop (a BCCD field at half size) with one eosinophil: the detector finds it, offline.
CELL_FIELD = ROOT / "src" / "wbc" / "assets" / "samples" / "kaggle_eosinophil_7_1440.jpeg"
BCCD_FIELDS = ROOT.parent / "shared" / "data" / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally; under CI a missing test service is a failure (.ci/run must provide it)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run should have provided it)")
    pytest.skip(reason)


def png_bytes(size=(64, 48), colour=(200, 120, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def wait_for(check, timeout: float = 90.0, every: float = 0.2):
    """Call ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s")
