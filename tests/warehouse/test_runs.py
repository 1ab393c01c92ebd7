"""Run rows: deterministic ids for retried tasks, conflicts, field checks, reset."""

import datetime as dt

import pytest
from tests.warehouse.warehouse_helpers import DAY, T0, at

from safeguard_flow.warehouse import runs, staging
from safeguard_flow.warehouse.errors import RunConflict, RunNotFound, WarehouseError


def test_create_get_update(wh):
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY,
                             params={"dag_run": "scheduled__2024-03-01"}, run_id="nightly__2024-03-01")
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run["policy_refs"] == [("self-harm", 1), ("spam", 1)]
    assert run["interval_start"] == T0 and run["interval_start"].tzinfo is not None
    assert (run["status"], run["params"], run["warnings"]) == ("created", {"dag_run": "scheduled__2024-03-01"}, [])
    runs.update_run(wh.engine, wh.settings, run_id, status="labelling", model="qwen", engine="vllm",
                    label_started_at=dt.datetime(2024, 3, 2, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert (run["status"], run["model"], run["engine"]) == ("labelling", "qwen", "vllm")
    assert run["label_started_at"] == dt.datetime(2024, 3, 1, 23, tzinfo=dt.timezone.utc)
    assert [r["id"] for r in runs.list_runs(wh.engine, wh.settings, kind="nightly")] == [run_id]


def test_same_run_id_is_reused_and_conflicts_are_refused(wh):
    a = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY, run_id="r1")
    assert runs.create_run(wh.engine, wh.settings, "nightly", list(reversed(wh.policies)), T0, T0 + DAY,
                           run_id="r1") == a
    with pytest.raises(RunConflict, match="'r1' exists"):
        runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + 2 * DAY, run_id="r1")
    with pytest.raises(RunConflict):
        runs.create_run(wh.engine, wh.settings, "nightly", [("spam", 1)], T0, T0 + DAY, run_id="r1")


def test_bad_input_is_named(wh):
    with pytest.raises(WarehouseError, match="kind 'daily'"):
        runs.create_run(wh.engine, wh.settings, "daily", wh.policies)
    with pytest.raises(WarehouseError, match="has no version"):
        runs.create_run(wh.engine, wh.settings, "manual", [("spam", None)])
    with pytest.raises(WarehouseError, match="interval is empty"):
        runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0)
    run_id = runs.create_run(wh.engine, wh.settings, "manual", wh.policies)
    with pytest.raises(WarehouseError, match=r"unknown field\(s\) \['colour'\]"):
        runs.update_run(wh.engine, wh.settings, run_id, colour="red")
    with pytest.raises(WarehouseError, match="status 'done'"):
        runs.update_run(wh.engine, wh.settings, run_id, status="done")
    with pytest.raises(WarehouseError, match="cannot change"):
        runs.update_run(wh.engine, wh.settings, run_id, kind="nightly")
    with pytest.raises(RunNotFound, match="'nope' not found"):
        runs.get_run(wh.engine, wh.settings, "nope")
    with pytest.raises(RunNotFound):
        runs.update_run(wh.engine, wh.settings, "nope", status="failed")


def test_reset_run_starts_over(wh):
    wh.add_posts([("1", "hi", at(1)), ("2", "buy", at(2))])
    run_id = wh.nightly()
    wh.label(run_id)
    runs.reset_run(wh.engine, wh.settings, run_id)
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert (run["status"], run["items"], run["extract_finished_at"]) == ("created", None, None)
    from safeguard_flow.warehouse import extract

    assert extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY) == 2
    assert len(staging.pending_chunks(wh.engine, wh.settings, run_id)) >= 1
