"""Schema management: Alembic migrations under sql/migrations, BI views from sql/views.

Revisions are frozen: each carries its own DDL and view SQL as of that revision and imports nothing
from this package (env.py hands them the prefix and schema). sql/views holds the current view
definitions, for analysts and as the head's copy (tests/warehouse/test_migrations.py checks they agree).

The table prefix and schema come from settings.warehouse (validated as plain identifiers there);
Alembic's own version table is prefixed too (``<prefix>alembic_version``) so several deployments
can share one database or schema.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import make_engine
from safeguard_flow.warehouse.tables import TABLE_NAMES, VIEW_NAMES, WarehouseTables, build_tables

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def sql_dir() -> Path:
    """The sql/ folder: SAFEGUARD_SQL_DIR, else the copy a wheel ships (safeguard_flow/sql), else the
    checkout an editable install points at."""
    candidates = [os.environ.get("SAFEGUARD_SQL_DIR"), _PACKAGE_DIR / "sql", _PACKAGE_DIR.parents[1] / "sql"]
    for c in candidates:
        if c and (Path(c) / "migrations" / "env.py").is_file():
            return Path(c)
    raise FileNotFoundError("sql/migrations not found: set SAFEGUARD_SQL_DIR to the project's sql/ folder")


def tables(settings: Settings) -> WarehouseTables:
    return build_tables(settings.warehouse.table_prefix, settings.warehouse.db_schema)


def version_table(settings: Settings) -> str:
    return f"{settings.warehouse.table_prefix}alembic_version"


def view_names(settings: Settings) -> dict[str, str]:
    return {v: settings.warehouse.table_prefix + v for v in VIEW_NAMES}


def _alembic_config(settings: Settings, connection: Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(sql_dir() / "migrations"))
    cfg.attributes["settings"] = settings
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(settings: Settings, revision: str = "head", engine: Engine | None = None) -> str | None:
    """Migrate the warehouse to `revision` (default: newest). Safe to run again. Returns the revision."""
    from alembic import command

    with _engine(settings, engine) as eng, eng.begin() as conn:
        if settings.warehouse.db_schema and conn.dialect.name != "sqlite":
            conn.execute(sa.schema.CreateSchema(settings.warehouse.db_schema, if_not_exists=True))
        command.upgrade(_alembic_config(settings, conn), revision)
    return current(settings, engine)


def downgrade(settings: Settings, revision: str, engine: Engine | None = None) -> str | None:
    from alembic import command

    with _engine(settings, engine) as eng, eng.begin() as conn:
        command.downgrade(_alembic_config(settings, conn), revision)
    return current(settings, engine)


def current(settings: Settings, engine: Engine | None = None) -> str | None:
    """The warehouse's revision, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with _engine(settings, engine) as eng, eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={
            "version_table": version_table(settings),
            "version_table_schema": settings.warehouse.db_schema,
        })
        return ctx.get_current_revision()


def head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(sql_dir() / "migrations"))
    return ScriptDirectory.from_config(cfg).get_current_head()


class _engine:
    """Use the caller's engine, or make (and dispose) one from settings."""

    def __init__(self, settings: Settings, engine: Engine | None):
        self.given, self.settings = engine, settings

    def __enter__(self) -> Engine:
        self.engine = self.given or make_engine(self.settings)
        return self.engine

    def __exit__(self, *exc) -> None:
        if self.given is None:
            self.engine.dispose()


# ---- views: plain SQL files templated only with the validated, quoted names and "UTC day of" ----

_PLACEHOLDER_RE = re.compile(r"\$\{?([a-z_]+)\}?")
# `${utc_day}(x)`: the UTC calendar day of timestamp x (x may hold one level of parentheses). SQLite
# stores ISO text that date() reads; PostgreSQL's timestamptz must leave the session's zone first.
_UTC_DAY_RE = re.compile(r"\$\{utc_day\}\(((?:[^()]|\([^()]*\))*)\)")
_UTC_DAY = {"sqlite": "date({})", "postgresql": "CAST(({} AT TIME ZONE 'UTC') AS DATE)"}


def view_sql(name: str, dialect: sa.engine.Dialect, prefix: str, schema: str | None) -> str:
    """`CREATE VIEW` body for one view, from sql/views/<name>.sql."""
    path = sql_dir() / "views" / f"{name}.sql"
    day = _UTC_DAY.get(dialect.name, "CAST({} AS DATE)")
    text = _UTC_DAY_RE.sub(lambda m: day.format(m.group(1)), path.read_text(encoding="utf-8"))
    names = qualified_names(dialect, prefix, schema)
    unknown = set(_PLACEHOLDER_RE.findall(text)) - set(names)
    if unknown:
        raise ValueError(f"{path}: unknown placeholder(s) {sorted(unknown)}; known: {sorted(names)}")
    return string.Template(text).substitute(names)


def qualified_names(dialect: sa.engine.Dialect, prefix: str, schema: str | None) -> dict[str, str]:
    quote = dialect.identifier_preparer.quote
    qual = (quote(schema) + ".") if schema else ""
    return {n: qual + quote(prefix + n) for n in (*TABLE_NAMES, *VIEW_NAMES)}


def create_views(conn: Connection, prefix: str, schema: str | None) -> None:
    """(Re)create every view from sql/views (the head revision's SQL)."""
    names = qualified_names(conn.dialect, prefix, schema)
    for view in VIEW_NAMES:
        body = view_sql(view, conn.dialect, prefix, schema)
        if conn.dialect.paramstyle in ("format", "pyformat"):
            body = body.replace("%", "%%")  # a literal '%' (LIKE 'x%') is not a driver placeholder
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {names[view]}")
        conn.exec_driver_sql(f"CREATE VIEW {names[view]} AS\n{body}")


def drop_views(conn: Connection, prefix: str, schema: str | None) -> None:
    names = qualified_names(conn.dialect, prefix, schema)
    for view in reversed(VIEW_NAMES):
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {names[view]}")
