"""Alembic environment for the safeguard-flow warehouse.

Run through `safeguard-flow db upgrade` (safeguard_flow.warehouse.schema.upgrade), which passes the
settings and an open connection in `config.attributes`. Plain `alembic -c sql/alembic.ini upgrade head`
also works: the settings then come from the usual places (SAFEGUARD_CONFIG, SAFEGUARD_* variables).
"""

from __future__ import annotations

from alembic import context

from safeguard_flow.settings import get_settings
from safeguard_flow.warehouse.db import make_engine
from safeguard_flow.warehouse.schema import tables, version_table

config = context.config
settings = config.attributes.get("settings") or get_settings()
config.attributes["settings"] = settings
# Revisions are frozen and import nothing from safeguard_flow: they read the names from here.
config.attributes["table_prefix"] = settings.warehouse.table_prefix
config.attributes["db_schema"] = settings.warehouse.db_schema


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=tables(settings).metadata,
        version_table=version_table(settings),
        version_table_schema=settings.warehouse.db_schema,
        transactional_ddl=True,
    )


def run_offline() -> None:
    context.configure(
        url=settings.warehouse_url,
        target_metadata=tables(settings).metadata,
        version_table=version_table(settings),
        version_table_schema=settings.warehouse.db_schema,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
