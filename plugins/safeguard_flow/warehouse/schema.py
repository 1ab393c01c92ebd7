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
from sqlalchemy.ext.compiler import compiles

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import make_engine
from safeguard_flow.warehouse.errors import WarehouseError
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


def _alembic_dialects() -> None:
    """Alembic ships DDL helpers for the core dialects only: DuckDB speaks PostgreSQL's DDL (duckdb-engine
    derives from the PostgreSQL dialect), with the differences in _DuckDBImpl."""
    from alembic.ddl.impl import _impls
    from alembic.ddl.postgresql import PostgresqlImpl

    if "duckdb" not in _impls:
        type("DuckDBImpl", (_DuckDBImpl, PostgresqlImpl), {"__dialect__": "duckdb", "transactional_ddl": True})
    if "snowflake" not in _impls:  # snowflake-sqlalchemy registers none; the generic DDL is what it documents
        from alembic.ddl.impl import DefaultImpl

        type("SnowflakeImpl", (_SnowflakeImpl, DefaultImpl), {"__dialect__": "snowflake"})


class _SnowflakeImpl:
    """Snowflake's standard tables have no secondary indexes (CREATE INDEX is for hybrid tables only; it
    prunes by micro-partition instead): the revisions' indexes are skipped there. Its PRIMARY KEY and
    UNIQUE constraints are declared but not enforced, so the publish merge (MERGE) is what keeps one
    verdict per key."""

    def create_index(self, index, **kw):
        return None

    def drop_index(self, index, **kw):
        return None


def _duckdb_seq(table: sa.Table, col: sa.Column) -> sa.Sequence:
    return sa.Sequence(f"{table.name}_{col.name}_seq", schema=table.schema)


class _DuckDBImpl:
    """DuckDB has no SERIAL: an autoincrement integer key takes its values from a sequence of its own
    (``<table>_<column>_seq``, see _duckdb_column), created before the table and dropped after it."""

    def create_table(self, table: sa.Table, **kw):
        if table.autoincrement_column is not None:
            self._exec(sa.schema.CreateSequence(_duckdb_seq(table, table.autoincrement_column), if_not_exists=True))
        return super().create_table(table, **kw)

    def _without_indexes(self, table_name: str, schema: str | None, alter):
        """DuckDB cannot alter a table an index depends on: drop its indexes, alter, create them again."""
        rows = self.connection.execute(sa.text(
            "SELECT index_name, sql FROM duckdb_indexes() WHERE table_name = :t AND schema_name = "
            "coalesce(:s, current_schema())"), {"t": table_name, "s": schema}).all()
        for name, _sql in rows:
            quote = self.dialect.identifier_preparer
            self._exec(sa.text(f"DROP INDEX {quote.quote_schema(schema) + '.' if schema else ''}{quote.quote(name)}"))
        out = alter()
        for _name, create in rows:
            self._exec(sa.text(create))
        return out

    def add_column(self, table_name: str, column: sa.Column, schema: str | None = None, **kw):
        return self._without_indexes(table_name, schema,
                                     lambda: super(_DuckDBImpl, self).add_column(table_name, column, schema=schema, **kw))

    def drop_column(self, table_name: str, column: sa.Column, schema: str | None = None, **kw):
        return self._without_indexes(table_name, schema,
                                     lambda: super(_DuckDBImpl, self).drop_column(table_name, column, schema=schema, **kw))

    def alter_column(self, table_name: str, column_name: str, schema: str | None = None, **kw):
        return self._without_indexes(table_name, schema,
                                     lambda: super(_DuckDBImpl, self).alter_column(table_name, column_name, schema=schema, **kw))

    def drop_table(self, table: sa.Table, **kw):
        out = super().drop_table(table, **kw)
        if table.autoincrement_column is not None:
            self._exec(sa.schema.DropSequence(_duckdb_seq(table, table.autoincrement_column), if_exists=True))
        return out


@compiles(sa.schema.CreateColumn, "duckdb")
def _duckdb_column(element, compiler, **kw) -> str:
    col = element.element
    table = col.table
    if table is None or col is not table.autoincrement_column:
        return compiler.visit_create_column(element, **kw)
    seq = compiler.preparer.format_sequence(_duckdb_seq(table, col))
    return f"{compiler.preparer.format_column(col)} {compiler.type_compiler.process(col.type)} " \
           f"DEFAULT nextval('{seq}') NOT NULL"


def _alembic_config(settings: Settings, connection: Connection):
    from alembic.config import Config

    _alembic_dialects()
    cfg = Config()
    cfg.set_main_option("script_location", str(sql_dir() / "migrations"))
    cfg.attributes["settings"] = settings
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(settings: Settings, revision: str = "head", engine: Engine | None = None) -> str | None:
    """Migrate the warehouse to `revision` (default: newest). Safe to run again. Returns the revision."""
    from alembic import command

    with _engine(settings, engine) as eng, eng.begin() as conn:
        check_dialect(conn)
        if settings.warehouse.db_schema and conn.dialect.name != "sqlite":
            conn.execute(sa.schema.CreateSchema(settings.warehouse.db_schema, if_not_exists=True))
        command.upgrade(_alembic_config(settings, conn), revision)
    return current(settings, engine)


def check_dialect(conn: Connection) -> None:
    """What a dialect needs before it holds a warehouse, said plainly (WarehouseError) instead of a traceback later."""
    if conn.dialect.name in ("mysql", "mariadb"):
        collation = conn.exec_driver_sql("SELECT @@collation_database").scalar_one()
        if not str(collation).endswith("_bin"):
            raise WarehouseError(
                f"setting warehouse.url: the MySQL database's collation {collation} compares text ignoring case "
                "(or accents), so content ids 'A' and 'a' would be one verdict key. Create the warehouse database "
                "with CHARACTER SET utf8mb4 COLLATE utf8mb4_bin (source tables may keep any collation).")


def downgrade(settings: Settings, revision: str, engine: Engine | None = None) -> str | None:
    from alembic import command

    with _engine(settings, engine) as eng, eng.begin() as conn:
        if conn.dialect.name == "duckdb":
            raise WarehouseError("DuckDB cannot drop a column of a table that has indexes, which the revisions' "
                                 "downgrades do: schema downgrade is not supported on a DuckDB warehouse "
                                 "(keep a copy of the .duckdb file from before the upgrade instead)")
        command.downgrade(_alembic_config(settings, conn), revision)
    return current(settings, engine)


def current(settings: Settings, engine: Engine | None = None) -> str | None:
    """The warehouse's revision, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    _alembic_dialects()
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
