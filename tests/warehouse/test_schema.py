"""Migrations own the schema: prefix/schema, prefixed version table, views, up/down, model == migrations."""

import pytest
import sqlalchemy as sa

from safeguard_flow.settings import SettingsError
from safeguard_flow.warehouse import db, schema
from safeguard_flow.warehouse.tables import TABLE_NAMES, VIEW_NAMES


def test_upgrade_creates_prefixed_tables_views_and_version_table(warehouse_url, settings_factory):
    settings = settings_factory(warehouse_url, warehouse={"table_prefix": "acme_"})
    assert schema.current(settings) is None
    assert schema.upgrade(settings) == schema.head()
    engine = db.make_engine(settings)
    insp = sa.inspect(engine)
    assert set(insp.get_table_names()) == {f"acme_{t}" for t in TABLE_NAMES} | {"acme_alembic_version"}
    assert set(insp.get_view_names()) == {f"acme_{v}" for v in VIEW_NAMES}
    assert {c["name"] for c in insp.get_unique_constraints("acme_policy_versions")} == {"acme_uq_policy_versions_sha256"}
    assert schema.upgrade(settings) == schema.head()  # a second upgrade is a no-op
    engine.dispose()


def test_two_prefixes_share_one_database(warehouse_url, settings_factory):
    a = settings_factory(warehouse_url, warehouse={"table_prefix": "a_"})
    b = settings_factory(warehouse_url, warehouse={"table_prefix": "b_"})
    schema.upgrade(a)
    assert schema.current(b) is None  # b's version table is its own
    schema.upgrade(b)
    assert schema.current(a) == schema.current(b) == schema.head()


def test_downgrade_to_base_and_back(warehouse_url, settings_factory):
    settings = settings_factory(warehouse_url)
    schema.upgrade(settings)
    assert schema.downgrade(settings, "base") is None
    engine = db.make_engine(settings)
    assert sa.inspect(engine).get_table_names() == ["sg_alembic_version"]
    assert sa.inspect(engine).get_view_names() == []
    engine.dispose()
    assert schema.upgrade(settings) == schema.head()


def test_model_matches_migrations(warehouse_url, settings_factory):
    """The tables the code queries are exactly what the migrations create (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    settings = settings_factory(warehouse_url)
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": schema.version_table(settings),
                                                     "compare_type": True})
        diff = compare_metadata(ctx, schema.tables(settings).metadata)
    engine.dispose()
    assert diff == []


def test_postgresql_schema_setting(pg_url, settings_factory):
    settings = settings_factory(pg_url, warehouse={"db_schema": "labels", "table_prefix": "sg_"})
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    insp = sa.inspect(engine)
    assert "sg_verdicts" in insp.get_table_names(schema="labels")
    assert "sg_alembic_version" in insp.get_table_names(schema="labels")
    assert "sg_current_verdicts" in insp.get_view_names(schema="labels")
    assert insp.get_table_names(schema="public") == []
    engine.dispose()
    assert schema.current(settings) == schema.head()


def test_sqlite_rejects_a_schema(sqlite_url, settings_factory):
    settings = settings_factory(sqlite_url, warehouse={"db_schema": "labels"})
    with pytest.raises(SettingsError, match="warehouse.db_schema"):
        schema.upgrade(settings)


@pytest.mark.parametrize("prefix", ["sg-x", "1abc", "a b", "x;drop"])
def test_prefix_must_be_an_identifier(settings_factory, prefix):
    with pytest.raises(SettingsError, match="table_prefix"):
        settings_factory(warehouse={"table_prefix": prefix})


def test_view_files_only_take_known_placeholders(tmp_path, monkeypatch):
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "env.py").write_text("")
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / "current_verdicts.sql").write_text("SELECT * FROM ${verdictz}")
    monkeypatch.setenv("SAFEGUARD_SQL_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="verdictz"):
        schema.view_sql("current_verdicts", sa.create_engine("sqlite://").dialect, "sg_", None)
    # ${utc_day} is the day of its argument in the dialect's words; without one it is unknown.
    (tmp_path / "views" / "current_verdicts.sql").write_text("SELECT ${utc_day}(COALESCE(a, b)), ${utc_day}")
    with pytest.raises(ValueError, match="utc_day"):
        schema.view_sql("current_verdicts", sa.create_engine("sqlite://").dialect, "sg_", None)
    (tmp_path / "views" / "current_verdicts.sql").write_text("SELECT ${utc_day}(COALESCE(a, b))")
    assert schema.view_sql("current_verdicts", sa.create_engine("sqlite://").dialect, "sg_", None) == \
        "SELECT date(COALESCE(a, b))"


def test_0004_keeps_data_both_ways(warehouse_url, settings_factory):
    """0003 -> 0004: SQLite timestamps gain their zone, the change log is seeded from the current
    versions, old verdicts chart on their run's interval day; 0004 -> 0003 gives back 0003's shape."""
    settings = settings_factory(warehouse_url)
    schema.upgrade(settings, "0003")
    engine = db.make_engine(settings)
    sqlite = engine.dialect.name == "sqlite"
    ts = (lambda s: s + ".000000") if sqlite else (lambda s: s + "+00")
    with engine.begin() as conn:
        run = conn.exec_driver_sql
        run("INSERT INTO sg_policies (name, current_version, owner, description, created_at, updated_at) "
            f"VALUES ('spam', 1, '', '', '{ts('2024-03-01 08:00:00')}', '{ts('2024-03-01 08:00:00')}')")
        run("INSERT INTO sg_policy_versions (name, version, sha256, text, labels, output_format, reasoning_effort, "
            f"created_at) VALUES ('spam', 1, 'abc', 'text', '[0, 1]', 'binary', 'low', '{ts('2024-03-01 08:00:00')}')")
        run("INSERT INTO sg_runs (id, kind, status, interval_start, interval_end, policy_refs, created_at, updated_at) "
            f"VALUES ('r1', 'nightly', 'published', '{ts('2024-03-01 00:00:00')}', '{ts('2024-03-02 00:00:00')}', "
            f"'[[\"spam\", 1]]', '{ts('2024-03-05 09:00:00')}', '{ts('2024-03-05 09:00:00')}')")
        run("INSERT INTO sg_verdicts (source, content_id, policy, policy_version, content_hash, label, parse_status, "
            f"labelled_at, extracted_at, run_id, published_at) VALUES ('posts', '1', 'spam', 1, 'h', 1, 'ok', "
            f"'{ts('2024-03-05 09:00:00')}', '{ts('2024-03-05 09:00:00')}', 'r1', '{ts('2024-03-05 09:00:00')}')")

    def raw_labelled_at():
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT CAST(labelled_at AS TEXT) FROM sg_verdicts").scalar_one()

    def rates():
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.exec_driver_sql("SELECT * FROM sg_daily_policy_rates")]

    assert schema.upgrade(settings, "0004") == "0004"
    if sqlite:
        assert raw_labelled_at() == "2024-03-05 09:00:00.000000+00:00"
    by_day = {str(r["day"])[:10]: (r["verdicts"], r["labelling_day_verdicts"]) for r in rates()}
    assert by_day == {"2024-03-01": (1, 0), "2024-03-05": (0, 1)}  # no content time: the interval's day
    from safeguard_flow.warehouse import policy_store

    (change,) = policy_store.latest_changes(engine, settings).values()
    assert (change.name, change.version, change.previous_version) == ("spam", 1, None)
    assert policy_store.changes_to_announce(engine, settings, []) == []  # nothing old is announced again

    assert schema.downgrade(settings, "0003") == "0003"
    insp = sa.inspect(engine)
    assert "sg_policy_changes" not in insp.get_table_names()
    assert "content_updated_at" not in {c["name"] for c in insp.get_columns("sg_verdicts")}
    if sqlite:
        assert raw_labelled_at() == "2024-03-05 09:00:00.000000"
    (row,) = rates()
    assert str(row["day"])[:10] == "2024-03-01" and "labelling_day_verdicts" not in row
    assert schema.upgrade(settings, "0004") == "0004"

    # 0012 stores each verdict's content day (here the run's interval day) and the labelling day
    # moves to its own view.
    schema.upgrade(settings)
    with engine.connect() as conn:
        assert str(conn.exec_driver_sql("SELECT content_day FROM sg_verdicts").scalar_one())[:10] == "2024-03-01"
        labelling = [dict(r._mapping) for r in conn.exec_driver_sql("SELECT * FROM sg_daily_labelling")]
    assert {str(r["day"])[:10]: r["verdicts"] for r in rates()} == {"2024-03-01": 1}
    assert {str(r["day"])[:10]: r["verdicts"] for r in labelling} == {"2024-03-05": 1}
    engine.dispose()
