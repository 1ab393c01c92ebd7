"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

# Self-contained: all SQL/DDL inline as of this revision, nothing imported from safeguard_flow.


def _prefix_schema() -> tuple[str, str | None]:
    """The configured table prefix and schema (sql/migrations/env.py puts them in the config)."""
    attrs = context.config.attributes
    return attrs["table_prefix"], attrs["db_schema"]


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
