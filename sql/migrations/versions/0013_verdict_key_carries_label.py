"""The flips view at 10M verdicts: on PostgreSQL the verdicts' primary key carries the label.

sg_verdict_flips joins each newer version's verdict to the older version's by primary key. At 10M
verdicts a dashboard's question (one policy, one version pair, 30 days) makes about 470k such
probes; each read the key's index pages and then the table row, for one column: the old label.
With `label` as an INCLUDE column of the primary key the probe is answered from the index alone (an
index-only scan), skipping the table row. The key itself is unchanged (same columns, same
uniqueness); the index is one small column wider.

PostgreSQL only. MySQL/MariaDB's InnoDB stores the row in its primary key already; SQLite, DuckDB and
Snowflake are not where 10M-verdict dashboards run. Rebuilding the key rewrites its index: on a large
warehouse, run it in a quiet hour.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None

KEY = "source, content_id, policy, policy_version"


def _verdicts() -> tuple[str, str]:
    """(the quoted, schema-qualified verdict table, its primary key constraint's quoted name)."""
    warehouse = context.config.attributes["settings"].warehouse
    bind = op.get_bind()
    quote = bind.dialect.identifier_preparer.quote
    table = (quote(warehouse.db_schema) + "." if warehouse.db_schema else "") + quote(warehouse.table_prefix + "verdicts")
    name = bind.execute(sa.text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                                "AND contype = 'p'"), {"t": table}).scalar_one()
    return table, quote(name)


def _rebuild_key(include: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    table, key = _verdicts()
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {key}, ADD CONSTRAINT {key} PRIMARY KEY ({KEY}){include}")


def upgrade() -> None:
    _rebuild_key(" INCLUDE (label)")


def downgrade() -> None:
    _rebuild_key("")
