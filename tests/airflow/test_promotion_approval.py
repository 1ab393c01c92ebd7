"""Promotion with a person in the loop, through a real Airflow (API server, scheduler, DAG processor,
triggerer): a shadow version published to the warehouse is announced by the policy sync, the relabel
DAG reviews it and stops at Airflow's own approval task (policy_gate.auto_promote is off); the answer
given through Airflow's HITL REST API (PATCH .../hitlDetails) promotes it, and the promotion log names
the person who approved. The source is empty, so nothing is labelled: no engine, no Ray."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from tests.airflow.af_support import DAGS, STACK_PORT

pytestmark = pytest.mark.slow


def _wait_for_task_state(af, dag_id: str, task_id: str, states: set[str], timeout_s: float = 420) -> tuple[str, dict]:
    deadline = time.monotonic() + timeout_s
    seen: list = []
    while time.monotonic() < deadline:
        for run in af.dag_runs(dag_id):
            tis = af.task_instances(dag_id, run["dag_run_id"])
            seen = [(ti["task_id"], ti["state"]) for ti in tis]
            ti = next((t for t in tis if t["task_id"] == task_id), None)
            if ti is not None and ti["state"] in states:
                return run["dag_run_id"], ti
            if run["state"] == "failed":
                raise AssertionError(f"{dag_id} run failed: {seen}; logs in {af.home / 'logs'}")
        time.sleep(2)
    raise AssertionError(f"{task_id} never reached {states}: {seen}; scheduler: {af.log_tail('scheduler', 40)}")


def _wait_for_worker_exit_seen(af, task_id: str, timeout_s: float = 60) -> None:
    """Until the scheduler has taken the executor's event for the worker that parked `task_id`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = af.log_path("scheduler").read_text(errors="replace")
        if any("Received executor event" in line and f"task_id='{task_id}'" in line for line in text.splitlines()):
            return
        time.sleep(0.5)
    raise AssertionError(f"the scheduler never took the exit of {task_id}'s worker: {af.log_tail('scheduler', 40)}")


def test_relabel_waits_for_approval_and_logs_the_approver(tmp_path):
    from dev.local_stack import LocalAirflow
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse import db, policy_store, schema
    from safeguard_flow.warehouse.promotions import list_promotions
    from safeguard_flow.warehouse.sample_data import POSTS_SOURCE, copy_policies, demo_settings, load_sample

    policies = copy_policies(tmp_path / "policies", ("spam",))
    settings = demo_settings(tmp_path, policies)
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    load_sample(engine, [])  # the source exists and is empty: the relabel has nothing to label
    policy_store.publish_policies(engine, settings, load_policy_set(policies), author="test")  # v1, current
    edited = copy_policies(tmp_path / "edited", ("spam",))
    (edited / "spam.md").write_text((edited / "spam.md").read_text() + "\n- Paid group chat invitations are spam.\n")
    (v2,) = policy_store.publish_policies(engine, settings, load_policy_set(edited), author="test", shadow=True)
    assert v2.version == 2 and v2.shadow

    env = {
        "AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT": json.dumps({"conn_type": "safeguard_warehouse",
                                                                "extra": {"url": settings.warehouse_url}}),
        "SAFEGUARD_HOME": settings.home,
        "SAFEGUARD_POLICIES_DIR": str(policies),
        "SAFEGUARD_SOURCES": json.dumps([POSTS_SOURCE]),
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
    }
    af = LocalAirflow(tmp_path / "airflow", STACK_PORT, DAGS, env=env)
    for key in [k for k in af.env if k.startswith(("SAFEGUARD_TEST_", "SAFEGUARD_ENGINE", "SAFEGUARD_RAY"))]:
        del af.env[key]
    af.init_db()
    af.start()
    try:
        af.wait_for_dags(["safeguard_relabel", "safeguard_policy_sync"])
        # The sync (unpaused at creation) announces the shadow v2; its event starts the relabel.
        run_id, ti = _wait_for_task_state(af, "safeguard_relabel", "approve_promotion",
                                          {"awaiting_input", "deferred", "skipped", "success", "failed"})
        assert ti["state"] in ("awaiting_input", "deferred"), ti
        # Answer as a person would, not within the second the task parks: Airflow 3.3 resumes an answered
        # task at once, and if the scheduler has not yet processed the exit of the worker that parked it,
        # it takes that exit for an external state change and retries the task (seen in CI: the answer
        # came 0.5 s after the task parked, the approval ran again two minutes later and waited anew).
        _wait_for_worker_exit_seen(af, "approve_promotion")
        path = (f"dags/safeguard_relabel/dagRuns/{quote(run_id, safe='')}/taskInstances/approve_promotion/-1"
                "/hitlDetails")
        detail = af.api("GET", path)
        assert detail["subject"] == "Promote spam v2?" and detail["options"] == ["Approve", "Reject"]
        assert f"{af.base_url}/safeguard/diff/spam/1/2" in detail["body"] and "Promotion gate: **passed**" in detail["body"]
        assert policy_store.get_head(engine, settings, "spam").current_version == 1  # nothing promoted while waiting

        answered = af.api("PATCH", path, {"chosen_options": ["Approve"]})
        approver = answered["responded_by"]["name"]
        (done,) = [r for r in af.wait_for_runs("safeguard_relabel", 1, timeout_s=300) if r["dag_run_id"] == run_id]
        assert done["state"] == "success"

        head = policy_store.get_head(engine, settings, "spam")
        assert (head.current_version, head.shadow_version) == (2, None)
        (logged,) = list_promotions(engine, settings, "spam")
        assert (logged["from_version"], logged["to_version"], logged["outcome"], logged["actor"]) == (1, 2, "promoted", approver)
        assert approver and f"approved by {approver}" in logged["reason"] and run_id in logged["reason"]
    finally:
        af.stop()
        engine.dispose()
