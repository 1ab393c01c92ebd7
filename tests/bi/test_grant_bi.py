"""`safeguard-flow db grant-bi ROLE`: a role that reads the BI views and nothing behind them, on a
real PostgreSQL and a real MariaDB; the comments of migration 0011 on every view and view column."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
import yaml
from tests.bi.bi_helpers import bi_settings, build

from safeguard_flow.cli import main as cli
from safeguard_flow.warehouse import schema
from safeguard_flow.warehouse.tables import TABLE_NAMES, VIEW_NAMES

def _grant(settings, tmp_path, role: str, capsys) -> str:
    config = tmp_path / "grant.yaml"
    config.write_text(yaml.safe_dump({"home": settings.home, "warehouse": {"url": settings.warehouse.url}}))
    assert cli.main(["--config", str(config), "db", "grant-bi", role]) == 0, capsys.readouterr()
    return capsys.readouterr().out


def _reads_views_only(url: str, settings, expected: dict[str, int]) -> None:
    """As the BI role: every view reads as the owner sees it; every table of ours is refused."""
    engine = sa.create_engine(url)
    names = schema.qualified_names(engine.dialect, settings.warehouse.table_prefix, settings.warehouse.db_schema)
    try:
        with engine.connect() as conn:
            for view in VIEW_NAMES:
                assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {names[view]}")).scalar_one() == expected[view], view
        for table in TABLE_NAMES:
            with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as err:
                conn.execute(sa.text(f"SELECT * FROM {names[table]}"))
            assert "denied" in str(err.value).lower(), (table, err.value)
    finally:
        engine.dispose()


def _counts(wh) -> dict[str, int]:
    counts = {v: len(wh.view(v)) for v in VIEW_NAMES}
    assert counts["current_verdicts"] and counts["daily_policy_rates"] and counts["verdict_flips"]
    return counts


@pytest.mark.postgres
def test_grant_bi_postgres(pg_url, settings_factory, small_policies, tmp_path, capsys):
    settings = bi_settings(settings_factory, pg_url)
    wh = build(settings, small_policies)
    role = f"bi_{uuid.uuid4().hex[:8]}"
    with wh.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD 'bi-secret'")
        # Granted before by someone: grant-bi takes it away again (views only).
        conn.exec_driver_sql(f"GRANT SELECT ON sg_work_items TO {role}")
    out = _grant(settings, tmp_path, role, capsys)
    assert "sg_current_verdicts" in out and "no privilege" in out and "jit = off" in out
    url = sa.make_url(pg_url).set(username=role, password="bi-secret").render_as_string(hide_password=False)
    _reads_views_only(url, settings, _counts(wh))
    bi_engine = sa.create_engine(url)
    with bi_engine.connect() as conn:  # the role's sessions start without JIT (BENCHMARKS.md: BI views)
        assert conn.exec_driver_sql("SHOW jit").scalar_one() == "off"
    bi_engine.dispose()
    _grant(settings, tmp_path, role, capsys)  # idempotent

    # Clear errors, not tracebacks: an unknown role, a SQLite warehouse.
    config = tmp_path / "grant.yaml"
    assert cli.main(["--config", str(config), "db", "grant-bi", "nobody_here"]) == 2
    assert "does not exist" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "db", "grant-bi", "x; DROP TABLE sg_verdicts"]) == 2
    assert "plain role name" in capsys.readouterr().out
    wh.engine.dispose()


@pytest.mark.postgres
def test_view_and_column_comments_postgres(pg_url, settings_factory, small_policies):
    """Every BI view and every one of its columns has a comment a BI tool shows (migration 0011, the
    last to touch the views); downgrading it removes them."""
    settings = bi_settings(settings_factory, pg_url)
    schema.upgrade(settings)
    engine = sa.create_engine(pg_url)
    try:
        insp = sa.inspect(engine)
        views = insp.get_view_names()
        assert {"sg_current_verdicts", "sg_daily_policy_rates", "sg_verdict_flips"} <= set(views)
        for name in views:
            assert insp.get_table_comment(name)["text"], name
            missing = [c["name"] for c in insp.get_columns(name) if not c.get("comment")]
            assert not missing, f"{name}: columns without a comment: {missing}"
        assert "sha256" in {c["name"]: c["comment"] for c in insp.get_columns("sg_current_verdicts")}["content_hash"]
        schema.downgrade(settings, "0012")
        assert sa.inspect(engine).get_table_comment("sg_current_verdicts")["text"] is None
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_grant_bi_without_createrole_grants_and_says_what_to_ask_for(pg_url):
    """A migrating role that may not ALTER ROLE: the session default is a warning naming the statement."""
    from safeguard_flow.warehouse.bi_role import BiGrant, _postgres_session_defaults

    admin = sa.create_engine(pg_url)
    owner, bi = f"own_{uuid.uuid4().hex[:8]}", f"bi_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {owner} LOGIN PASSWORD 'o'")
        conn.exec_driver_sql(f"CREATE ROLE {bi} LOGIN PASSWORD 'b'")
    plain = sa.create_engine(sa.make_url(pg_url).set(username=owner, password="o"))
    try:
        grant = BiGrant(role=bi, dialect="postgresql")
        with plain.begin() as conn:
            _postgres_session_defaults(conn, bi, grant)
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1  # the transaction is still usable
        assert grant.session_settings == []
        assert len(grant.warnings) == 1 and f"ALTER ROLE {bi} SET jit = off" in grant.warnings[0]
    finally:
        plain.dispose()
        admin.dispose()


def test_grant_bi_refuses_sqlite(sqlite_url, settings_factory, tmp_path, capsys):
    settings = settings_factory(sqlite_url)
    schema.upgrade(settings)
    config = tmp_path / "grant.yaml"
    config.write_text(yaml.safe_dump({"home": settings.home, "warehouse": {"url": sqlite_url}}))
    assert cli.main(["--config", str(config), "db", "grant-bi", "bi"]) == 2
    assert "SQLite has no roles" in capsys.readouterr().out


@pytest.mark.mariadb
def test_grant_bi_mariadb(mariadb_server, mariadb_url, settings_factory, small_policies, tmp_path, capsys):
    """MySQL/MariaDB: the views are SQL SECURITY DEFINER (the migrating user), so an account granted
    SELECT on them reads through them and nothing else; MySQL keeps no comments on views."""
    settings = bi_settings(settings_factory, mariadb_url)
    wh = build(settings, small_policies)
    user = f"bi_{uuid.uuid4().hex[:8]}"
    mariadb_server.sql_as_root(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'bi-secret'")
    out = _grant(settings, tmp_path, f"{user}@127.0.0.1", capsys)
    assert "sg_current_verdicts" in out
    url = sa.make_url(mariadb_url).set(username=user, password="bi-secret").render_as_string(hide_password=False)
    _reads_views_only(url, settings, _counts(wh))
    _grant(settings, tmp_path, f"{user}@127.0.0.1", capsys)  # idempotent

    # An account that does not exist, and one with a quote in it: refused in words.
    config = tmp_path / "grant.yaml"
    assert cli.main(["--config", str(config), "db", "grant-bi", "nobody_here@127.0.0.1"]) == 2
    assert "create the account" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "db", "grant-bi", "x'@'%"]) == 2
    assert "use `user`" in capsys.readouterr().out
    wh.engine.dispose()
