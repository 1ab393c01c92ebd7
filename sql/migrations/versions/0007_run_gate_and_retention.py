"""The quality gate per policy version, and retention: `sg_run_gates` holds one row per (run, policy
version) the gate judged (passed or quarantined, the reason, its counts, whether it was a shadow
version, the run that relabels it when quarantined); `sg_runs.purged_at` says when retention deleted
the run's text copies and staged rows (the run row, its counts and timings stay).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def upgrade() -> None:
    p, s = _names()
    op.create_table(
        p + "run_gates",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("outcome", sa.String(20), nullable=False),  # passed | quarantined
        sa.Column("shadow", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("reason", sa.Text),
        sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("verdicts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("positives", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_run_id", sa.String(200)),
        sa.Column("validated_at", TS, nullable=False),
        schema=s,
    )
    op.create_index(p + "ix_run_gates_outcome", p + "run_gates", ["outcome", "validated_at"], schema=s)
    op.add_column(p + "runs", sa.Column("purged_at", TS), schema=s)


def downgrade() -> None:
    p, s = _names()
    # A plain DROP COLUMN (SQLite >= 3.35): a batch table copy would break the views.
    op.drop_column(p + "runs", "purged_at", schema=s)
    op.drop_index(p + "ix_run_gates_outcome", p + "run_gates", schema=s)
    op.drop_table(p + "run_gates", schema=s)
