"""Fixtures for the warehouse tests. Every test here runs on SQLite and on a real PostgreSQL server
(the `warehouse_url` fixture of tests/conftest.py); helpers live in warehouse_helpers.py."""

from __future__ import annotations

import pytest
from tests.warehouse.warehouse_helpers import SOURCE, Warehouse

from safeguard_flow.warehouse import db, policy_store, schema


@pytest.fixture
def make_warehouse(warehouse_url, settings_factory, small_policies):
    """Build a migrated warehouse (SQLite or PostgreSQL) with the two small policies published."""
    made: list[Warehouse] = []

    def make(sources=None, publish_policies=True, **warehouse_settings) -> Warehouse:
        settings = settings_factory(warehouse_url, sources=[SOURCE] if sources is None else sources,
                                    warehouse={"chunk_size": 4, **warehouse_settings})
        schema.upgrade(settings)
        engine = db.make_engine(settings)
        wh = Warehouse(settings, engine)
        if publish_policies:
            published = policy_store.publish_policies(engine, settings, small_policies, author="tests")
            wh.policies = [r.policy for r in published]
        made.append(wh)
        return wh

    yield make
    for wh in made:
        wh.engine.dispose()


@pytest.fixture
def wh(make_warehouse) -> Warehouse:
    wh = make_warehouse()
    wh.create_posts()
    return wh


def pytest_collection_modifyitems(config, items):
    """The generic upsert is dialect-independent SQL, exercised on SQLite and PostgreSQL: on MariaDB and
    DuckDB test_publish.py runs their own upsert only (CI time)."""
    keep, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        redundant = params.get("method") == "generic" and params.get("warehouse_url") in ("mariadb", "duckdb")
        (dropped if redundant else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
