"""Engines and transactions for the warehouse: SQLite (embedded default), PostgreSQL, MySQL/MariaDB, DuckDB
(Snowflake through snowflake-sqlalchemy).

SQLite needs two things for several writers (Ray workers writing chunks, concurrent publishes):
WAL mode, so readers never block the writer, and write transactions that take the write lock at
BEGIN (``BEGIN IMMEDIATE``) so they wait on the busy timeout instead of failing with "database is
locked" when a read lock cannot be upgraded. `write_tx` asks for that; plain reads stay deferred.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import base as sqlite_types
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles

from safeguard_flow.settings import Settings, SettingsError

T = TypeVar("T")
SQLITE_BUSY_TIMEOUT_S = 60


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """The warehouse engine for `settings.warehouse_url` (empty url: SQLite file under settings.home)."""
    url = sa.make_url(settings.warehouse_url)
    if url.get_backend_name() == "sqlite":
        if settings.warehouse.db_schema:
            raise SettingsError("setting warehouse.db_schema: SQLite has no schemas; leave it empty for a SQLite warehouse")
        if not url.database or url.database == ":memory:" or "mode=memory" in str(url):
            # Extract streams on one connection while writing on another: that needs a file.
            raise SettingsError("setting warehouse.url: the SQLite warehouse must be a file (sqlite:///path/to/warehouse.db)")
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        engine = sa.create_engine(url, **kwargs)
        _sqlite_events(engine)
        return engine
    if url.get_backend_name() == "duckdb":
        if not url.database or url.database == ":memory:":
            raise SettingsError("setting warehouse.url: the DuckDB warehouse must be a file (duckdb:///path/to/warehouse.duckdb)")
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, **kwargs)
        _duckdb_dialect(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(url, **kwargs)
    if url.get_backend_name() == "snowflake":
        # snowflake-sqlalchemy's dialect lacks the attributes sa.JSON reads (see _snowflake_json): JSON as text.
        engine.dialect._json_serializer, engine.dialect._json_deserializer = json.dumps, json.loads
        _snowflake_dialect(engine)
    return engine


def _snowflake_dialect(engine: Engine) -> None:
    """Snowflake has no locking reads on standard tables (its DML locks the table itself, so writers take
    turns): SELECT ... FOR UPDATE is compiled without the clause, as on DuckDB."""
    base = engine.dialect.statement_compiler

    class SnowflakeCompiler(base):
        def for_update_clause(self, select, **kw) -> str:
            return ""

    engine.dialect.statement_compiler = SnowflakeCompiler


def _duckdb_dialect(engine: Engine) -> None:
    """Sessions in UTC. DuckDB's concurrency is optimistic (a conflicting writer fails and is retried, see _transient):
    it has no row locks, so SELECT ... FOR UPDATE is compiled without the clause."""
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        # Timestamps with time zone convert to dates and text in the session's zone: UTC, as elsewhere.
        dbapi_conn.execute("SET TimeZone = 'UTC'")

    base = engine.dialect.statement_compiler

    class DuckDBCompiler(base):
        def for_update_clause(self, select, **kw) -> str:
            return ""

    engine.dialect.statement_compiler = DuckDBCompiler


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("sg_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A connection inside one write transaction (committed on exit, rolled back on error)."""
    with engine.connect() as conn:
        conn.execution_options(sg_write=True)
        with conn.begin():
            yield conn


def retrying(fn: Callable[[], T], attempts: int = 5, what: str = "transaction",
             retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Run `fn` (one whole transaction) again after deadlocks, serialization failures, SQLite busy,
    or any of `retry_on` (e.g. IntegrityError where a concurrent insert won a race)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            transient = _transient(exc) or isinstance(exc, retry_on)
            if attempt == attempts or not transient:
                if transient:
                    exc.add_note(f"{what}: gave up after {attempts} attempts")
                raise
        time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _transient(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return False  # the connection died: the caller decides, never retried blindly
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in {"40001", "40P01"}:  # serialization_failure, deadlock_detected
        return True
    args = getattr(exc.orig, "args", ())
    if args and args[0] in (1213, 1205):  # MySQL/MariaDB: deadlock, lock wait timeout
        return True
    text = str(exc.orig).lower()
    if "database is locked" in text:  # SQLite busy
        return True
    # DuckDB's optimistic concurrency: a write conflict, or a key another transaction committed first,
    # fails this transaction ("Conflict on ...", at COMMIT "Failed to commit: ... constraint violation").
    return type(exc.orig).__name__ == "TransactionException" and ("conflict" in text or "failed to commit" in text)


def bulk_insert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows: COPY on PostgreSQL/psycopg (several times faster than executemany), else executemany.

    COPY bypasses SQLAlchemy's type processing, so JSON values are serialised and timestamps made
    UTC-aware here; every row must carry every column listed by the first row.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        conn.execute(table.insert(), rows)
        return
    cols = list(rows[0])
    convert = []
    for name in cols:
        col_type = table.c[name].type
        if isinstance(col_type, sa.JSON):
            convert.append(lambda v: None if v is None else json.dumps(v))
        elif isinstance(col_type, UTCDateTime):
            convert.append(as_utc)
        else:
            convert.append(None)
    quote = conn.dialect.identifier_preparer
    target = quote.format_table(table)
    column_list = ", ".join(quote.quote(c) for c in cols)
    with conn.connection.driver_connection.cursor() as cursor, \
            cursor.copy(f"COPY {target} ({column_list}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([v if f is None else f(v) for f, v in zip(convert, (row[c] for c in cols))])


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Aware UTC; naive values are taken to be UTC already (how the warehouse stores them)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


class _SQLiteUTCText(sqlite_types.DATETIME):
    """SQLite DATETIME column whose values UTCDateTime converts itself (ISO text with the zone)."""

    def bind_processor(self, dialect):
        return None

    def result_processor(self, dialect, coltype):
        return None


def sqlite_utc_text(value: dt.datetime) -> str:
    """How a timestamp is stored on SQLite: UTC, microseconds, zone explicit ('2026-11-20 05:00:00.000000+00:00').
    Fixed width, so text order is time order; SQLite's date functions read the zone."""
    return as_utc(value).isoformat(sep=" ", timespec="microseconds")


@compiles(sa.DateTime, "mysql")
@compiles(sa.DateTime, "mariadb")
def _mysql_datetime(type_, compiler, **kw) -> str:
    """MySQL's DATETIME keeps whole seconds unless asked: a zone-aware timestamp (every warehouse column,
    the migrations' too) is DATETIME(6) holding UTC, so run order by time survives as on the other dialects."""
    return "DATETIME(6)" if type_.timezone else "DATETIME"


@compiles(sa.JSON, "snowflake")
def _snowflake_json(type_, compiler, **kw) -> str:
    """snowflake-sqlalchemy cannot render SQLAlchemy's JSON type. JSON columns are JSON text in a VARCHAR there:
    sa.JSON already serialises binds and parses results as text, whereas a VARIANT takes no bound value in
    INSERT ... VALUES (it needs PARSE_JSON in a SELECT) and reads back as text anyway. BI: PARSE_JSON(column)."""
    return "VARCHAR"


class UTCDateTime(sa.types.TypeDecorator):
    """Timestamps in UTC with the zone explicit on every dialect: ``timestamp with time zone`` on
    PostgreSQL and DuckDB, ISO text ending in ``+00:00`` on SQLite, ``DATETIME(6)`` holding UTC on
    MySQL/MariaDB; reads come back aware (UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return _SQLiteUTCText()
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        value = as_utc(value)
        if dialect.name == "sqlite":
            return sqlite_utc_text(value)
        if dialect.name in ("mysql", "mariadb"):  # DATETIME holds no zone: naive UTC (as as_utc reads it back)
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, str):  # SQLite text: with the zone (ours) or without (older rows, other writers)
            value = dt.datetime.fromisoformat(value)
        return as_utc(value)
