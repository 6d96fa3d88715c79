"""Background analysis of uploaded samples: :func:`wbc.counting.count_sample` in a worker thread.

The database is the queue. A sample is ``queued`` when uploaded; the worker claims the oldest one
(``analysing``), counts it with progress written back every half second, and stores fields,
cells and the differential in one transaction (``done``), or the reason it could not (``failed``).
Nothing is lost when the server is killed: on start, every sample left ``analysing`` is queued
again, unless its analysis has already been cut short ``max_attempts`` times, in which case it is
marked failed with that reason (a sample that crashes the server must not crash it forever).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from ..counting import CountConfig, SampleResult, count_sample, review_threshold
from ..counting import Sample as CountSample
from ..differential import Differential, compute_differential
from ..errors import WbcError
from ..io import to_jsonable, write_bytes
from ..reference_ranges import load_ranges, select_band
from .db import Cell, Database, Sample, Status, lock_sample, utcnow
from .settings import ServiceSettings

log = logging.getLogger("wbc.service")

#: Share of the progress bar for the first pass over the fields (reading and checking them).
_CHECKING_SHARE = 0.25
_PROGRESS_EVERY_S = 0.5


def sample_dir(data_dir: Path, sample_id: int) -> Path:
    return data_dir / "samples" / str(sample_id)


class SharedPredictor:
    """The server's one predictor; its ``predict*`` and ``logits*`` methods run one call at a time.

    On two cores, concurrent inference calls only compete for the same cores (each already uses
    all of them), so requests queue here instead of thrashing.
    """

    def __init__(self, predictor):
        self._predictor = predictor
        self._lock = threading.Lock()
        self.classes = list(predictor.classes)

    def __getattr__(self, name: str):
        attr = getattr(self._predictor, name)
        if name.startswith(("predict", "logits")) and callable(attr):
            def locked(*args, **kwargs):
                with self._lock:
                    return attr(*args, **kwargs)
            return locked
        return attr


def differential_of(sample: Sample, cells: Sequence[Cell], settings: ServiceSettings) -> Differential:
    """The sample's differential from its cells' current labels (recomputed after every change).

    Cells a person has looked at no longer count as "for review". The analysis' own warnings
    (unreadable files, field-quality flags) are carried over.
    """
    table = load_ranges(settings.ranges)
    band = select_band(table, sample.age, sample.sex)
    analysis = sample.analysis or {}
    d = compute_differential([c.label for c in cells], sample_id=sample.name, review=[c.pending_review for c in cells],
                             wbc_count=sample.wbc_count, band=band, table=table, min_cells=settings.min_cells,
                             n_images=analysis.get("n_images", 0))
    d.warnings += analysis.get("warnings", [])
    return d


def store_differential(sample: Sample, cells: Sequence[Cell], settings: ServiceSettings) -> None:
    sample.differential = to_jsonable(differential_of(sample, cells, settings).to_dict())


class _Cancelled(Exception):
    """The sample was deleted while it was being analysed."""


class _Stopping(Exception):
    """The server is shutting down; the sample goes back to the queue."""


class Analyser:
    """Owns the worker thread. ``notify()`` after queueing a sample; ``cancel(id)`` before deleting one."""

    def __init__(self, settings: ServiceSettings, db: Database, predictor: SharedPredictor):
        self.settings = settings
        self.db = db
        self.predictor = predictor
        self.threshold = review_threshold(predictor, settings.review_threshold)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancelled: set[int] = set()
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="wbc-analysis", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        self._wake.set()

    def cancel(self, sample_id: int) -> None:
        self._cancelled.add(sample_id)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def recover(self) -> None:
        """Queue again (or fail, after ``max_attempts``) every analysis a stopped server left behind."""
        with self.db.write.begin() as s:
            for sample in s.scalars(sa.select(Sample).where(Sample.status == Status.ANALYSING)).all():
                if sample.attempts >= self.settings.max_attempts:
                    sample.status = Status.FAILED
                    sample.error = (f"the server stopped during this sample's analysis {sample.attempts} times; "
                                    "delete the sample and upload its fields again (or fewer of them)")
                    log.warning("sample %s: %s", sample.id, sample.error)
                else:
                    sample.status, sample.stage = Status.QUEUED, "queued again after a server restart"
                    log.info("sample %s: analysis resumes after a server restart", sample.id)
                sample.progress = 0.0
                sample.version += 1

    # -- worker

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sample_id = self._claim()
            except Exception:  # the database may be briefly unreachable: try again  # noqa: BLE001
                log.exception("could not look for queued samples")
                sample_id = None
            if sample_id is None:
                self._wake.wait(2.0)
                self._wake.clear()
                continue
            self.analyse(sample_id)

    def _claim(self) -> int | None:
        with self.db.write.begin() as s:
            sample = s.scalars(sa.select(Sample).where(Sample.status == Status.QUEUED).order_by(Sample.id).limit(1)
                               .with_for_update(skip_locked=True)).first()
            if sample is None:
                return None
            sample.status, sample.stage, sample.progress = Status.ANALYSING, "starting", 0.0
            sample.attempts += 1
            sample.version += 1
            return sample.id

    def _update(self, sample_id: int, **values) -> None:
        with self.db.write.begin() as s:
            s.execute(sa.update(Sample).where(Sample.id == sample_id, Sample.status == Status.ANALYSING).values(**values))

    def analyse(self, sample_id: int) -> None:
        """Count one claimed sample and store the result (or the reason it failed)."""
        with self.db.read() as s:
            sample = s.get(Sample, sample_id)
            if sample is None:
                return
            fields = list(sample.fields)
            cfg_args = {"sample_id": sample.name, "wbc_count": sample.wbc_count, "age": sample.age, "sex": sample.sex}
        folder = sample_dir(self.settings.data_dir, sample_id)
        for sub in ("analysis", "cells"):  # leftovers of an interrupted attempt
            shutil.rmtree(folder / sub, ignore_errors=True)
        paths = [folder / "fields" / f.stored for f in fields]
        field_of = {str(p): f.id for p, f in zip(paths, fields)}
        last = [0.0]

        def on_progress(stage: str, done: int, total: int) -> None:
            if self._stop.is_set():
                raise _Stopping
            if sample_id in self._cancelled:
                raise _Cancelled
            now = time.monotonic()
            if now - last[0] >= _PROGRESS_EVERY_S:
                last[0] = now
                share = (0.0, _CHECKING_SHARE) if stage == "checking" else (_CHECKING_SHARE, 1 - _CHECKING_SHARE)
                self._update(sample_id, progress=round(share[0] + share[1] * done / max(total, 1), 3),
                             stage=f"{stage} field {done + 1} of {total}")

        cfg = CountConfig(inputs=[str(p) for p in paths], out=str(folder / "analysis"), model=self.settings.model,
                          ranges=self.settings.ranges, review_threshold=self.settings.review_threshold,
                          min_cells=self.settings.min_cells, on_progress=on_progress, **cfg_args)
        try:
            result = count_sample(CountSample(cfg_args["sample_id"], paths), folder / "analysis", self.predictor, cfg)
            self._store(sample_id, result, field_of)
        except _Cancelled:  # deleted meanwhile: whatever the analysis wrote since goes too
            self._cancelled.discard(sample_id)
            shutil.rmtree(folder, ignore_errors=True)
        except _Stopping:
            self._update(sample_id, status=Status.QUEUED, stage="queued again after a server restart",
                         attempts=Sample.attempts - 1, progress=0.0)
        except WbcError as exc:
            self._fail(sample_id, str(exc))
        except Exception as exc:  # noqa: BLE001  the full traceback goes to the server log only
            log.exception("sample %s: analysis failed", sample_id)
            self._fail(sample_id, f"analysis failed ({exc.__class__.__name__}: {exc}); see the server log")

    def _fail(self, sample_id: int, reason: str) -> None:
        self._update(sample_id, status=Status.FAILED, error=reason, stage=None, version=Sample.version + 1)

    def _store(self, sample_id: int, result: SampleResult, field_of: dict[str, int]) -> None:
        folder = sample_dir(self.settings.data_dir, sample_id)
        for rec in result.cells:
            write_bytes(folder / "cells" / f"{rec.cell_id}.jpg", rec.thumbnail)
        with self.db.write.begin() as s:
            sample = lock_sample(s, sample_id)
            if sample is None or sample.status != Status.ANALYSING:  # deleted meanwhile
                if sample is None:
                    self._cancelled.discard(sample_id)
                    shutil.rmtree(folder, ignore_errors=True)
                return
            by_id = {f.id: f for f in sample.fields}
            for im in result.images:
                f = by_id[field_of[im.image]]
                f.width, f.height, f.quality, f.error, f.annotated = im.width or None, im.height or None, im.quality, \
                    im.error, im.annotated
                f.n_cells = None if im.error else im.n_cells
            cells = [Cell(sample_id=sample_id, field_id=field_of[r.image], number=r.cell_id, x0=int(r.box[0]),
                          y0=int(r.box[1]), x1=int(r.box[2]), y1=int(r.box[3]), label=r.label, predicted_label=r.label,
                          confidence=float(r.confidence), probabilities=to_jsonable(r.probabilities),
                          review=bool(r.review), review_reason=r.review_reason or None, at_edge=bool(r.at_edge))
                     for r in result.cells]
            s.add_all(cells)
            n_read = sum(im.error is None for im in result.images)
            sample.analysis = {"n_images": n_read}
            own = differential_of(sample, cells, self.settings).warnings
            sample.analysis = to_jsonable({
                "n_images": n_read, "warnings": [w for w in result.differential.warnings if w not in own],
                "model": self.settings.model or "bundled default", "review_threshold": self.threshold,
                "rbc_px": result.rbc_px, "seconds": round(result.seconds, 3)})
            store_differential(sample, cells, self.settings)
            sample.status, sample.progress, sample.stage, sample.error = Status.DONE, 1.0, None, None
            sample.analysed_at = utcnow()
            sample.version += 1
        log.info("sample %s: %d cells in %d field(s), %.1f s", sample_id, len(result.cells), len(result.images),
                 result.seconds)
