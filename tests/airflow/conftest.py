"""Airflow test fixtures: an isolated AIRFLOW_HOME for this process, the demo source, policies.

Airflow reads its configuration once, at first import, so the environment is set here at import
time (before any test imports airflow). The in-process metadata DB (for dag.test) is SQLite in a
temporary folder; the warehouse under test is SQLite or PostgreSQL (``warehouse_url``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.airflow.af_support import RAY_DASHBOARD_PORT, RAY_PORT, TEST_POLICIES, pipeline_env


@pytest.fixture(scope="session")
def airflow_db():
    """The in-process Airflow metadata DB, migrated once per session (dag.test needs it)."""
    from airflow.utils.db import initdb

    initdb()
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


@pytest.fixture
def policies_dir(tmp_path) -> Path:
    """A private copy of two repo policies (tests edit them)."""
    from safeguard_flow.warehouse.sample_data import copy_policies

    return copy_policies(tmp_path / "policies", TEST_POLICIES)


def _warehouse_settings(url: str, tmp_path: Path, policies_dir: Path):
    from safeguard_flow.warehouse.sample_data import demo_settings
    from safeguard_flow.warehouse import db, schema

    settings = demo_settings(tmp_path, policies_dir, url)
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    engine.dispose()
    return settings


@pytest.fixture
def wh_settings(warehouse_url, tmp_path, policies_dir):
    """Settings for a migrated warehouse (SQLite or PostgreSQL) with the demo `posts` source."""
    return _warehouse_settings(warehouse_url, tmp_path, policies_dir)


@pytest.fixture
def sqlite_wh_settings(sqlite_url, tmp_path, policies_dir):
    return _warehouse_settings(sqlite_url, tmp_path, policies_dir)


@pytest.fixture
def wh_engine(wh_settings):
    from safeguard_flow.warehouse import db

    engine = db.make_engine(wh_settings)
    yield engine
    engine.dispose()


# --- the real labelling path, shared by the end-to-end tests ----------------------------------------

@pytest.fixture(scope="package")
def af_ray_head(tmp_path_factory):
    """A real local Ray head for label jobs (Jobs API on RAY_DASHBOARD_PORT)."""
    from safeguard_flow.raylib.cluster import local_head
    from safeguard_flow.settings import load_settings

    settings = load_settings(environ={}, home=str(tmp_path_factory.mktemp("ray-home")), ray={
        "local_port": RAY_PORT, "local_dashboard_port": RAY_DASHBOARD_PORT, "local_num_cpus": 2})
    head = local_head.start_head(settings)
    yield head
    local_head.stop_head(head)


@pytest.fixture
def dag_env(monkeypatch, vllm_server, af_ray_head):
    """Point this process (dag.test runs tasks in-process) at a warehouse, the Ray head and vLLM."""
    from safeguard_flow.settings import get_settings

    def apply(settings, label_mode: str = "job", **extra: str) -> None:
        for key, value in pipeline_env(settings, vllm_server, af_ray_head, label_mode, **extra).items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()
