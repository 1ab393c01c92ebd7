"""BI views from sql/views/*.sql: current verdicts, daily rates, flips between versions, run errors.

The view files are the source of truth. When one changes, add a revision whose upgrade() calls
create_views() again (it drops and recreates every view), so existing warehouses pick it up.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-01
"""

from __future__ import annotations

from alembic import op

from safeguard_flow.warehouse.migration_names import names
from safeguard_flow.warehouse.schema import create_views, daily_rates_0003, drop_views

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    n = names()
    bind = op.get_bind()
    create_views(bind, n.prefix, n.schema, daily_rates_0003(bind.dialect.name))  # stopgap: see schema.daily_rates_0003


def downgrade() -> None:
    n = names()
    drop_views(op.get_bind(), n.prefix, n.schema)
