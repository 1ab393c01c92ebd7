"""A real Airflow API server whose simple auth manager knows the given users and roles (no admins),
for tests of what each role may do in the Safeguard view."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.ui.conftest import ROOT


@contextmanager
def role_server(settings, home: Path, port: int, users: dict[str, str]) -> Iterator[tuple[object, dict[str, str]]]:
    """Yields (the running LocalAirflow, {user: password}); the warehouse is `settings`'."""
    from dev.local_stack import LocalAirflow

    passwords = {name: secrets.token_urlsafe(12) for name in users}
    (home / "passwords.json").write_text(json.dumps(passwords))
    conn = {"conn_type": "safeguard_warehouse", "extra": {"url": settings.warehouse_url}}
    env = {"AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT": json.dumps(conn), "SAFEGUARD_HOME": settings.home,
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in users.items()),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json")}
    # The test harness's port variables are not settings: keep them out of the server's environment.
    harness = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SAFEGUARD_TEST_")}
    try:
        af = LocalAirflow(home / "airflow", port, ROOT / "dags", env=env, components=("api-server",))
    finally:
        os.environ.update(harness)
    af.init_db()
    af.start(timeout_s=180)
    try:
        yield af, passwords
    finally:
        af.stop()
