"""SafeguardWarehouseHook: the one place a DAG gets its warehouse connection.

The connection (default id ``safeguard_warehouse_default``) is either

- of type ``safeguard_warehouse``: a full SQLAlchemy URL in its extra
  (``{"url": "postgresql+psycopg://user:pw@host/db"}``) or the usual host/port/login/password/schema
  fields (``schema`` is the database name; extra ``drivername`` defaults to ``postgresql+psycopg``);
  extra ``table_prefix`` / ``db_schema`` set those warehouse settings too; or
- any SQL connection a user already has (``postgres``, ``mysql``, ``snowflake``, ...): the URL comes
  from that provider hook's ``sqlalchemy_url`` (DbApiHook), so its own extras (sslmode, IAM, ...) apply.

The connection's fields win over every other settings source (settings.apply_connection). With no
such connection configured, ``settings.warehouse_url`` is used (the embedded SQLite file).

    AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT='{"conn_type": "safeguard_warehouse",
                                              "extra": {"url": "sqlite:////data/warehouse.db"}}'
    AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT='postgresql://user:pw@db:5432/warehouse'
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from safeguard_flow.airflow.provider import WAREHOUSE_CONN_TYPE
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings, SettingsError, apply_connection, get_settings

if TYPE_CHECKING:  # pragma: no cover
    import sqlalchemy as sa

_SETTING_EXTRAS = {"table_prefix", "db_schema"}


class SafeguardWarehouseHook(BaseHook):
    conn_name_attr = "safeguard_conn_id"
    default_conn_name = "safeguard_warehouse_default"
    conn_type = WAREHOUSE_CONN_TYPE
    hook_name = "Safeguard warehouse"

    def __init__(self, safeguard_conn_id: str = default_conn_name, settings: Settings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.safeguard_conn_id = safeguard_conn_id
        self._base_settings = settings

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"schema": "Database"},
            "placeholders": {
                "host": "db.example.com (or leave empty and set extra.url)",
                "schema": "warehouse",
                "extra": '{"url": "postgresql+psycopg://user:pw@host:5432/warehouse", "table_prefix": "sg_"}',
            },
        }

    def _connection(self):
        """The Airflow connection, or None when none is configured (the settings' URL is used then)."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.safeguard_conn_id)
        except AirflowNotFoundException:
            return None

    @cached_property
    def settings(self) -> Settings:
        """The process settings with the connection's URL (and extras) in the warehouse section."""
        base = self._base_settings or get_settings()
        conn = self._connection()
        if conn is None:
            return base
        if conn.conn_type != WAREHOUSE_CONN_TYPE:
            return apply_connection(base, self.safeguard_conn_id, "warehouse", {"url": self._sql_hook_url(conn)})
        extra = conn.extra_dejson or {}
        unknown = sorted(set(extra) - _SETTING_EXTRAS - {"url", "drivername", "query"})
        if unknown:
            raise SettingsError(
                f"connection {self.safeguard_conn_id!r}: unknown extra field(s) {unknown} "
                f"(known: url, drivername, query, {', '.join(sorted(_SETTING_EXTRAS))})"
            )
        warehouse = {"url": self._url(conn, extra), **{k: extra[k] for k in _SETTING_EXTRAS if k in extra}}
        return apply_connection(base, self.safeguard_conn_id, "warehouse", warehouse)

    def _sql_hook_url(self, conn) -> str:
        """The SQLAlchemy URL of a standard SQL connection, from its provider hook (DbApiHook)."""
        try:
            url = conn.get_hook().sqlalchemy_url
        except NotImplementedError:
            url = None
        except Exception as exc:  # unknown conn type, provider not installed
            raise SettingsError(f"connection {self.safeguard_conn_id!r} (type {conn.conn_type!r}): cannot build "
                                f"its hook ({type(exc).__name__}: {exc})") from None
        if url is None:
            raise SettingsError(
                f"connection {self.safeguard_conn_id!r} (type {conn.conn_type!r}) gives no SQLAlchemy URL: use a SQL "
                f"connection whose hook has sqlalchemy_url (postgres, ...) or type {WAREHOUSE_CONN_TYPE!r} with extra.url")
        return url.render_as_string(hide_password=False) if hasattr(url, "render_as_string") else str(url)

    def _url(self, conn, extra: dict[str, Any]) -> str:
        if extra.get("url"):
            return str(extra["url"])
        if not conn.host:
            raise SettingsError(
                f"connection {self.safeguard_conn_id!r}: set extra.url to a SQLAlchemy URL, or fill host (and schema = database)"
            )
        import sqlalchemy as sa

        url = sa.engine.URL.create(
            drivername=extra.get("drivername") or "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host,
            port=conn.port or None,
            database=conn.schema or None,
            query=extra.get("query") or {},
        )
        return url.render_as_string(hide_password=False)

    def get_url(self) -> str:
        return self.settings.warehouse_url

    def __repr__(self) -> str:  # never the password
        conn = f"{type(self).__name__}(safeguard_conn_id={self.safeguard_conn_id!r}"
        return conn + (f", url={mask_url(self.settings.warehouse_url)!r})" if "settings" in self.__dict__ else ")")

    @cached_property
    def engine(self) -> sa.Engine:
        from safeguard_flow.warehouse import db

        return db.make_engine(self.settings)

    def get_engine(self) -> sa.Engine:
        return self.engine

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI's Test button: can we connect, and is the schema migrated?"""
        try:
            from safeguard_flow.warehouse import schema

            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            revision = schema.current(self.settings, engine=self.engine)
        except Exception as exc:  # report, do not raise: this is a UI check
            return False, f"{type(exc).__name__}: {exc}"
        if revision is None:
            return True, "connected; the warehouse schema is not migrated yet (run `safeguard-flow db upgrade`)"
        return True, f"connected; schema revision {revision}"

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
            del self.__dict__["engine"]
