"""Fixtures for the BI tests: ports of their own (from SAFEGUARD_TEST_PORT_BASE) for Superset and
Datasette, and a real Superset (its own venv, built once and cached)."""

from __future__ import annotations

import os

import pytest

PORT_BASE = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000"))
SUPERSET_PORT = PORT_BASE + 310
DATASETTE_PORT = PORT_BASE + 320


@pytest.fixture(scope="package")
def superset():
    """A running Superset (gunicorn, SQLite metadata in a temporary folder). The venv is built on the
    first run (about 3 minutes) and reused from ~/.cache/safeguard-flow after that."""
    from dev.superset import SupersetServer, ensure_venv

    venv, built_s = ensure_venv()
    server = SupersetServer(SUPERSET_PORT, venv).start()
    server.timings["venv_build_s"] = built_s
    yield server
    server.stop()
