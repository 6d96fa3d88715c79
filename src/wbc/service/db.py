"""The database of ``wbc serve``: samples, their smear fields, the cells found in them and the audit trail.

SQLAlchemy 2 models; the schema itself is created and upgraded by the Alembic migrations in
``migrations/`` when the server starts (:func:`migrate`). SQLite (the default, one file in the data
folder) and PostgreSQL are supported. Every write that depends on what it read locks the sample
row first (:func:`lock_sample`), so two reviewers editing one sample never lose an update: on
PostgreSQL with ``SELECT ... FOR UPDATE``, on SQLite because every transaction starts with
``BEGIN IMMEDIATE`` (one writer at a time, readers unaffected thanks to the WAL journal).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ..errors import WbcError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class Status(StrEnum):
    QUEUED = "queued"
    ANALYSING = "analysing"
    DONE = "done"
    FAILED = "failed"


class Action(StrEnum):
    """What an audit entry records."""

    CREATE = "create"
    RECLASSIFY = "reclassify"
    CONFIRM = "confirm"  # a reviewer kept the machine's label of a cell marked for review
    SIGNOFF = "signoff"
    DELETE = "delete"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands timestamps back without their zone."""
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")


class Base(DeclarativeBase):
    pass


_TS = sa.DateTime(timezone=True)
# ids are never reused, so an audit entry of a deleted sample never points at a new one
_NO_REUSE = {"sqlite_autoincrement": True}


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = _NO_REUSE

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str | None] = mapped_column(sa.String(200))  # the lab's patient/sample reference
    wbc_count: Mapped[float | None]  # x10^9/L, for absolute counts
    age: Mapped[float | None]  # years: selects the reference band
    sex: Mapped[str | None] = mapped_column(sa.String(10))
    status: Mapped[str] = mapped_column(sa.String(20), default=Status.QUEUED, index=True)
    progress: Mapped[float] = mapped_column(default=0.0)  # 0..1
    stage: Mapped[str | None] = mapped_column(sa.String(80))
    error: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)  # analyses started
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(100))
    analysed_at: Mapped[datetime | None] = mapped_column(_TS)
    signed_off_by: Mapped[str | None] = mapped_column(sa.String(100))
    signed_off_at: Mapped[datetime | None] = mapped_column(_TS)
    differential: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)  # Differential.to_dict()
    analysis: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)  # model, threshold, scale, warnings
    version: Mapped[int] = mapped_column(default=1)  # +1 on every change: the sample's ETag

    fields: Mapped[list[Field]] = relationship(back_populates="sample", cascade="all, delete-orphan",
                                               passive_deletes=True, order_by="Field.position")
    cells: Mapped[list[Cell]] = relationship(back_populates="sample", cascade="all, delete-orphan",
                                             passive_deletes=True, order_by="Cell.number")

    @property
    def name(self) -> str:
        return self.reference or f"sample-{self.id}"

    @property
    def signed_off(self) -> bool:
        return self.signed_off_at is not None


class Field(Base):
    """One uploaded smear photograph. ``stored`` is the server's own file name, never the client's."""

    __tablename__ = "fields"
    __table_args__ = _NO_REUSE

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(sa.ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    filename: Mapped[str] = mapped_column(sa.String(255))  # as uploaded, for display only
    stored: Mapped[str] = mapped_column(sa.String(64))
    media_type: Mapped[str] = mapped_column(sa.String(40))
    size: Mapped[int]  # bytes
    width: Mapped[int | None]
    height: Mapped[int | None]
    n_cells: Mapped[int | None]
    quality: Mapped[list[str] | None] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    annotated: Mapped[str | None] = mapped_column(sa.String(128))  # relative to the analysis folder

    sample: Mapped[Sample] = relationship(back_populates="fields")


class Cell(Base):
    """One detected WBC. ``label`` is the current type, ``predicted_label`` the machine's."""

    __tablename__ = "cells"
    __table_args__ = (sa.Index("ix_cells_sample_label", "sample_id", "label"), _NO_REUSE)

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(sa.ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    field_id: Mapped[int] = mapped_column(sa.ForeignKey("fields.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]  # the cell's number in the sample, as in cells.csv and the annotated fields
    x0: Mapped[int]
    y0: Mapped[int]
    x1: Mapped[int]
    y1: Mapped[int]
    label: Mapped[str] = mapped_column(sa.String(40))
    predicted_label: Mapped[str] = mapped_column(sa.String(40))
    confidence: Mapped[float]
    probabilities: Mapped[dict[str, float]] = mapped_column(sa.JSON)
    review: Mapped[bool]  # the analysis marked it for review
    review_reason: Mapped[str | None] = mapped_column(sa.Text)
    at_edge: Mapped[bool] = mapped_column(default=False)
    reviewed_by: Mapped[str | None] = mapped_column(sa.String(100))
    reviewed_at: Mapped[datetime | None] = mapped_column(_TS)
    version: Mapped[int] = mapped_column(default=1)  # +1 on every change: the cell's ETag

    sample: Mapped[Sample] = relationship(back_populates="cells")

    @property
    def pending_review(self) -> bool:
        """Marked for review by the analysis and not yet looked at by a person."""
        return self.review and self.reviewed_at is None


class AuditEntry(Base):
    """Who changed what and when. No foreign keys: the trail outlives a deleted sample."""

    __tablename__ = "audit"
    __table_args__ = _NO_REUSE

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    user: Mapped[str] = mapped_column("username", sa.String(100))  # "user" is reserved in PostgreSQL
    action: Mapped[str] = mapped_column(sa.String(20))
    sample_id: Mapped[int] = mapped_column(index=True)
    cell_id: Mapped[int | None]
    old: Mapped[str | None] = mapped_column(sa.String(200))
    new: Mapped[str | None] = mapped_column(sa.String(200))


# ----------------------------------------------------------------------------------------------
# engine, sessions, migrations


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver wbc installs).

    >>> normalise_url("postgresql://u@localhost/wbc")
    'postgresql+psycopg://u@localhost/wbc'
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
    cur = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000", "synchronous=NORMAL"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _sqlite_begin_immediate(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front: no deadlock on upgrade


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN")  # readers: a snapshot, concurrent with the writer thanks to WAL


def make_engine(url: str, *, writer: bool = True) -> Engine:
    """An engine for ``sqlite:///FILE`` or ``postgresql://...``; raises :class:`WbcError` for anything else.

    SQLite transactions of a ``writer`` engine start with ``BEGIN IMMEDIATE`` (one writer at a time).
    """
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise WbcError(f"--db: not a database URL: {url!r} (expected sqlite:///FILE or postgresql://...)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise WbcError("--db: an in-memory SQLite database would lose everything on restart; give a file")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate if writer else _sqlite_begin)
        return engine
    if backend == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=24, pool_timeout=60)
    raise WbcError(f"--db: unsupported database {backend!r}; use sqlite:///FILE or postgresql://...")


class Database:
    """The engines and session factories of one database: ``write`` for changes, ``read`` for lookups."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        sqlite = self.engine.dialect.name == "sqlite"
        self.read_engine = make_engine(url, writer=False) if sqlite else self.engine
        self.write = sessionmaker(self.engine, expire_on_commit=False)
        self.read = sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest migration (creates it in an empty database)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except sa.exc.OperationalError as exc:
            raise WbcError(f"cannot open the database {self.engine.url.render_as_string(hide_password=True)}: "
                           f"{str(exc.orig).strip().splitlines()[0]}") from None

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def lock_sample(session: Session, sample_id: int) -> Sample | None:
    """The sample, locked until the transaction ends (FOR UPDATE; SQLite holds its write lock anyway)."""
    return session.scalars(sa.select(Sample).where(Sample.id == sample_id).with_for_update()).first()
