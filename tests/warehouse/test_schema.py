"""Migrations own the schema: prefix/schema, prefixed version table, views, up/down, model == migrations."""

import pytest
import sqlalchemy as sa

from safeguard_flow.settings import SettingsError
from safeguard_flow.warehouse import db, schema
from safeguard_flow.warehouse.model import TABLE_NAMES, VIEW_NAMES


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
