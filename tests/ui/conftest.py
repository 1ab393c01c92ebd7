"""A real Airflow API server (127.0.0.1, SQLite metadata DB, simple auth with all admins) serving the
Safeguard plugin over a seeded warehouse, and headless Chromium to look at it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_PORT = int(os.environ.get("SAFEGUARD_TEST_UI_PORT", "18220"))
DEVTOOLS_PORT = int(os.environ.get("SAFEGUARD_TEST_DEVTOOLS_PORT", "18221"))


@pytest.fixture(scope="module")
def seeded_warehouse(tmp_path_factory):
    from tests.ui.ui_seed import seed

    from safeguard_flow.warehouse.sample_data import copy_policies, demo_settings
    from safeguard_flow.warehouse import db

    tmp = tmp_path_factory.mktemp("ui")
    policies = copy_policies(tmp / "policies", ("self-harm", "violence"))
    settings = demo_settings(tmp, policies)
    engine = db.make_engine(settings)
    facts = seed(engine, settings, policies)
    yield settings, facts
    engine.dispose()


@pytest.fixture(scope="module")
def api_server(seeded_warehouse, tmp_path_factory):
    """`airflow api-server` only: the UI needs no scheduler."""
    from dev.local_stack import LocalAirflow

    settings, _ = seeded_warehouse
    conn = {"conn_type": "safeguard_warehouse", "extra": {"url": settings.warehouse_url}}
    env = {"AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT": json.dumps(conn), "SAFEGUARD_HOME": settings.home}
    # The test harness's port variables (SAFEGUARD_TEST_*) are not settings: keep them from the server.
    harness = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SAFEGUARD_TEST_")}
    try:
        af = LocalAirflow(tmp_path_factory.mktemp("airflow-ui"), API_PORT, ROOT / "dags", env=env, components=("api-server",))
    finally:
        os.environ.update(harness)
    af.init_db()
    af.start(timeout_s=180)
    yield af
    af.stop()


@pytest.fixture(scope="module")
def browser():
    from tests.ui.ui_browser import Browser, find_chromium

    if find_chromium() is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium); the UI test needs it")
    with Browser(DEVTOOLS_PORT) as b:
        yield b
