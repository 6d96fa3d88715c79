"""The JSON the API speaks: request bodies and responses (they document themselves at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..classes import display_name
from . import db

API = "/api/v1"

User = Field(min_length=1, max_length=100, description="who does it (kept in the audit trail)")


class CellPatch(BaseModel):
    label: str = Field(description="the cell type, e.g. lymphocyte (synonyms such as 'lymph' are accepted)")
    user: str = User
    version: int | None = Field(None, description="the cell's version you saw; 409 if it changed since "
                                                  "(the If-Match header does the same)")


class SignOff(BaseModel):
    user: str = User
    version: int | None = Field(None, description="the sample's version you reviewed; 409 if it changed since")


class FileError(BaseModel):
    filename: str
    status: int = Field(description="HTTP status this file alone would get: 413 too large, 415 not an image, "
                                    "422 unreadable")
    error: str


class Prediction(BaseModel):
    filename: str
    label: str
    display_name: str
    confidence: float
    review: bool = Field(description="calibrated confidence below the review threshold, or unknown")
    unknown: bool = Field(False, description="unlike any cell the model knows (logit energy below the model's "
                                             "unknown threshold; never for classical models): perhaps not a WBC")
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    results: list[Prediction | FileError]
    review_threshold: float


class FieldOut(BaseModel):
    id: int
    filename: str
    width: int | None
    height: int | None
    n_cells: int | None
    quality: list[str]
    error: str | None
    image_url: str
    annotated_url: str | None


class CellOut(BaseModel):
    id: int
    sample_id: int
    field_id: int
    number: int
    box: list[int] = Field(description="x_min, y_min, x_max, y_max in field pixels")
    label: str
    display_name: str
    predicted_label: str
    confidence: float
    review: bool = Field(description="marked for review and not yet looked at by a person")
    marked_for_review: bool = Field(description="marked for review by the analysis")
    review_reason: str | None
    at_edge: bool
    reviewed_by: str | None
    reviewed_at: str | None
    version: int
    image_url: str
    probabilities: dict[str, float]


class SampleSummary(BaseModel):
    id: int
    reference: str | None
    status: str
    progress: float
    stage: str | None
    error: str | None
    created_at: str | None
    created_by: str | None
    analysed_at: str | None
    signed_off_by: str | None
    signed_off_at: str | None
    n_fields: int
    n_cells: int | None
    n_review: int | None
    flags: list[str]
    version: int
    url: str


class SampleOut(SampleSummary):
    wbc_count: float | None
    age: float | None
    sex: str | None
    differential: dict[str, Any] | None
    analysis: dict[str, Any] | None
    fields: list[FieldOut]
    cells: list[CellOut]
    files: list[FileError] = Field(default_factory=list, description="uploaded files that were refused (on create)")


class SampleList(BaseModel):
    total: int
    items: list[SampleSummary]


class CellChange(BaseModel):
    cell: CellOut
    sample: SampleOut


class AuditOut(BaseModel):
    id: int
    at: str | None
    user: str
    action: str
    sample_id: int
    cell_id: int | None
    old: str | None
    new: str | None


# ----------------------------------------------------------------------------------------------


def cell_out(c: db.Cell) -> dict[str, Any]:
    return {"id": c.id, "sample_id": c.sample_id, "field_id": c.field_id, "number": c.number,
            "box": [c.x0, c.y0, c.x1, c.y1], "label": c.label, "display_name": display_name(c.label),
            "predicted_label": c.predicted_label, "confidence": c.confidence, "review": c.pending_review,
            "marked_for_review": c.review, "review_reason": c.review_reason, "at_edge": c.at_edge,
            "reviewed_by": c.reviewed_by, "reviewed_at": db.iso(c.reviewed_at), "version": c.version,
            "image_url": f"{API}/cells/{c.id}/image", "probabilities": c.probabilities}


def field_out(f: db.Field) -> dict[str, Any]:
    return {"id": f.id, "filename": f.filename, "width": f.width, "height": f.height, "n_cells": f.n_cells,
            "quality": list(f.quality or []), "error": f.error, "image_url": f"{API}/fields/{f.id}/image",
            "annotated_url": f"{API}/fields/{f.id}/annotated" if f.annotated else None}


def sample_summary(s: db.Sample, n_fields: int | None = None) -> dict[str, Any]:
    d = s.differential or {}
    return {"id": s.id, "reference": s.reference, "status": s.status, "progress": s.progress, "stage": s.stage,
            "error": s.error, "created_at": db.iso(s.created_at), "created_by": s.created_by,
            "analysed_at": db.iso(s.analysed_at), "signed_off_by": s.signed_off_by,
            "signed_off_at": db.iso(s.signed_off_at), "n_fields": len(s.fields) if n_fields is None else n_fields,
            "n_cells": d.get("n_cells"), "n_review": d.get("n_review"), "flags": list(d.get("flags", [])),
            "version": s.version, "url": f"{API}/samples/{s.id}"}


def sample_out(s: db.Sample, cells: bool = True) -> dict[str, Any]:
    return {**sample_summary(s), "wbc_count": s.wbc_count, "age": s.age, "sex": s.sex, "differential": s.differential,
            "analysis": s.analysis, "fields": [field_out(f) for f in s.fields],
            "cells": [cell_out(c) for c in s.cells] if cells else []}


def audit_out(a: db.AuditEntry) -> dict[str, Any]:
    return {"id": a.id, "at": db.iso(a.at), "user": a.user, "action": a.action, "sample_id": a.sample_id,
            "cell_id": a.cell_id, "old": a.old, "new": a.new}
