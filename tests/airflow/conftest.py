"""Airflow test fixtures: an isolated AIRFLOW_HOME for this process, the demo source, policies.

Airflow reads its configuration once, at first import, so the environment is set here at import
time (before any test imports airflow). The in-process metadata DB (for dag.test) is SQLite in a
temporary folder; the warehouse under test is SQLite or PostgreSQL (``warehouse_url``).
"""

from __future__ import annotations

import os

import pytest

from tests.airflow.af_support import RAY_DASHBOARD_PORT, RAY_PORT, pipeline_env
from tests.conftest import job_ray_head


@pytest.fixture(scope="session")
def airflow_db():
    """The in-process Airflow metadata DB, migrated once per session (dag.test needs it)."""
    from airflow.utils.db import initdb

    initdb()
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


# --- the real labelling path, shared by the end-to-end tests ----------------------------------------

@pytest.fixture(scope="package")
def af_ray_head(tmp_path_factory):
    """A real local Ray head for label jobs (Jobs API on RAY_DASHBOARD_PORT), for this folder."""
    yield from job_ray_head(tmp_path_factory, RAY_PORT, RAY_DASHBOARD_PORT)


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
