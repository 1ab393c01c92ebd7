"""Who decided a verdict: `decided_by` on staged and published verdicts ('model' or 'cascade'; the BI
view shows 'human' where a reviewer's decision wins). Shared by the review and cascade work, agreed
before either: `confidence` keeps its column and now means the engine-measured probability of the
chosen label (the cascade's own probability for a cascade verdict).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def upgrade() -> None:
    p, s = _names()
    for table in ("verdict_staging", "verdicts"):
        op.add_column(p + table, sa.Column("decided_by", sa.String(16), nullable=False, server_default="model"),
                      schema=s)


def downgrade() -> None:
    p, s = _names()
    # A plain DROP COLUMN (SQLite >= 3.35): a batch table copy would break the views on the verdicts.
    for table in ("verdicts", "verdict_staging"):
        op.drop_column(p + table, "decided_by", schema=s)
