"""sg_daily_policy_rates counts a verdict on its run's data-interval day (labelling day for runs
without an interval), so backfilled intervals chart on their own days.

Views are recreated from sql/views (the source of truth); downgrading keeps the current files'
views, as there is no older copy of them to restore.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

from safeguard_flow.warehouse.migration_names import names
from safeguard_flow.warehouse.schema import create_views, daily_rates_0003

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    n = names()
    bind = op.get_bind()
    create_views(bind, n.prefix, n.schema, daily_rates_0003(bind.dialect.name))  # stopgap: see schema.daily_rates_0003


def downgrade() -> None:
    pass
