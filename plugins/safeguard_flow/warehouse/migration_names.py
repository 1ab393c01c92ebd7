"""What a migration script needs to name things: the configured prefix and schema.

Only usable while Alembic runs (sql/migrations/env.py puts the settings in the config attributes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigrationNames:
    prefix: str
    schema: str | None

    def t(self, name: str) -> str:
        """Prefixed table / index / constraint name."""
        return self.prefix + name


def names() -> MigrationNames:
    from alembic import context

    settings = context.config.attributes["settings"]
    return MigrationNames(settings.warehouse.table_prefix, settings.warehouse.db_schema)
