"""Initial schema: samples, fields, cells, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("reference", sa.String(200)),
        sa.Column("wbc_count", sa.Double()),
        sa.Column("age", sa.Double()),
        sa.Column("sex", sa.String(10)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("stage", sa.String(80)),
        sa.Column("error", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(100)),
        sa.Column("analysed_at", TS),
        sa.Column("signed_off_by", sa.String(100)),
        sa.Column("signed_off_at", TS),
        sa.Column("differential", sa.JSON()),
        sa.Column("analysis", sa.JSON()),
        sa.Column("version", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_samples_status", "samples", ["status"])
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sample_id", sa.Integer(), sa.ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("stored", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(40), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("n_cells", sa.Integer()),
        sa.Column("quality", sa.JSON()),
        sa.Column("error", sa.Text()),
        sa.Column("annotated", sa.String(128)),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_fields_sample_id", "fields", ["sample_id"])
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sample_id", sa.Integer(), sa.ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
        sa.Column("field_id", sa.Integer(), sa.ForeignKey("fields.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("x0", sa.Integer(), nullable=False),
        sa.Column("y0", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Integer(), nullable=False),
        sa.Column("y1", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(40), nullable=False),
        sa.Column("predicted_label", sa.String(40), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("review", sa.Boolean(), nullable=False),
        sa.Column("review_reason", sa.Text()),
        sa.Column("at_edge", sa.Boolean(), nullable=False),
        sa.Column("reviewed_by", sa.String(100)),
        sa.Column("reviewed_at", TS),
        sa.Column("version", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_cells_sample_id", "cells", ["sample_id"])
    op.create_index("ix_cells_field_id", "cells", ["field_id"])
    op.create_index("ix_cells_sample_label", "cells", ["sample_id", "label"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer()),
        sa.Column("old", sa.String(200)),
        sa.Column("new", sa.String(200)),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_sample_id", "audit", ["sample_id"])


def downgrade() -> None:
    for table in ("audit", "cells", "fields", "samples"):
        op.drop_table(table)
