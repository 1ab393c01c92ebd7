"""SafeguardWarehouseHook (connection -> settings -> engine) and the UI app outside the API server."""

from __future__ import annotations

import json

import pytest


def _conn_env(monkeypatch, conn_id: str, conn: dict) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_without_a_connection_the_settings_url_is_used(settings_factory, sqlite_url):
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

    settings = settings_factory(sqlite_url)
    hook = SafeguardWarehouseHook("sg_wh_missing", settings=settings)
    assert hook.get_url() == sqlite_url and hook.settings is settings


def test_connection_url_and_extras_override_settings(monkeypatch, settings_factory, tmp_path):
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

    url = f"sqlite:///{tmp_path / 'other.db'}"
    _conn_env(monkeypatch, "sg_wh_url", {"conn_type": "safeguard_warehouse", "extra": {"url": url, "table_prefix": "bi_"}})
    hook = SafeguardWarehouseHook("sg_wh_url", settings=settings_factory())
    assert hook.get_url() == url and hook.settings.warehouse.table_prefix == "bi_"
    ok, message = hook.test_connection()
    assert ok and "not migrated" in message


def test_connection_fields_build_a_postgres_url(monkeypatch, settings_factory):
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

    _conn_env(monkeypatch, "sg_wh_fields", {"conn_type": "safeguard_warehouse", "host": "db.example", "port": 5433,
                                            "login": "bi", "password": "p@ss", "schema": "warehouse"})
    hook = SafeguardWarehouseHook("sg_wh_fields", settings=settings_factory())
    assert hook.get_url() == "postgresql+psycopg://bi:p%40ss@db.example:5433/warehouse"


def test_bad_connections_name_the_problem(monkeypatch, settings_factory):
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook
    from safeguard_flow.settings import SettingsError

    _conn_env(monkeypatch, "sg_wh_bad", {"conn_type": "safeguard_warehouse", "extra": {"uri": "sqlite://"}})
    with pytest.raises(SettingsError, match=r"connection 'sg_wh_bad': unknown extra field\(s\) \['uri'\]"):
        _ = SafeguardWarehouseHook("sg_wh_bad", settings=settings_factory()).settings
    _conn_env(monkeypatch, "sg_wh_empty", {"conn_type": "safeguard_warehouse"})
    with pytest.raises(SettingsError, match="set extra.url"):
        _ = SafeguardWarehouseHook("sg_wh_empty", settings=settings_factory()).settings
    _conn_env(monkeypatch, "sg_wh_prefix", {"conn_type": "safeguard_warehouse", "extra": {"url": "sqlite://", "table_prefix": "no-dash"}})
    with pytest.raises(SettingsError, match="table_prefix"):
        _ = SafeguardWarehouseHook("sg_wh_prefix", settings=settings_factory()).settings


@pytest.mark.postgres
def test_a_standard_postgres_connection_works_through_its_provider_hook(monkeypatch, settings_factory, pg_url, capsys):
    """A `postgres` connection a user already has: the URL comes from PostgresHook.sqlalchemy_url,
    wins over the settings, reaches the real server, and its password never prints."""
    import sqlalchemy as sa

    from safeguard_flow.cli import main as cli
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook
    from safeguard_flow.warehouse import schema

    url = sa.make_url(pg_url)
    _conn_env(monkeypatch, "sg_wh_pg", {"conn_type": "postgres", "host": url.host, "port": url.port,
                                        "login": url.username, "password": "s3cret-pw", "schema": url.database})
    hook = SafeguardWarehouseHook("sg_wh_pg", settings=settings_factory())
    assert hook.get_url() == f"postgresql+psycopg://{url.username}:s3cret-pw@{url.host}:{url.port}/{url.database}"
    assert hook.settings.origin("warehouse.url") == "connection sg_wh_pg"
    ok, message = hook.test_connection()
    assert ok and "not migrated" in message, message
    assert schema.upgrade(hook.settings, engine=hook.engine) == schema.head()
    assert hook.test_connection() == (True, f"connected; schema revision {schema.head()}")
    assert "s3cret-pw" not in repr(hook) and "s3cret-pw" not in repr(hook.settings)
    hook.close()

    # `config show --airflow-connection` shows what a task sees, masked.
    monkeypatch.delenv("SAFEGUARD_CONFIG", raising=False)
    assert cli.main(["config", "show", "--airflow-connection", "sg_wh_pg"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-pw" not in out
    row = next(line for line in out.splitlines() if line.startswith("warehouse.url "))
    assert f"{url.username}:***@{url.host}" in row and row.rstrip().endswith("connection sg_wh_pg")


def test_a_connection_without_a_sqlalchemy_url_is_refused(monkeypatch, settings_factory):
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook
    from safeguard_flow.settings import SettingsError

    _conn_env(monkeypatch, "sg_wh_http", {"conn_type": "http", "host": "example.com"})
    with pytest.raises(SettingsError, match="connection 'sg_wh_http'"):
        _ = SafeguardWarehouseHook("sg_wh_http", settings=settings_factory()).settings


def test_ui_app_requires_a_login_and_renders_an_empty_warehouse(airflow_db, wh_engine, wh_settings):
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from safeguard_flow.airflow.ui import Dashboard, create_app

    auth = init_auth_manager()  # what the API server does at start-up (the configured simple auth manager)
    guarded = TestClient(create_app(lambda: Dashboard(wh_engine, wh_settings)))
    assert guarded.get("/").status_code == 401
    assert guarded.get("/api/runs").status_code == 401
    assert guarded.get("/health").json() == {"status": "ok"}
    assert guarded.get("/api/runs", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
    token = auth.generate_jwt(SimpleAuthManagerUser(username="analyst", role="viewer"))
    assert guarded.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).json() == []
    guarded.cookies.set("_token", token)  # inside the Airflow UI the browser sends the session cookie
    assert guarded.get("/").status_code == 200

    app = TestClient(create_app(lambda: Dashboard(wh_engine, wh_settings), require_auth=False))
    page = app.get("/")
    assert page.status_code == 200 and "No runs yet." in page.text and "No published verdicts" in page.text
    assert app.get("/api/runs").json() == [] and app.get("/api/flips").json() == []
    assert app.get("/", params={"days": 0}).status_code == 422

    from safeguard_flow.console import format_views
    from safeguard_flow.warehouse.views import summary_rows

    out = format_views(summary_rows(wh_engine, wh_settings), 10)  # what `make demo` prints at the end
    assert "== sg_current_verdicts (first 10 rows) ==\n(no rows)" in out


def test_svg_chart_draws_gaps_and_escapes_names():
    import datetime as dt

    from safeguard_flow.airflow.svg_chart import line_chart

    d = [dt.date(2026, 11, day) for day in (20, 21, 22, 23)]
    svg = line_chart({"v1<x>": [(d[0], 0.1), (d[1], None), (d[2], 0.3), (d[3], 0.2)]}, title="a&b")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 3  # the missing day splits the line
    assert "v1&lt;x&gt;" in svg and "a&amp;b" in svg and "<x>" not in svg
    assert ">40%<" in svg  # round grid labels
