"""What a submitted label job carries to the cluster: the package and one settings document, never the
submitter's working folder, never a secret where the Jobs API or the node logs show it. Real local
Ray head, real PostgreSQL with password authentication for the job's role."""

from __future__ import annotations

import ast
import secrets
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.ray.label_helpers import HIDE_PACKAGE, SOURCE, make_run

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROLE = "sg_job_labeller"


def _password_role(pg_server, url: str) -> tuple[str, str]:
    """A role that must authenticate with its password (scram) on the test server; returns (url, password)."""
    password = "pw-" + secrets.token_hex(12)
    db = sa.make_url(url).database
    admin = sa.create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
                             f"THEN CREATE ROLE {ROLE} LOGIN; END IF; END $$")
        conn.exec_driver_sql(f"ALTER ROLE {ROLE} PASSWORD '{password}'")
        conn.exec_driver_sql(f'ALTER DATABASE "{db}" OWNER TO {ROLE}')
        hba = Path(conn.exec_driver_sql("SHOW hba_file").scalar())
        rule = f"host all {ROLE} 127.0.0.1/32 scram-sha-256\nhost all {ROLE} ::1/128 scram-sha-256\n"
        if rule not in hba.read_text():
            hba.write_text(rule + hba.read_text())  # first match wins: this role must give its password
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    admin.dispose()
    role_url = sa.make_url(url).set(username=ROLE, password=password).render_as_string(hide_password=False)
    wrong = sa.create_engine(sa.make_url(role_url).set(password="wrong"))
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        wrong.connect().close()  # the password really is checked
    wrong.dispose()
    return role_url, password


def test_a_job_from_a_working_folder_carries_the_package_and_no_secret(
        settings_factory, small_policies, ray_head, ray_driver, ray_conn_env, pg_server, pg_url, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from safeguard_flow.airflow.ray_operator import RayLabelJobOperator
    from safeguard_flow.airflow.ray_trigger import RayJobTrigger

    url, password = _password_role(pg_server, pg_url)
    settings = settings_factory(url, sources=[SOURCE], ray={"poll_interval_s": 0.5})
    run_id = make_run(settings, [p for p in small_policies if p.name == "spam"], [])  # nothing to label

    # The scheduler's working folder: its config, the admin password file and a log that grows.
    work = tmp_path / "airflow-home"
    (work / "logs").mkdir(parents=True)
    (work / "airflow.cfg").write_text("[core]\nfernet_key = not-for-the-cluster\n")
    (work / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "admin-pw-xyz"}')
    growing = work / "logs" / "scheduler-growing.log"
    stop = threading.Event()

    def grow() -> None:
        with growing.open("a") as fh:
            while not stop.is_set():
                fh.write("scheduler heartbeat\n")
                fh.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    monkeypatch.chdir(work)
    # The job's Python lacks the package: the venv's editable install and this checkout are hidden
    # from it, so it can only import safeguard_flow from the runtime env.
    hide = tmp_path / "hide-package"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PACKAGE)
    try:
        op = RayLabelJobOperator(task_id="label", run_id=run_id, settings=settings, ray_conn_id=ray_conn_env,
                                 warehouse_conn_id=None, poll_interval=0.5,
                                 runtime_env={"env_vars": {"PYTHONPATH": str(hide)}})
        with pytest.raises(TaskDeferred) as deferred:
            op.execute({})
        trigger: RayJobTrigger = deferred.value.trigger

        async def follow():
            async for event in trigger.run():
                return event
        import asyncio

        event = asyncio.run(follow()).payload
    finally:
        stop.set()
        writer.join()
    assert event["status"] == "SUCCEEDED", event
    assert event["summary"]["run_id"] == run_id and event["summary"]["chunks_pending"] == 0

    # Ray side: the package came from the runtime env, and nothing of the working folder went there.
    logs = op.hook.get_job_logs(op.job_id)
    session = Path(ray_head.temp_dir) / "session_latest"
    resources = (session / "runtime_resources").resolve()
    line = next((x for x in logs.splitlines() if "safeguard_flow from [" in x), None)
    assert line, logs[-2000:]
    paths = ast.literal_eval(line.split("safeguard_flow from ", 1)[1].strip())
    assert paths and all(p.startswith(str(resources)) for p in paths), line
    shipped = {p.name for p in resources.rglob("*")}
    assert "settings.py" in shipped and "job.py" in shipped
    for name in ("airflow.cfg", "simple_auth_manager_passwords.json.generated", "scheduler-growing.log", "logs"):
        assert name not in shipped, f"{name} was uploaded to the cluster"
    info = op.hook.get_job_info(op.job_id)
    assert "working_dir" not in (info.runtime_env or {})

    # No secret where anyone can read it: the Jobs API listing, the job's own log, the node's logs.
    with urllib.request.urlopen(f"{ray_head.dashboard_url}/api/jobs/") as resp:
        listing = resp.read().decode()
    assert op.job_id in listing and "SGFLOW_JOB_SETTINGS" in listing  # the document is there ...
    assert password not in listing  # ... without the password
    assert password not in logs
    agent_logs = list((session / "logs").glob("runtime_env_agent*.log"))
    assert agent_logs, "no runtime_env_agent log to check"
    for log_file in [*agent_logs, *(session / "logs").glob("dashboard*.log"), *(session / "logs").glob("job-driver-*.log")]:
        assert password not in log_file.read_text(errors="replace"), f"the password is in {log_file.name}"

    # The one-off secret was read once and deleted from the cluster.
    secret_uri = info.entrypoint.split("--secrets ", 1)[1].split()[0]
    from ray.experimental.internal_kv import _internal_kv_exists

    assert secret_uri.startswith("gcs://_sg_secret_") and not _internal_kv_exists(secret_uri)
