"""A read-only role for BI tools: SELECT on the BI views, nothing on the tables behind them.

A view reads its tables with its owner's rights, so a role granted SELECT on the views only sees
what the views show and cannot read `work_items`, the staging table or the model's analysis:
- PostgreSQL: views are owned by the role that ran the migrations (and run with its rights unless
  created `security_invoker`); the BI role gets USAGE on the schema and SELECT on each view, and
  every privilege on our tables is revoked from it (in case someone granted one before).
- MySQL / MariaDB: views are `SQL SECURITY DEFINER` by default (the migrating user); the account
  gets SELECT on each view. A view made `SQL SECURITY INVOKER` would need the table rights, so it is
  refused with a clear error rather than granted half-working.
SQLite has no roles (give people a copy of the file, or Datasette: `make bi`); other dialects are
refused by name, not guessed at.

A view dropped and recreated by a later migration loses its grants: run `db grant-bi` again after
`db upgrade` (it is idempotent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.tables import TABLE_NAMES, VIEW_NAMES

# PostgreSQL role / MySQL user and host names we accept: plain names, no quotes or spaces to escape.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$.\-]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9_.%:\-]{1,255}$")


class BiRoleError(ValueError):
    """Why a BI role could not be granted (a message for people, no traceback needed)."""


@dataclass
class BiGrant:
    role: str
    dialect: str
    views: list[str] = field(default_factory=list)
    revoked_tables: list[str] = field(default_factory=list)
    session_settings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def grant_bi(engine: Engine, settings: Settings, role: str) -> BiGrant:
    """Let `role` (PostgreSQL role, or MySQL account `user` / `user@host` / a role) read the BI views
    and nothing else of ours. Idempotent."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.begin() as conn:
            return _grant_postgres(conn, settings, role)
    if dialect in ("mysql", "mariadb"):
        with engine.begin() as conn:
            return _grant_mysql(conn, settings, role)
    if dialect == "sqlite":
        raise BiRoleError("SQLite has no roles: share the warehouse file read-only, or open it in Datasette "
                          "(`make bi`); `db grant-bi` is for PostgreSQL and MySQL/MariaDB")
    raise BiRoleError(f"db grant-bi supports PostgreSQL and MySQL/MariaDB, not {dialect}: grant SELECT on the "
                      f"views ({', '.join(_views(settings))}) with your database's own tools")


def _views(settings: Settings) -> list[str]:
    return [settings.warehouse.table_prefix + v for v in VIEW_NAMES]


def _check_views(conn: Connection, settings: Settings, schema: str | None) -> list[str]:
    views = _views(settings)
    present = set(sa.inspect(conn).get_view_names(schema=schema))
    missing = [v for v in views if v not in present]
    if missing:
        raise BiRoleError(f"views missing ({', '.join(missing)}): run `safeguard-flow db upgrade` first")
    return views


def _grant_postgres(conn: Connection, settings: Settings, role: str) -> BiGrant:
    if not _NAME.match(role):
        raise BiRoleError(f"role {role!r}: use a plain role name (letters, digits, _ $ . -)")
    exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if exists is None:
        raise BiRoleError(f"role {role!r} does not exist: create it first, e.g. CREATE ROLE {role} LOGIN PASSWORD '...'")
    schema = settings.warehouse.db_schema or conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    quote = conn.dialect.identifier_preparer.quote
    views = _check_views(conn, settings, settings.warehouse.db_schema)
    q_role, q_schema = quote(role), quote(schema)
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {q_schema} TO {q_role}")
    present = set(sa.inspect(conn).get_table_names(schema=schema))
    tables = [t for t in (settings.warehouse.table_prefix + n for n in TABLE_NAMES) if t in present]
    for table in tables:
        conn.exec_driver_sql(f"REVOKE ALL ON {q_schema}.{quote(table)} FROM {q_role}")
    for view in views:
        conn.exec_driver_sql(f"GRANT SELECT ON {q_schema}.{quote(view)} TO {q_role}")
    grant = BiGrant(role=role, dialect="postgresql", views=views, revoked_tables=tables)
    _postgres_session_defaults(conn, q_role, grant)
    return grant


# A dashboard's query over a few hundred thousand verdicts is what JIT compiles for and loses on:
# compiling took 1.6 s of a 1.9 s query at 10M verdicts (BENCHMARKS.md), the plan runs in 0.3 s.
BI_SESSION_DEFAULTS = {"jit": "off"}


def _postgres_session_defaults(conn: Connection, q_role: str, grant: BiGrant) -> None:
    """Session defaults for the BI role (ALTER ROLE ... SET). They need CREATEROLE or superuser: without
    it the grant still stands and the warning says what to ask a DBA for."""
    for name, value in BI_SESSION_DEFAULTS.items():
        statement = f"ALTER ROLE {q_role} SET {name} = {value}"
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(statement)
            grant.session_settings.append(f"{name} = {value}")
        except sa.exc.DBAPIError as exc:
            grant.warnings.append(f"could not set {name} = {value} for the role ({exc.orig}); "
                                  f"ask a DBA to run: {statement}")


def _mysql_account(role: str) -> str:
    user, _, host = role.partition("@")
    if not _NAME.match(user) or (host and not _HOST.match(host)):
        raise BiRoleError(f"account {role!r}: use `user`, `user@host` or a role name (letters, digits, _ $ . -)")
    return f"'{user}'@'{host}'" if host else f"'{user}'"


def _grant_mysql(conn: Connection, settings: Settings, role: str) -> BiGrant:
    account = _mysql_account(role)
    database = conn.execute(sa.text("SELECT DATABASE()")).scalar_one()
    if not database:
        raise BiRoleError("the warehouse URL names no database: add one (mysql+pymysql://user@host/DATABASE)")
    views = _check_views(conn, settings, None)
    invoker = [r[0] for r in conn.execute(sa.text(
        "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = :db AND SECURITY_TYPE = 'INVOKER'"),
        {"db": database}) if r[0] in views]
    if invoker:
        raise BiRoleError(f"views {', '.join(invoker)} are SQL SECURITY INVOKER: a role reading them would need "
                          "the tables too; recreate them SQL SECURITY DEFINER (what `db upgrade` makes)")
    quote = conn.dialect.identifier_preparer.quote
    for view in views:
        try:
            conn.exec_driver_sql(f"GRANT SELECT ON {quote(database)}.{quote(view)} TO {account}")
        except sa.exc.DBAPIError as exc:
            raise BiRoleError(f"GRANT SELECT to {role}: {exc.orig} (create the account or role first, e.g. "
                              f"CREATE USER {account} IDENTIFIED BY '...')") from None
    return BiGrant(role=role, dialect=conn.dialect.name, views=views)
