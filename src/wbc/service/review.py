"""What a reviewer does to an analysed sample: reclassify cells, sign off, export, report, delete.

Every change locks the sample row first (:func:`wbc.service.db.lock_sample`), checks that the
caller saw the current version of what it changes (optimistic concurrency: a stale ``version`` is
a 409 conflict, never a lost update), writes an audit entry (who, when, old, new) and recomputes
the differential through :func:`wbc.service.analysis.differential_of`.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import sqlalchemy as sa
from fastapi import HTTPException
from PIL import Image
from sqlalchemy.orm import Session

from ..classes import canonical_label, display_name
from ..counting import UNKNOWN_REASON, CellRecord, CountConfig, ImageSummary, SampleResult, annotate_field, write_report
from ..data import load_image
from ..detection import Cell as Detection
from ..differential import Differential, plot_differential
from ..errors import BadImageError
from ..report import note_section
from .analysis import sample_dir, store_differential
from .db import Action, AuditEntry, Cell, Field, Sample, Status, iso, lock_sample, utcnow
from .settings import ServiceSettings


def not_found(what: str, ident: int) -> HTTPException:
    return HTTPException(404, f"no {what} with id {ident}")


def get_sample(s: Session, sample_id: int) -> Sample:
    sample = s.get(Sample, sample_id)
    if sample is None:
        raise not_found("sample", sample_id)
    return sample


def _check_editable(sample: Sample) -> None:
    if sample.signed_off:
        raise HTTPException(409, f"sample {sample.id} was signed off by {sample.signed_off_by} at "
                                 f"{iso(sample.signed_off_at)}: it is locked")
    if sample.status != Status.DONE:
        raise HTTPException(409, f"sample {sample.id} is {sample.status}: only analysed samples can be reviewed")


def check_label(label: str, classes: list[str]) -> str:
    canon = canonical_label(label)
    if canon not in classes:
        raise HTTPException(422, f"unknown cell type {label!r}; expected one of {', '.join(classes)}")
    return canon


def reclassify(s: Session, settings: ServiceSettings, classes: list[str], cell_id: int, label: str, user: str,
               version: int | None) -> tuple[Cell, Sample]:
    """Set a cell's type (the same type = confirm the machine's call); recompute the differential."""
    sample_id = s.scalar(sa.select(Cell.sample_id).where(Cell.id == cell_id))
    if sample_id is None:
        raise not_found("cell", cell_id)
    sample = lock_sample(s, sample_id)
    cell = s.get(Cell, cell_id, populate_existing=True)  # as committed before we took the lock
    if sample is None or cell is None:
        raise not_found("cell", cell_id)
    _check_editable(sample)
    label = check_label(label, classes)
    if version is not None and version != cell.version:
        raise HTTPException(409, f"cell {cell_id} was changed by {cell.reviewed_by or 'someone'} at "
                                 f"{iso(cell.reviewed_at)} (now {cell.label}, version {cell.version}); "
                                 "reload it and try again")
    old = cell.label
    cell.label, cell.reviewed_by, cell.reviewed_at = label, user, utcnow()
    cell.version += 1
    s.add(AuditEntry(user=user, action=Action.RECLASSIFY if label != old else Action.CONFIRM, sample_id=sample.id,
                     cell_id=cell.id, old=old, new=label))
    store_differential(sample, sample.cells, settings)
    sample.version += 1
    return cell, sample


def sign_off(s: Session, sample_id: int, user: str, version: int | None) -> Sample:
    """Lock the sample against further changes, recording who signed it off."""
    sample = lock_sample(s, sample_id)
    if sample is None:
        raise not_found("sample", sample_id)
    _check_editable(sample)
    if version is not None and version != sample.version:
        raise HTTPException(409, f"sample {sample_id} changed since you loaded it (version {version}, now "
                                 f"{sample.version}); reload it, check it and sign off again")
    sample.signed_off_by, sample.signed_off_at = user, utcnow()
    sample.version += 1
    pending = sum(c.pending_review for c in sample.cells)
    s.add(AuditEntry(user=user, action=Action.SIGNOFF, sample_id=sample.id,
                     new=f"signed off; {pending} cell(s) still marked for review" if pending else "signed off"))
    return sample


def delete_sample(s: Session, sample_id: int, user: str, force: bool) -> None:
    sample = lock_sample(s, sample_id)
    if sample is None:
        raise not_found("sample", sample_id)
    if sample.signed_off and not force:
        raise HTTPException(409, f"sample {sample_id} is signed off; add ?force=true to delete it anyway")
    s.add(AuditEntry(user=user, action=Action.DELETE, sample_id=sample.id, old=sample.name))
    s.delete(sample)


def remove_files(data_dir: Path, sample_id: int) -> None:
    shutil.rmtree(sample_dir(data_dir, sample_id), ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# export and report


def export_csv(sample: Sample, classes: list[str]) -> str:
    """One row per cell: where it is, the machine's call, the current type and who reviewed it."""
    names = {f.id: f.filename for f in sample.fields}
    columns = ["sample", "reference", "field", "cell", "x_min", "y_min", "x_max", "y_max", "label", "predicted_label",
               "confidence", "marked_for_review", "review_reason", "reviewed_by", "reviewed_at", "at_edge",
               "signed_off_by", "signed_off_at"] + [f"prob_{c}" for c in classes]
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    for c in sample.cells:
        row = {"sample": sample.id, "reference": sample.reference or "", "field": names.get(c.field_id, ""),
               "cell": c.number, "x_min": c.x0, "y_min": c.y0, "x_max": c.x1, "y_max": c.y1, "label": c.label,
               "predicted_label": c.predicted_label, "confidence": f"{c.confidence:.4f}", "marked_for_review": int(c.review),
               "review_reason": c.review_reason or "", "reviewed_by": c.reviewed_by or "",
               "reviewed_at": iso(c.reviewed_at) or "", "at_edge": int(c.at_edge),
               "signed_off_by": sample.signed_off_by or "", "signed_off_at": iso(sample.signed_off_at) or ""}
        row.update({f"prob_{k}": f"{c.probabilities.get(k, 0.0):.4f}" for k in classes})
        w.writerow(row)
    return buf.getvalue()


def _outline(box: tuple[int, int, int, int]) -> np.ndarray:
    """An ellipse inscribed in the box: the drawn outline of a stored cell (its mask is not kept)."""
    w, h = box[2] - box[0], box[3] - box[1]
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def _preview(path: Path, cells: list[Cell], records: list[CellRecord], classes: list[str]) -> bytes:
    try:
        rgb = np.asarray(load_image(path))
    except BadImageError:
        return b""
    dets = [Detection((c.x0, c.y0, c.x1, c.y1), _outline((c.x0, c.y0, c.x1, c.y1)), 0.0, c.at_edge) for c in cells]
    img = Image.fromarray(annotate_field(rgb, dets, records, classes, max_side=1800))
    img.thumbnail((900, 900))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _review_note(sample: Sample) -> str:
    changed = [c for c in sample.cells if c.label != c.predicted_label]
    looked = sum(c.reviewed_at is not None for c in sample.cells)
    text = (f"{looked} cell(s) reviewed by a person, {len(changed)} of them reclassified"
            + (": " + "; ".join(f"#{c.number} {display_name(c.predicted_label)} → {display_name(c.label)} "
                                f"({c.reviewed_by})" for c in changed[:40]) if changed else "")
            + (" …" if len(changed) > 40 else "") + ".")
    if sample.signed_off:
        text += f"\n\nSigned off by {sample.signed_off_by} at {iso(sample.signed_off_at)}."
    else:
        text += "\n\nNot signed off: a preliminary result."
    return text


def build_report(sample: Sample, settings: ServiceSettings, classes: list[str], threshold: float) -> Path:
    """``report.html`` of the sample as it is now (current labels, review and sign-off), cached per version."""
    out = sample_dir(settings.data_dir, sample.id) / "report"
    path = out / f"report-v{sample.version}.html"
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    folder = sample_dir(settings.data_dir, sample.id)
    by_field: dict[int, list[Cell]] = {}
    for c in sample.cells:
        by_field.setdefault(c.field_id, []).append(c)
    names = {f.id: f.filename for f in sample.fields}

    def record(c: Cell) -> CellRecord:
        thumb = folder / "cells" / f"{c.number}.jpg"
        return CellRecord(names[c.field_id], c.number, (c.x0, c.y0, c.x1, c.y1), c.label, c.confidence,
                          c.pending_review, c.review_reason or "", c.at_edge, dict(c.probabilities),
                          thumb.read_bytes() if thumb.is_file() else b"",
                          c.pending_review and UNKNOWN_REASON in (c.review_reason or ""))

    cfg = CountConfig(inputs=[], out=str(out), model=settings.model, review_threshold=threshold,
                      min_cells=settings.min_cells)
    images = []
    for f in sample.fields:
        cells = by_field.get(f.id, [])
        preview = b""
        if f.error is None and f.width and sum(bool(i.preview) for i in images) < cfg.annotated_in_report:
            preview = _preview(folder / "fields" / f.stored, cells, [record(c) for c in cells], classes)
        images.append(ImageSummary(f.filename, f.width or 0, f.height or 0, f.n_cells or 0, list(f.quality or []),
                                   f.error, f.annotated, 0.0, preview))
    diff = Differential(**sample.differential)
    plot_differential(diff, out / "differential.png")
    analysis = sample.analysis or {}
    res = SampleResult(sample.name, out, diff, [record(c) for c in sample.cells], images, analysis.get("rbc_px"),
                       analysis.get("seconds", 0.0))
    write_report(res, cfg, threshold, extra=[note_section("Review", _review_note(sample))])
    (out / "report.html").replace(path)
    for old in out.glob("report-v*.html"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def audit_trail(s: Session, sample_id: int) -> list[AuditEntry]:
    return list(s.scalars(sa.select(AuditEntry).where(AuditEntry.sample_id == sample_id).order_by(AuditEntry.id)))


def field_of(s: Session, field_id: int) -> Field:
    f = s.get(Field, field_id)
    if f is None:
        raise not_found("field", field_id)
    return f
