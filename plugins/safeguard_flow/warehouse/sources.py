"""Configured source tables, checked against the database's reflected schema.

Queries are built with SQLAlchemy Core from the reflected Table objects: names come only from
validated settings that matched a reflected table/column, values are bound parameters. Nothing
from content or configuration is spliced into SQL text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.settings import Settings, SourceSettings
from safeguard_flow.warehouse.db import as_utc
from safeguard_flow.warehouse.errors import SourceError

_SQLITE_TS = "%Y-%m-%d %H:%M:%f"  # UTC, milliseconds: sorts as text in time order


@dataclass(frozen=True)
class SourceTable:
    settings: SourceSettings
    index: int  # position in settings.sources, for error messages
    table: sa.Table
    id_col: sa.Column
    text_col: sa.Column
    updated_col: sa.Column | None
    filters: tuple[sa.ColumnElement, ...]
    dialect: str = ""  # the database's dialect name: SQLite needs values read as bytes and times parsed
    engine: Engine | None = None  # where the table is read (sources[].url); None: the warehouse's engine

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def updated_at(self) -> sa.ColumnElement:
        """updated_at as the database compares it. SQLite holds timestamps as text in any format
        (naive UTC, ``2024-03-01 23:30-05:00``, ``...Z``): strftime parses them to UTC text that sorts
        by time, and gives NULL for what it cannot parse. Elsewhere the column is a real timestamp."""
        if self.sqlite:
            return sa.func.strftime(_SQLITE_TS, self.updated_col)
        return self.updated_col

    def where(self, start: dt.datetime | None = None, end: dt.datetime | None = None) -> list[sa.ColumnElement]:
        """Conditions for rows in scope: the configured filters, and updated_at in [start, end)."""
        conds = list(self.filters)
        if start is not None or end is not None:
            if self.updated_col is None:
                raise SourceError(f"setting sources[{self.index}].updated_at_column (source {self.name!r}): "
                                  "needed to select rows by time, but not set")
            conds.append(self._in_interval(start, end))
        return conds

    def _in_interval(self, start: dt.datetime | None, end: dt.datetime | None) -> sa.ColumnElement:
        parsed = self.updated_at()
        conds = []
        if start is not None:
            conds.append(parsed >= self._ts(start))
        if end is not None:
            conds.append(parsed < self._ts(end))
        if self.sqlite:
            # A text pre-filter one day wider than any UTC offset keeps an index on the column usable;
            # the parsed comparison decides.
            raw = sa.type_coerce(self.updated_col, sa.String)
            if start is not None:
                conds.append(raw >= (as_utc(start) - dt.timedelta(days=1)).strftime("%Y-%m-%d"))
            if end is not None:
                conds.append(raw < (as_utc(end) + dt.timedelta(days=2)).strftime("%Y-%m-%d"))
        return sa.and_(*conds)

    def untimed(self, now: dt.datetime) -> sa.ColumnElement:
        """Rows no interval ever selects: updated_at NULL, unparseable, or later than `now`."""
        parsed = self.updated_at()
        return sa.or_(self.updated_col.is_(None), parsed.is_(None), parsed >= self._ts(now))

    def updated_at_report(self, now: dt.datetime) -> sa.Select:
        """Counts of rows in scope whose updated_at is NULL, unparseable, or in the future (after `now`)."""
        parsed = self.updated_at()

        def count(cond):
            return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

        return sa.select(
            count(self.updated_col.is_(None)),
            count(sa.and_(self.updated_col.is_not(None), parsed.is_(None))),
            count(parsed >= self._ts(now)),
        ).select_from(self.table).where(*self.filters)

    def _ts(self, value: dt.datetime) -> dt.datetime | str:
        if self.sqlite:
            return as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # the format of updated_at()
        # Naive timestamp columns hold UTC by convention: compare them with naive UTC, not with an
        # aware value the database would shift by its session time zone.
        value = as_utc(value)
        if not getattr(self.updated_col.type, "timezone", False):
            value = value.replace(tzinfo=None)
        return value

    def select_rows(self, start: dt.datetime | None = None, end: dt.datetime | None = None,
                    sweep_before: dt.datetime | None = None) -> sa.Select:
        """id, id_type, text (and updated_at) of rows in scope, ordered by the id's canonical text so repeated ids are adjacent.

        With `sweep_before`, rows whose updated_at no interval selects (NULL, unparseable, after that
        time) are in scope too. On SQLite, id and text are read as bytes (CAST AS BLOB): a TEXT value
        holding invalid UTF-8 would make the driver raise for the whole query; the bytes are decoded
        per row instead (ContentItem.from_raw). id_type tells integer 42 from text '42'.
        """
        if self.sqlite:
            id_value = sa.cast(self.id_col, sa.LargeBinary)
            cols = [id_value.label("id"), sa.func.typeof(self.id_col).label("id_type"),
                    sa.cast(self.text_col, sa.LargeBinary).label("text")]
            order = id_value  # byte order: equal canonical ids are adjacent whatever their storage class
        else:
            cols = [self.id_col.label("id"), sa.literal(str(self.id_col.type)).label("id_type"),
                    self.text_col.label("text")]
            # A deterministic byte order for text ids: under a nondeterministic collation equal-comparing
            # ids need not be adjacent.
            order = self.id_col.collate("C") if self.dialect == "postgresql" and isinstance(
                self.id_col.type, sa.String) else self.id_col
        if self.updated_col is not None:  # the content's own time: verdicts keep it (the daily views count by it)
            cols.append(self.updated_col.label("updated_at"))
        conds = self.where(start, end)
        if sweep_before is not None and self.updated_col is not None and (start is not None or end is not None):
            conds = [*self.filters, sa.or_(self._in_interval(start, end), self.untimed(sweep_before))]
        return sa.select(*cols).where(*conds).order_by(order)

    def count_rows(self, start: dt.datetime | None = None, end: dt.datetime | None = None) -> sa.Select:
        return sa.select(sa.func.count()).select_from(self.table).where(*self.where(start, end))


@contextmanager
def open_sources(warehouse: Engine, settings: Settings, names: list[str] | None = None) -> Iterator[list[SourceTable]]:
    """The configured sources (all, or those named), each reflected in its own database: `sources[].url`,
    or the warehouse when empty. Engines made here are disposed on exit."""
    made: dict[str, Engine] = {}
    try:
        out = []
        for name in names if names is not None else [s.name for s in settings.sources]:
            url = settings.source(name).url
            if not url:
                out.extend(check_sources(warehouse, settings, [name]))
                continue
            if url not in made:
                made[url] = make_content_engine(url, settings.sources.index(settings.source(name)))
            (src,) = check_sources(made[url], settings, [name])
            out.append(dataclasses.replace(src, engine=made[url]))
        names_seen = [s.name for s in out]
        if len(set(names_seen)) != len(names_seen):
            raise SourceError(f"setting sources: a source name is used twice ({', '.join(names_seen)})")
        yield out
    finally:
        for engine in made.values():
            engine.dispose()


def make_content_engine(url: str, index: int) -> Engine:
    """An engine on a source's own database (sources[index].url); a bad URL is an error naming the setting."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise SourceError(f"setting sources[{index}].url: not a database URL ({exc})") from None
    if parsed.get_backend_name() == "sqlite" and (not parsed.database or parsed.database == ":memory:"):
        raise SourceError(f"setting sources[{index}].url: a SQLite source must be a file (sqlite:///path)")
    try:
        return sa.create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise SourceError(f"setting sources[{index}].url: no driver for {parsed.drivername!r} ({exc}); install "
                          "the matching extra (mysql, postgres, duckdb, snowflake)") from None


def check_sources(bind: Engine | Connection, settings: Settings, names: list[str] | None = None) -> list[SourceTable]:
    """Reflect and validate the configured sources (all, or those named). Errors name the setting."""
    if not settings.sources:
        raise SourceError("setting sources: no source tables configured (add one with table, id_column, text_column)")
    wanted = names if names is not None else [s.name for s in settings.sources]
    out = []
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return check_sources(conn, settings, names)
    seen = set()
    for name in wanted:
        src = settings.source(name)
        if src.name in seen:
            raise SourceError(f"setting sources: source name {src.name!r} is used twice")
        seen.add(src.name)
        out.append(_reflect(bind, src, settings.sources.index(src)))
    return out


def _reflect(conn: Connection, src: SourceSettings, index: int) -> SourceTable:
    where = f"sources[{index}]"
    try:
        table = reflect_table(conn, src.table, src.db_schema)
    except sa.exc.NoSuchTableError:
        insp = sa.inspect(conn)
        try:
            known = sorted(insp.get_table_names(schema=src.db_schema) + insp.get_view_names(schema=src.db_schema))
        except sa.exc.SQLAlchemyError:
            known = []
        in_schema = f" in schema {src.db_schema!r}" if src.db_schema else ""
        listing = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "") if known else "none"
        raise SourceError(f"setting {where}.table (source {src.name!r}): table {src.table!r} not found{in_schema} "
                          f"(tables there: {listing})") from None

    def column(field: str, col_name: str) -> sa.Column:
        if col_name not in table.c:
            raise SourceError(f"setting {where}.{field} (source {src.name!r}): column {col_name!r} not found in table "
                              f"{src.table!r} (columns: {', '.join(table.c.keys())})")
        return table.c[col_name]

    id_col = column("id_column", src.id_column)
    text_col = column("text_column", src.text_column)
    updated_col = column("updated_at_column", src.updated_at_column) if src.updated_at_column else None
    # (On SQLite a DATETIME column holds text in any format: SourceTable.updated_at parses it.)
    if updated_col is not None and not isinstance(updated_col.type, (sa.DateTime, sa.Date)):
        raise SourceError(f"setting {where}.updated_at_column (source {src.name!r}): column {src.updated_at_column!r} "
                          f"is {updated_col.type}, not a date/time column")
    filters = tuple(_filter(column(f"filters[{i}].column", f.column), f.op, f.value, f"{where}.filters[{i}]", src.name)
                    for i, f in enumerate(src.filters))
    return SourceTable(src, index, table, id_col, text_col, updated_col, filters, conn.dialect.name)


def reflect_table(conn: Connection, name: str, schema: str | None) -> sa.Table:
    """The table's columns as the database reports them. DuckDB: from information_schema (duckdb-engine's
    PostgreSQL-catalog reflection queries pg_collation, which DuckDB does not have)."""
    if conn.dialect.name == "snowflake":
        # Columns only: full reflection also runs SHOW IMPORTED KEYS for the whole schema (slow on Snowflake,
        # and fakesnow's rows do not parse); the extract needs no keys.
        if not sa.inspect(conn).has_table(name, schema=schema):
            raise sa.exc.NoSuchTableError(name)
        cols = sa.inspect(conn).get_columns(name, schema=schema)
        return sa.Table(name, sa.MetaData(), *(sa.Column(c["name"], _snowflake_type(c["type"])) for c in cols),
                        schema=schema)
    if conn.dialect.name != "duckdb":
        return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
    rows = conn.execute(sa.text(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t "
        "AND table_schema = coalesce(:s, current_schema()) ORDER BY ordinal_position"), {"t": name, "s": schema}).all()
    if not rows:
        raise sa.exc.NoSuchTableError(name)
    types = conn.dialect.ischema_names
    cols = [sa.Column(col, types.get(dtype.split("(")[0].strip().lower(), sa.types.NullType)()) for col, dtype in rows]
    return sa.Table(name, sa.MetaData(), *cols, schema=schema)


def _snowflake_type(col_type: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """snowflake-sqlalchemy reflects TIMESTAMP_NTZ/_TZ/_LTZ as types of its own, not DateTime: read them as DateTime."""
    name = getattr(col_type, "__visit_name__", "")
    if name in ("TIMESTAMP_NTZ", "TIMESTAMP_TZ", "TIMESTAMP_LTZ"):
        return sa.DateTime(timezone=name != "TIMESTAMP_NTZ")
    return col_type


def _filter(col: sa.Column, op: str, value: Any, where: str, source: str) -> sa.ColumnElement:
    if op in ("is null", "is not null"):
        return col.is_(None) if op == "is null" else col.is_not(None)
    if op in ("in", "not in"):
        if not isinstance(value, (list, tuple)):
            raise SourceError(f"setting {where}.value (source {source!r}): op {op!r} needs a list, got {value!r}")
        return col.in_(list(value)) if op == "in" else col.not_in(list(value))
    if value is None:
        raise SourceError(f"setting {where}.value (source {source!r}): op {op!r} needs a value "
                          "(use op 'is null' / 'is not null' for NULL)")
    return {
        "=": col.__eq__, "!=": col.__ne__, "<": col.__lt__, "<=": col.__le__, ">": col.__gt__, ">=": col.__ge__,
    }[op](value)
