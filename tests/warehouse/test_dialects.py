"""Warehouses beyond SQLite and PostgreSQL: MySQL/MariaDB and DuckDB as real databases, content and
verdicts in different databases, and the clear errors where a dialect cannot do something. (The
extract -> label -> validate -> publish rules run on every dialect in test_pipeline.py, the upserts
in test_publish.py, the views in test_views.py; Snowflake through fakesnow in test_snowflake.py.)"""

import sqlalchemy as sa
import pytest
from tests.warehouse.warehouse_helpers import DAY, SOURCE, T0, Warehouse, at

from safeguard_flow import pipeline
from safeguard_flow.warehouse import db, policy_store, schema
from safeguard_flow.warehouse.errors import SourceError, WarehouseError
from safeguard_flow.warehouse.sources import open_sources

@pytest.mark.mariadb
def test_mariadb_fixture_gives_an_empty_utc_database(mariadb_url):
    engine = sa.create_engine(mariadb_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar_one() == "+00:00"
        assert conn.exec_driver_sql("SHOW TABLES").all() == []
    engine.dispose()


@pytest.mark.mariadb
@pytest.mark.postgres
def test_content_in_mariadb_verdicts_in_postgresql(mariadb_url, pg_url, settings_factory, small_policies):
    """One setting per side: sources[].url is where content is read, warehouse.url where verdicts go."""
    settings = settings_factory(pg_url, sources=[{**SOURCE, "url": mariadb_url}])
    schema.upgrade(settings)
    content = Warehouse(settings, sa.create_engine(mariadb_url))
    content.create_posts()
    content.add_posts([(str(i), f"post {i}" + (" buy" if i % 3 == 0 else ""), at(i)) for i in range(6)]
                      + [("A", "upper case id", at(7)), ("a", "lower case id", at(7))])
    wh = Warehouse(settings, db.make_engine(settings))
    wh.policies = [r.policy for r in policy_store.publish_policies(wh.engine, settings, small_policies, author="t")]
    try:
        run = pipeline.start_interval_run(wh.engine, settings, T0, T0 + DAY)
        assert run.items == 8
        wh.label(run.id)
        assert pipeline.validate_run(wh.engine, settings, run.id).success  # real GX
        assert pipeline.publish_run(wh.engine, settings, run.id)["inserted"] == 16
        verdicts = wh.verdicts()
        assert {v["content_id"] for v in verdicts} == {"0", "1", "2", "3", "4", "5", "A", "a"}
        assert {(v["content_id"], v["label"]) for v in verdicts if v["policy"] == "spam"} >= {("0", 1), ("1", 0)}
        with content.engine.connect() as conn:  # nothing of ours was written to the content database
            assert {r[0] for r in conn.exec_driver_sql("SHOW TABLES")} == {"posts"}
        with pytest.raises(sa.exc.NoSuchTableError):
            sa.Table("posts", sa.MetaData(), autoload_with=wh.engine)
    finally:
        content.engine.dispose()
        wh.engine.dispose()


@pytest.mark.mariadb
def test_a_case_insensitive_mysql_warehouse_is_refused_with_the_fix(mariadb_server, settings_factory):
    url = mariadb_server.create_database(collation="utf8mb4_unicode_ci")
    try:
        with pytest.raises(WarehouseError, match="utf8mb4_unicode_ci .* COLLATE utf8mb4_bin"):
            schema.upgrade(settings_factory(url))
    finally:
        mariadb_server.drop_database(url)


def test_a_source_url_without_its_driver_names_the_setting(sqlite_wh_settings):
    settings = sqlite_wh_settings.model_copy(update={"sources": [
        sqlite_wh_settings.sources[0].model_copy(update={"url": "nosuchdb://x/y"})]})
    engine = db.make_engine(settings)
    try:
        with pytest.raises(SourceError, match=r"setting sources\[0\]\.url: no driver for 'nosuchdb'"):
            with open_sources(engine, settings):
                pass
    finally:
        engine.dispose()


def test_duckdb_downgrade_is_refused_in_words(tmp_path, settings_factory):
    settings = settings_factory(f"duckdb:///{tmp_path / 'wh.duckdb'}")
    assert schema.upgrade(settings) == schema.head()
    with pytest.raises(WarehouseError, match="DuckDB .*downgrade"):
        schema.downgrade(settings, "base")
    assert schema.current(settings) == schema.head()
