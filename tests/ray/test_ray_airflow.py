"""RayHook, RayJobTrigger and the Ray operators against a real local Ray head (no mocks)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytestmark = pytest.mark.slow

HELLO = 'python -c "import os,time; print(\'hello from ray\'); time.sleep(1); print(\'conn env\', os.environ.get(\'SG_FROM_CONNECTION\')); print(\'bye\')"'
FAIL = 'python -c "import sys; print(\'about to fail\'); print(\'boom: the label job broke\', file=sys.stderr); sys.exit(3)"'
SLEEP = 'python -c "import time; print(\'sleeping\', flush=True); time.sleep(120)"'


def _wait_status(hook, job_id, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_job_status(job_id)
        if status in wanted:
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {wanted} (last {status})")


def _run_trigger(trigger):
    async def first_event():
        async for event in trigger.run():
            return event
    return asyncio.run(first_event())


def test_hook_submits_through_a_connection_and_follows_the_job(ray_conn_env, ray_settings, ray_head):
    from safeguard_flow.airflow.ray_hook import RayHook

    hook = RayHook(ray_conn_id=ray_conn_env, settings=ray_settings)
    assert hook.target.dashboard_url == ray_head.dashboard_url and not hook.target.local
    job_id = hook.submit_job(HELLO, metadata={"purpose": "test"})
    lines: list[str] = []
    assert hook.wait_for_job(job_id, poll_interval=0.3, timeout=90, on_log=lines.append) == "SUCCEEDED"
    text = "\n".join(lines)
    assert "hello from ray" in text and "bye" in text
    assert "conn env yes" in text  # the connection's runtime_env reached the job
    ok, message = hook.test_connection()
    assert ok, message


def test_hook_without_connection_uses_the_local_head(ray_settings, ray_head):
    from safeguard_flow.airflow.ray_hook import RayHook

    hook = RayHook(ray_conn_id="no_such_connection", settings=ray_settings)
    assert hook.target.local and hook.target.dashboard_url == ray_head.dashboard_url  # reused, not restarted
    assert hook.find_active_job({"safeguard_run_id": "nobody"}) is None


def test_deferrable_operator_defers_and_the_trigger_brings_the_logs(ray_conn_env, ray_settings, capsys):
    from airflow.sdk.exceptions import TaskDeferred

    from safeguard_flow.airflow.ray_operator import RayJobOperator
    from safeguard_flow.airflow.ray_trigger import RayJobTrigger

    op = RayJobOperator(task_id="hello", entrypoint=HELLO, ray_conn_id=ray_conn_env, settings=ray_settings,
                        poll_interval=0.3)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, RayJobTrigger) and deferred.value.method_name == "execute_complete"
    # The trigger must survive serialisation (the triggerer rebuilds it from these kwargs).
    path, kwargs = trigger.serialize()
    assert path == "safeguard_flow.airflow.ray_trigger.RayJobTrigger"
    rebuilt = RayJobTrigger(**kwargs)
    capsys.readouterr()
    event = _run_trigger(rebuilt)
    assert event.payload["status"] == "SUCCEEDED"
    # Job log lines went through the trigger's logger (Airflow's structlog writes to stdout here;
    # in a triggerer the same records land in the task log).
    logged = [line for line in capsys.readouterr().out.splitlines() if "RayJobTrigger" in line]
    assert any("hello from ray" in line for line in logged) and any("bye" in line for line in logged)
    assert op.execute_complete({}, event.payload) == {"job_id": op.job_id}
    # The task's "Ray job" link opens this job in the dashboard the hook reached.
    from safeguard_flow.airflow.ray_operator import RayJobLink

    (link,) = op.operator_extra_links
    assert isinstance(link, RayJobLink) and link.name == "Ray job"
    assert link.get_link(op, ti_key=None) == f"{op.hook.target.dashboard_url}/#/jobs/{op.job_id}"


def test_deferrable_follows_airflows_default_deferrable_where_set(monkeypatch):
    from safeguard_flow.airflow.provider import get_provider_info
    from safeguard_flow.airflow.ray_operator import RayJobLink, RayJobOperator

    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    assert RayJobOperator(task_id="unset", entrypoint=HELLO).deferrable is True  # Airflow's own default is false
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert RayJobOperator(task_id="off", entrypoint=HELLO).deferrable is False
    assert RayJobOperator(task_id="asked", entrypoint=HELLO, deferrable=True).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert RayJobOperator(task_id="on", entrypoint=HELLO).deferrable is True
    # No job yet (or in_process mode): no link; the UI finds the link class through the provider.
    assert RayJobLink().get_link(RayJobOperator(task_id="none", entrypoint=HELLO), ti_key=None) == ""
    assert "safeguard_flow.airflow.ray_operator.RayJobLink" in get_provider_info()["extra-links"]


def test_failing_job_fails_the_operator_with_its_log_tail(ray_conn_env, ray_settings):
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from safeguard_flow.airflow.ray_operator import RayJobOperator

    op = RayJobOperator(task_id="fail", entrypoint=FAIL, ray_conn_id=ray_conn_env, settings=ray_settings,
                        poll_interval=0.3)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    event = _run_trigger(deferred.value.trigger)
    assert event.payload["status"] == "FAILED"
    with pytest.raises(AirflowException, match="boom: the label job broke") as failed:
        op.execute_complete({}, event.payload)
    assert "ended FAILED" in str(failed.value)

    sync = RayJobOperator(task_id="fail_sync", entrypoint=FAIL, ray_conn_id=ray_conn_env, settings=ray_settings,
                          poll_interval=0.3, deferrable=False)
    with pytest.raises(AirflowException, match="boom: the label job broke"):
        sync.execute({})


def test_on_kill_stops_the_job_in_the_worker_and_in_the_triggerer(ray_conn_env, ray_settings):
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from safeguard_flow.airflow.ray_operator import RayJobOperator

    # Non-deferrable: the task waits in the worker; on_kill (task killed / cleared) stops the job.
    op = RayJobOperator(task_id="sleep_sync", entrypoint=SLEEP, ray_conn_id=ray_conn_env, settings=ray_settings,
                        poll_interval=0.3, deferrable=False)
    errors: list[BaseException] = []

    def run():
        try:
            op.execute({})
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while op.job_id is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert op.job_id, "the operator never submitted its job"
    _wait_status(op.hook, op.job_id, {"RUNNING"})
    op.on_kill()
    worker.join(60)
    assert _wait_status(op.hook, op.job_id, {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"
    assert errors and isinstance(errors[0], AirflowException) and "STOPPED" in str(errors[0])

    # Deferred: the trigger's on_kill stops it.
    op2 = RayJobOperator(task_id="sleep_deferred", entrypoint=SLEEP, ray_conn_id=ray_conn_env,
                         settings=ray_settings, poll_interval=0.3)
    with pytest.raises(TaskDeferred) as deferred:
        op2.execute({})
    _wait_status(op2.hook, op2.job_id, {"RUNNING"})
    asyncio.run(deferred.value.trigger.on_kill())
    assert _wait_status(op2.hook, op2.job_id, {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"
