"""The ``wbc serve`` web application: the API under ``/api/v1`` (docs at ``/docs``) and the review UI at ``/``.

:func:`create_app` opens (and migrates) the database, loads the model once and returns a FastAPI
app whose lifespan runs the background analysis worker. The routes are thin: validation lives in
:mod:`.uploads`, analysis in :mod:`.analysis`, review operations in :mod:`.review`.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import numpy as np
import sqlalchemy as sa
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.orm import selectinload

from .. import __version__
from ..classes import display_name
from ..differential import LEUKOCYTES, TYPE_COLOURS_HEX
from ..errors import WbcError
from ..ood import is_unknown, model_threshold, score_images
from ..reference_ranges import load_ranges, select_band
from . import schemas
from .analysis import Analyser, SharedPredictor, sample_dir
from .db import Action, AuditEntry, Cell, Database, Field, Sample, Status
from .review import (audit_trail, build_report, check_label, delete_sample, export_csv, field_of, get_sample,
                     not_found, reclassify, remove_files, sign_off)
from .schemas import API
from .settings import ServiceSettings, is_loopback
from .uploads import RequestSizeLimit, UploadError, error_entry, read_upload, store_and_decode

log = logging.getLogger("wbc.service")
STATIC = Path(__file__).resolve().parent / "static"

#: One key per cell type for the review UI (a technologist's muscle memory: the type's initial).
SHORTCUT_KEYS = {"neutrophil": "n", "lymphocyte": "l", "monocyte": "m", "eosinophil": "e", "basophil": "b",
                 "ig": "i", "erythroblast": "r", "platelet": "p"}
#: The UI page: nothing but this server's own files may load or run.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass
class Service:
    settings: ServiceSettings
    db: Database
    predictor: SharedPredictor
    analyser: Analyser

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes


def service(request: Request) -> Service:
    return request.app.state.service


Svc = Annotated[Service, Depends(service)]
_bearer = HTTPBearer(auto_error=False, description="the server's API token (wbc serve --token or WBC_TOKEN); "
                                                   "needed for every change when the server has one")


def writer(request: Request, svc: Svc, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Changes need the API token when the server has one (always when it listens beyond loopback).

    A browser's cross-site request (another page posting to this server) is refused by its Origin.
    """
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"cross-site request from {origin} refused: use this server's own page or the API")
    token = svc.settings.token
    if token and not (cred and secrets.compare_digest(cred.credentials.encode(), token.encode())):
        raise HTTPException(401, "this server needs its API token for changes: send 'Authorization: Bearer <token>' "
                                 "(the token given to wbc serve --token or WBC_TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})


Write = [Depends(writer)]


def _if_match(value: str | None) -> int | None:
    """``If-Match: "3"`` or ``W/"3"`` -> 3."""
    if value is None:
        return None
    m = re.fullmatch(r'\s*(?:W/)?"?(\d+)"?\s*', value)
    if not m:
        raise HTTPException(400, f"If-Match must be a version number such as \"3\", got {value!r}")
    return int(m.group(1))


def _version(body: int | None, header: str | None) -> int | None:
    h = _if_match(header)
    if body is not None and h is not None and body != h:
        raise HTTPException(400, f"version {body} in the body and If-Match {h} disagree")
    return body if body is not None else h


def _no_usable(errors: list[dict], key: str) -> JSONResponse:
    first = errors[0] if errors else {"status": 422, "error": "no files"}
    return JSONResponse({"detail": f"no usable image: {first['error']}", key: errors}, status_code=first["status"])


def _error_summary(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(settings: ServiceSettings, predictor=None) -> FastAPI:
    """The app for ``settings``; ``predictor`` defaults to ``load_predictor(settings.model)``.

    Raises:
        WbcError: bad settings, an unreachable database or an unloadable model.
    """
    settings.check()
    select_band(load_ranges(settings.ranges))  # a bad --ranges file stops the server now, not every upload
    (settings.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    db.migrate()
    if predictor is None:
        from ..inference import load_predictor
        predictor = load_predictor(settings.model, precision=settings.precision, batch_size=settings.batch_size,
                                   backend=settings.backend)
    shared = SharedPredictor(predictor)
    svc = Service(settings, db, shared, Analyser(settings, db, shared))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.analyser.start()
        yield
        svc.analyser.stop()
        db.dispose()

    app = FastAPIOffline(
        title="wbc", version=__version__, lifespan=lifespan, openapi_url=f"{API}/openapi.json", redoc_url=None,
        description="Automated white-blood-cell differential: upload smear fields, review the cells, sign off. "
                    "Changes need `Authorization: Bearer <token>` when the server has a token.")
    app.state.service = svc
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    # on loopback, only loopback names: a web page cannot reach us by rebinding its DNS name to 127.0.0.1
    local_only = is_loopback(settings.host)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        if local_only and not is_loopback(request.url.hostname or ""):
            return JSONResponse({"detail": f"host {request.url.hostname!r} refused: this server answers on "
                                           "loopback names only (127.0.0.1, localhost)"}, status_code=400)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse({"detail": _error_summary(exc), "errors": errors}, status_code=422)

    @app.exception_handler(WbcError)
    async def user_error(request: Request, exc: WbcError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal server error ({exc.__class__.__name__}); the server log has the "
                                       "details"}, status_code=500)

    _routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    return app


def _routes(app: FastAPI) -> None:  # noqa: C901  one place lists every endpoint
    @app.get(f"{API}/health", tags=["service"])
    def health(svc: Svc):
        """Liveness: database reachable, analysis worker running, queue length."""
        try:
            with svc.db.read() as s:
                counts = dict(s.execute(sa.select(Sample.status, sa.func.count()).group_by(Sample.status)).all())
        except sa.exc.SQLAlchemyError:
            return JSONResponse({"status": "error", "detail": "database unreachable"}, status_code=503)
        ok = svc.analyser.alive
        return JSONResponse({"status": "ok" if ok else "degraded", "version": __version__, "database": svc.db.backend,
                             "analysis_worker": "running" if ok else "stopped",
                             "queued": counts.get(Status.QUEUED, 0), "analysing": counts.get(Status.ANALYSING, 0)},
                            status_code=200 if ok else 503)

    @app.get(f"{API}/info", tags=["service"])
    def info(svc: Svc):
        """What a client needs to know: cell types with their keyboard shortcut and colour, limits, token."""
        keys = dict(SHORTCUT_KEYS)
        spare = iter("123456789")
        classes = [{"name": c, "display_name": display_name(c), "key": keys.get(c) or next(spare, ""),
                    "colour": TYPE_COLOURS_HEX.get(c, "#777777")} for c in svc.classes]
        st = svc.settings
        return {"version": __version__, "token_required": bool(st.token), "classes": classes,
                "differential_types": list(LEUKOCYTES),
                "review_threshold": svc.analyser.threshold, "model": st.model or "bundled default",
                "limits": {"max_file_mb": st.max_file_mb, "max_request_mb": st.max_request_mb,
                           "max_files": st.max_files, "max_megapixels": st.max_megapixels}}

    @app.post(f"{API}/classify", tags=["classify"], dependencies=Write, response_model=schemas.ClassifyResponse,
              responses={413: {"description": "too large"}, 415: {"description": "no file was an image"}})
    def classify(svc: Svc, files: Annotated[list[UploadFile], File(description="single-cell images")]):
        """Classify single-cell images: type, calibrated confidence and probabilities per file.

        A bad file is reported in its place; the others are still classified. Only when no file
        is usable does the request fail, with that file's status.
        """
        st = svc.settings
        if len(files) > st.max_files:
            raise HTTPException(413, f"{len(files)} files; the limit is {st.max_files} per request (--max-files)")
        results: list[dict] = []
        batch: list = []  # (index, name, image): decoded images are classified 64 at a time, then dropped

        def flush() -> None:
            probs, scores = score_images(svc.predictor, [im for _, _, im in batch])
            unknown = is_unknown(scores, model_threshold(svc.predictor))
            for (i, name, _), p, u in zip(batch, probs, unknown):
                k = int(np.argmax(p))
                results[i] = {"filename": name, "label": svc.classes[k], "display_name": display_name(svc.classes[k]),
                              "confidence": float(p[k]), "review": bool(p[k] < svc.analyser.threshold or u),
                              "unknown": bool(u), "probabilities": {c: float(v) for c, v in zip(svc.classes, p)}}
            batch.clear()

        with tempfile.TemporaryDirectory(dir=st.data_dir / "tmp") as tmp:
            for i, f in enumerate(files):
                try:
                    img = read_upload(f.file, f.filename, st.max_file_bytes, int(st.max_megapixels * 1e6))
                    batch.append((i, img.filename, store_and_decode(img, Path(tmp) / f"{i}{img.ext}")))
                    results.append({})  # filled in by flush()
                except UploadError as exc:
                    results.append(error_entry(f.filename, exc))
                if len(batch) == 64:
                    flush()
        if batch:
            flush()
        if all("error" in r for r in results):
            return _no_usable(results, "results")
        return {"results": results, "review_threshold": svc.analyser.threshold}

    @app.post(f"{API}/samples", tags=["samples"], dependencies=Write, status_code=202, response_model=schemas.SampleOut,
              responses={413: {"description": "too large"}, 415: {"description": "no file was an image"}})
    def create_sample(
            svc: Svc, response: Response,
            files: Annotated[list[UploadFile], File(description="smear field photographs of one sample")],
            reference: Annotated[str | None, Form(max_length=200, description="patient/sample reference")] = None,
            wbc_count: Annotated[float | None, Form(ge=0, le=1000, description="total WBC count, 10^9/L")] = None,
            age: Annotated[float | None, Form(ge=0, le=150, description="years; selects the reference band")] = None,
            sex: Annotated[Literal["male", "female"] | None, Form()] = None,
            user: Annotated[str | None, Form(max_length=100, description="who uploads it")] = None):
        """Create a sample from its fields; the analysis runs in the background (poll ``GET /samples/{id}``).

        Returns 202 at once with the sample (status ``queued``) and, under ``files``, every file
        that was refused and why; the others are kept.
        """
        st = svc.settings
        if len(files) > st.max_files:
            raise HTTPException(413, f"{len(files)} files; the limit is {st.max_files} per sample (--max-files)")
        select_band(load_ranges(st.ranges), age, sex)  # a bad age is the client's error, now, not the worker's
        errors: list[dict] = []
        staging = Path(tempfile.mkdtemp(dir=st.data_dir / "tmp"))
        try:
            kept = []
            for f in files:
                try:
                    img = read_upload(f.file, f.filename, st.max_file_bytes, int(st.max_megapixels * 1e6))
                    stored = f"{len(kept) + 1}{img.ext}"
                    store_and_decode(img, staging / stored)
                    kept.append((img, stored))
                except UploadError as exc:
                    errors.append(error_entry(f.filename, exc))
            if not kept:
                return _no_usable(errors, "files")
            with svc.db.write.begin() as s:
                sample = Sample(reference=(reference or "").strip() or None, wbc_count=wbc_count, age=age, sex=sex,
                                status=Status.QUEUED, created_by=user)
                s.add(sample)
                s.flush()
                for pos, (img, stored) in enumerate(kept):
                    s.add(Field(sample_id=sample.id, position=pos, filename=img.filename, stored=stored,
                                media_type=img.media_type, size=len(img.data), width=img.width, height=img.height))
                s.add(AuditEntry(user=user or "unknown", action=Action.CREATE, sample_id=sample.id,
                                 new=f"{len(kept)} field(s)"))
                folder = sample_dir(st.data_dir, sample.id)
                shutil.rmtree(folder, ignore_errors=True)  # an id whose transaction never committed
                folder.mkdir(parents=True)
                staging.replace(folder / "fields")
            sample_id = sample.id
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        svc.analyser.notify()
        with svc.db.read() as s:
            out = schemas.sample_out(get_sample(s, sample_id))
        response.headers["Location"] = out["url"]
        return {**out, "files": errors}

    @app.get(f"{API}/samples", tags=["samples"], response_model=schemas.SampleList)
    def list_samples(svc: Svc, status: Status | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                     offset: Annotated[int, Query(ge=0)] = 0):
        """Samples, newest first, with status, progress, counts and flags."""
        with svc.db.read() as s:
            q = sa.select(Sample)
            if status is not None:
                q = q.where(Sample.status == status)
            total = s.scalar(sa.select(sa.func.count()).select_from(q.subquery()))
            rows = s.scalars(q.options(selectinload(Sample.fields)).order_by(Sample.id.desc())
                             .limit(limit).offset(offset)).all()
            return {"total": total, "items": [schemas.sample_summary(r) for r in rows]}

    @app.get(f"{API}/samples/{{sample_id}}", tags=["samples"], response_model=schemas.SampleOut)
    def read_sample(svc: Svc, sample_id: int, response: Response):
        """The sample with its status and progress, differential (ranges, flags), fields and cells."""
        with svc.db.read() as s:
            sample = s.scalars(sa.select(Sample).where(Sample.id == sample_id)
                               .options(selectinload(Sample.fields), selectinload(Sample.cells))).first()
            if sample is None:
                raise not_found("sample", sample_id)
            response.headers["ETag"] = f'"{sample.version}"'
            return schemas.sample_out(sample)

    @app.get(f"{API}/samples/{{sample_id}}/cells", tags=["samples"], response_model=list[schemas.CellOut])
    def list_cells(svc: Svc, sample_id: int, label: str | None = None,
                   review: Annotated[bool | None, Query(description="only cells still for review (or not)")] = None):
        """The sample's cells, optionally of one type (``label``) and/or still marked for review."""
        with svc.db.read() as s:
            get_sample(s, sample_id)
            q = sa.select(Cell).where(Cell.sample_id == sample_id).order_by(Cell.number)
            if label is not None:
                q = q.where(Cell.label == check_label(label, svc.classes))
            cells = s.scalars(q).all()
            return [schemas.cell_out(c) for c in cells if review is None or c.pending_review == review]

    @app.get(f"{API}/cells/{{cell_id}}", tags=["cells"], response_model=schemas.CellOut)
    def read_cell(svc: Svc, cell_id: int, response: Response):
        with svc.db.read() as s:
            cell = s.get(Cell, cell_id)
            if cell is None:
                raise not_found("cell", cell_id)
            response.headers["ETag"] = f'"{cell.version}"'
            return schemas.cell_out(cell)

    @app.patch(f"{API}/cells/{{cell_id}}", tags=["cells"], dependencies=Write, response_model=schemas.CellChange,
               responses={409: {"description": "the cell changed since `version`, or the sample is signed off"}})
    def patch_cell(svc: Svc, cell_id: int, body: schemas.CellPatch, response: Response,
                   if_match: Annotated[str | None, Header()] = None):
        """Reclassify a cell (the same label confirms it); the differential is recomputed and the change audited.

        Send the ``version`` you saw (or ``If-Match``) so that a concurrent edit is a 409, not a lost update.
        """
        with svc.db.write.begin() as s:
            cell, sample = reclassify(s, svc.settings, svc.classes, cell_id, body.label, body.user,
                                      _version(body.version, if_match))
            out = {"cell": schemas.cell_out(cell), "sample": schemas.sample_out(sample, cells=False)}
        response.headers["ETag"] = f'"{out["cell"]["version"]}"'
        return out

    @app.post(f"{API}/samples/{{sample_id}}/signoff", tags=["samples"], dependencies=Write,
              response_model=schemas.SampleOut,
              responses={409: {"description": "already signed off, not analysed, or changed since `version`"}})
    def signoff(svc: Svc, sample_id: int, body: schemas.SignOff, if_match: Annotated[str | None, Header()] = None):
        """Sign the sample off: it is locked against further changes."""
        with svc.db.write.begin() as s:
            sample = sign_off(s, sample_id, body.user, _version(body.version, if_match))
            return schemas.sample_out(sample)

    @app.get(f"{API}/samples/{{sample_id}}/audit", tags=["samples"], response_model=list[schemas.AuditOut])
    def audit(svc: Svc, sample_id: int):
        """Every change to the sample: who, when, old, new (kept after the sample is deleted)."""
        with svc.db.read() as s:
            entries = audit_trail(s, sample_id)
            if not entries:
                raise not_found("sample", sample_id)
            return [schemas.audit_out(a) for a in entries]

    def _analysed(s, sample_id: int) -> Sample:
        sample = get_sample(s, sample_id)
        if sample.status != Status.DONE:
            raise HTTPException(409, f"sample {sample_id} is {sample.status}: there is no result yet"
                                + (f" ({sample.error})" if sample.error else ""))
        return sample

    @app.get(f"{API}/samples/{{sample_id}}/report", tags=["samples"], response_class=FileResponse)
    def report(svc: Svc, sample_id: int):
        """The HTML report of the sample as it is now (current labels, review, sign-off)."""
        with svc.db.read() as s:
            path = build_report(_analysed(s, sample_id), svc.settings, svc.classes, svc.analyser.threshold)
        return FileResponse(path, media_type="text/html; charset=utf-8")

    @app.get(f"{API}/samples/{{sample_id}}/export.csv", tags=["samples"], response_class=PlainTextResponse)
    def export(svc: Svc, sample_id: int):
        """One CSV row per cell: position, machine call, current type, reviewer."""
        with svc.db.read() as s:
            text = export_csv(_analysed(s, sample_id), svc.classes)
        return PlainTextResponse(text, media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="wbc-sample-{sample_id}.csv"'})

    @app.delete(f"{API}/samples/{{sample_id}}", tags=["samples"], dependencies=Write, status_code=204,
                responses={409: {"description": "signed off (add force=true)"}})
    def delete(svc: Svc, sample_id: int, force: bool = False, user: Annotated[str, Query(max_length=100)] = "unknown"):
        """Delete a sample, its files and its analysis (stops it if running). The audit trail stays."""
        svc.analyser.cancel(sample_id)
        with svc.db.write.begin() as s:
            delete_sample(s, sample_id, user, force)
        remove_files(svc.settings.data_dir, sample_id)
        return Response(status_code=204)

    def _file(path: Path, media_type: str) -> FileResponse:
        if not path.is_file():
            raise HTTPException(404, "file not found (the sample may have been deleted)")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get(f"{API}/cells/{{cell_id}}/image", tags=["cells"], response_class=FileResponse)
    def cell_image(svc: Svc, cell_id: int):
        """The cell's crop (JPEG)."""
        with svc.db.read() as s:
            cell = s.get(Cell, cell_id)
            if cell is None:
                raise not_found("cell", cell_id)
            path = sample_dir(svc.settings.data_dir, cell.sample_id) / "cells" / f"{cell.number}.jpg"
        return _file(path, "image/jpeg")

    @app.get(f"{API}/fields/{{field_id}}/image", tags=["fields"], response_class=FileResponse)
    def field_image(svc: Svc, field_id: int):
        """The field as uploaded."""
        with svc.db.read() as s:
            f = field_of(s, field_id)
            path = sample_dir(svc.settings.data_dir, f.sample_id) / "fields" / f.stored
            return _file(path, f.media_type)

    @app.get(f"{API}/fields/{{field_id}}/annotated", tags=["fields"], response_class=FileResponse)
    def field_annotated(svc: Svc, field_id: int):
        """The field as the analysis annotated it (PNG; the machine's labels)."""
        with svc.db.read() as s:
            f = field_of(s, field_id)
            if not f.annotated:
                raise HTTPException(404, f"field {field_id} has no annotated image (not analysed, or unreadable)")
            path = sample_dir(svc.settings.data_dir, f.sample_id) / "analysis" / f.annotated
        return _file(path, "image/png")
