"""Decode a list of images once into a compact uint8 array, with a disk cache.

Training on two CPU cores is bound by JPEG decoding if every epoch decodes again; a
20k-image set at 128 px is ~1 GB of uint8, so it is decoded once (in parallel), kept in
memory and cached on disk keyed by the files' paths, sizes, mtimes and the preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from .progress import progress as progress_bar

from .data import ImageRecord, handle_bad, load_image
from .errors import BadImageError
from .preprocessing import PreprocessConfig, prepare

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("WBC_CACHE_DIR", Path.home() / ".cache" / "wbc"))


def _decode(args: tuple[str, dict]) -> np.ndarray | tuple[str, str]:
    path, cfg = args
    try:
        return prepare(load_image(path), PreprocessConfig.from_dict(cfg))
    except BadImageError as exc:
        return (str(exc.path), exc.reason)


def _cache_key(records: list[ImageRecord], config: PreprocessConfig) -> str:
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for r in records:
        try:
            st = r.path.stat()
            h.update(f"{r.path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{r.path}|missing\n".encode())
    return h.hexdigest()[:24]


def decode_images(records: list[ImageRecord], config: PreprocessConfig, *, skip_bad: bool = False,
                  workers: int | None = None, cache_dir: Path | None = None,
                  progress: bool = True, desc: str = "decoding") -> tuple[np.ndarray, list[ImageRecord]]:
    """Return ``(images[N, S, S, 3] uint8, kept_records)``.

    Unreadable files raise :class:`wbc.errors.BadImagesError` listing them, or with
    ``skip_bad`` are dropped with a warning. ``cache_dir=None`` uses ``$WBC_CACHE_DIR``
    or ``~/.cache/wbc``.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    key = _cache_key(records, config)
    cache_file = cache_dir / f"images-{key}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file) as z:
                keep = z["keep"]
                images = z["images"]
            kept = [r for r, k in zip(records, keep) if k]
            if len(kept) == len(records) or skip_bad:
                if len(kept) < len(records):
                    log.warning("skipping %d unreadable files (cached result)", len(records) - len(kept))
                return images, kept
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable cache file %s", cache_file)
    size = config.img_size
    images = np.empty((len(records), size, size, 3), dtype=np.uint8)
    keep = np.zeros(len(records), dtype=bool)
    bad: list[BadImageError] = []
    jobs = [(str(r.path), config.to_dict()) for r in records]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    bar = progress_bar(total=len(jobs), desc=desc, unit="img", enabled=progress)
    if workers > 1 and len(jobs) > 256:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_decode, jobs, chunksize=64)
            for i, res in enumerate(results):
                _store(i, res, images, keep, bad)
                bar.update()
    else:
        for i, job in enumerate(jobs):
            _store(i, _decode(job), images, keep, bad)
            bar.update()
    bar.close()
    handle_bad(bad, skip_bad)
    images = images[keep]
    kept = [r for r, k in zip(records, keep) if k]
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".partial.npz")
        np.savez(tmp, images=images, keep=keep)
        os.replace(tmp, cache_file)
    except OSError as exc:  # a read-only home must not stop training
        log.warning("could not write image cache %s: %s", cache_file, exc)
    return images, kept


def _store(i: int, res, images: np.ndarray, keep: np.ndarray, bad: list[BadImageError]) -> None:
    if isinstance(res, tuple):
        bad.append(BadImageError(res[0], res[1]))
    else:
        images[i] = res
        keep[i] = True
