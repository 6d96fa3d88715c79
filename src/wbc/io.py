"""Atomic file writers: write a temporary file next to the target, then ``os.replace`` it.

A reader (or a crashed run) never sees a half-written ``metrics.json``, CSV, PNG or report:
the final name either holds the previous complete file or the new complete file.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "m.json"
>>> write_json(p, {"auc": float("nan"), "n": np.int64(3)})
>>> p.read_text()
'{\\n  "auc": null,\\n  "n": 3\\n}\\n'
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_open", "to_jsonable", "write_bytes", "write_csv", "write_json", "write_text"]


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
                ) -> Iterator[IO[Any]]:
    """Open a temporary file in ``path``'s folder; on success it replaces ``path``, on error it is removed.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary). Parent folders are created. The file gets the
    usual permissions (``0o666`` minus the umask), not the ``0o600`` of :mod:`tempfile`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        kwargs = {} if mode == "wb" else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays, paths, tuples and sets to JSON types; NaN/inf become ``None``.

    >>> to_jsonable({"a": np.array([1.0, np.nan]), "b": (np.float32(0.5),)})
    {'a': [1.0, None], 'b': [0.5]}
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write strict JSON (NaN/inf as ``null``, numpy types converted) atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    write_text(path, text + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: list[str]) -> None:
    """Write ``rows`` as a UTF-8 CSV with a header, atomically. A key not in ``fieldnames`` raises ``ValueError``."""
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
