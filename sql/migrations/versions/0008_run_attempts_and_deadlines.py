"""Fenced label attempts and heartbeats on `sg_runs`: `label_attempt` (the fencing token: bumped when
a label attempt starts; a chunk write carrying another attempt's number is refused), `refused_writes`
(how many such writes were refused, a stale job's included) and `heartbeat_at` (when the step working
on the run last said it was alive; a run left in extracting/labelling without one for
deadlines.stale_after_s is failed with the reason by the next attempt).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def upgrade() -> None:
    p, s = _names()
    op.add_column(p + "runs", sa.Column("label_attempt", sa.Integer, nullable=False, server_default="0"), schema=s)
    op.add_column(p + "runs", sa.Column("refused_writes", sa.Integer, nullable=False, server_default="0"), schema=s)
    op.add_column(p + "runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True)), schema=s)


def downgrade() -> None:
    p, s = _names()
    # Plain DROP COLUMNs (SQLite >= 3.35): a batch table copy would break the views.
    for column in ("heartbeat_at", "refused_writes", "label_attempt"):
        op.drop_column(p + "runs", column, schema=s)
