"""Cascades (issue 20): sg_cascades holds each trained cascade (policy version, encoder, training size
and hash, thresholds, held-out figures, the classifier as JSON numbers); sg_cascade_chunks holds what
the cascade did in each chunk of a run per policy version (decided, audited, audit agreement, calls
avoided, stage and model seconds, whether it was off), the source of a run's cascade figures.

Self-contained: nothing is imported from safeguard_flow.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def upgrade() -> None:
    p, s = _names()
    op.create_table(
        p + "cascades",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=False),
        sa.Column("encoder", sa.String(64), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("training_size", sa.Integer, nullable=False),
        sa.Column("training_sha256", sa.String(64), nullable=False),
        sa.Column("low", sa.Float, nullable=False),
        sa.Column("high", sa.Float, nullable=False),
        sa.Column("min_agreement", sa.Float, nullable=False),
        sa.Column("share_decided", sa.Float),
        sa.Column("agreement", sa.Float),
        sa.Column("agreement_low", sa.Float),
        sa.Column("heldout", sa.JSON, nullable=False),
        sa.Column("model", sa.JSON, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        schema=s,
    )
    op.create_index(f"{p}ix_cascades_policy", p + "cascades", ["policy", "policy_version", "id"], schema=s)
    op.create_table(
        p + "cascade_chunks",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("cascade_id", sa.Integer),
        sa.Column("items", sa.Integer, nullable=False, server_default="0"),
        sa.Column("decided", sa.Integer, nullable=False, server_default="0"),
        sa.Column("audited", sa.Integer, nullable=False, server_default="0"),
        sa.Column("audit_agree", sa.Integer, nullable=False, server_default="0"),
        sa.Column("calls_avoided", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cascade_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("model_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("off", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("note", sa.Text),
        sa.Column("recorded_at", TS, nullable=False),
        schema=s,
    )


def downgrade() -> None:
    p, s = _names()
    op.drop_table(p + "cascade_chunks", schema=s)
    op.drop_index(f"{p}ix_cascades_policy", p + "cascades", schema=s)
    op.drop_table(p + "cascades", schema=s)
