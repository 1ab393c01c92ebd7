"""Run rows and the run lifecycle: ids for retried tasks, conflicts, field checks, transitions, reset,
failing and resuming."""

import datetime as dt
import threading

import pytest
from tests.warehouse.warehouse_helpers import DAY, T0, at

from safeguard_flow.warehouse import extract, runs, staging
from safeguard_flow.warehouse.errors import RunConflict, RunNotFound, RunStateError, WarehouseError
from safeguard_flow.warehouse.runs import IllegalTransition, Run, RunStatus

S = RunStatus


def test_create_get_update(wh):
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY,
                             params={"dag_run": "scheduled__2024-03-01"}, run_id="nightly__2024-03-01")
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert isinstance(run, Run) and run.status is S.CREATED and run.status == "created"
    assert run.policy_refs == [("self-harm", 1), ("spam", 1)]
    assert run.interval_start == T0 and run.interval_start.tzinfo is not None
    assert (run.params, run.warnings) == ({"dag_run": "scheduled__2024-03-01"}, [])
    assert run.status == "created" and run.to_dict()["id"] == run_id
    runs.transition(wh.engine, wh.settings, run_id, S.EXTRACTING)
    runs.update_run(wh.engine, wh.settings, run_id, model="qwen", engine="vllm",
                    label_started_at=dt.datetime(2024, 3, 2, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert (run.status, run.model, run.engine) == (S.EXTRACTING, "qwen", "vllm")
    assert run.label_started_at == dt.datetime(2024, 3, 1, 23, tzinfo=dt.timezone.utc)
    assert [r.id for r in runs.list_runs(wh.engine, wh.settings, kind="nightly")] == [run_id]
    assert [r.id for r in runs.list_runs(wh.engine, wh.settings, status=S.EXTRACTING)] == [run_id]


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
    with pytest.raises(WarehouseError, match="only through runs.transition"):
        runs.update_run(wh.engine, wh.settings, run_id, status="failed")
    with pytest.raises(WarehouseError, match="status 'done' is not one of"):
        runs.transition(wh.engine, wh.settings, run_id, "done")
    with pytest.raises(WarehouseError, match="cannot change"):
        runs.update_run(wh.engine, wh.settings, run_id, kind="nightly")
    with pytest.raises(RunNotFound, match="'nope' not found"):
        runs.get_run(wh.engine, wh.settings, "nope")
    with pytest.raises(RunNotFound):
        runs.transition(wh.engine, wh.settings, "nope", S.FAILED)


def test_the_lifecycle_refuses_illegal_moves_with_what_is_allowed(wh):
    wh.add_posts([("1", "hi", at(1)), ("2", "buy", at(2))])
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY)
    with pytest.raises(IllegalTransition, match="is created: it cannot become labelling .*can become extracting, failed"):
        runs.transition(wh.engine, wh.settings, run_id, S.LABELLING)
    extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY)
    with pytest.raises(IllegalTransition, match="2 item\\(s\\) to label: only an empty run"):
        runs.transition(wh.engine, wh.settings, run_id, S.PUBLISHED)
    with pytest.raises(IllegalTransition, match="cannot become validated"):
        runs.transition(wh.engine, wh.settings, run_id, S.VALIDATED, validation={"success": True})
    wh.label(run_id)
    with pytest.raises(IllegalTransition, match="needs a passing validation result"):
        runs.transition(wh.engine, wh.settings, run_id, S.VALIDATED, validation={"success": False})
    wh.publish(run_id)
    assert runs.get_run(wh.engine, wh.settings, run_id).status is S.PUBLISHED
    with pytest.raises(IllegalTransition, match="a published run is final"):
        runs.transition(wh.engine, wh.settings, run_id, S.CREATED)
    assert not runs.fail_run(wh.engine, wh.settings, run_id, "too late")  # a finished run stays as it is
    assert runs.get_run(wh.engine, wh.settings, run_id).status is S.PUBLISHED


def test_every_working_state_can_fail_with_its_reason_and_the_table_is_closed():
    for status, allowed in runs.TRANSITIONS.items():
        assert (S.FAILED in allowed) == (status in runs.WORKING), status
        assert allowed <= set(S)
    assert set(runs.TRANSITIONS) == set(S)


def test_a_failed_run_resumes_at_the_step_that_failed_and_keeps_finished_chunks(wh):
    wh.add_posts([(str(i), f"post {i}" + (" buy" if i % 3 == 0 else ""), at(i / 10)) for i in range(10)])
    run_id = wh.nightly()
    chunks = staging.pending_chunks(wh.engine, wh.settings, run_id)
    assert len(chunks) >= 2
    runs.transition(wh.engine, wh.settings, run_id, S.LABELLING)
    # One chunk is staged, then the job dies.
    from safeguard_flow.labelling.loop import label_items
    from tests.warehouse.warehouse_helpers import KeywordModel

    items = staging.read_chunk(wh.engine, wh.settings, run_id, chunks[0])
    staging.write_chunk(wh.engine, wh.settings, run_id, chunks[0], label_items(KeywordModel(), items, wh.policies))
    assert runs.fail_run(wh.engine, wh.settings, run_id, "label job: killed by SIGKILL")
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert (run.status, run.error, run.resume_point()) == (S.FAILED, "label job: killed by SIGKILL", S.EXTRACTED)
    assert not runs.fail_run(wh.engine, wh.settings, run_id, "a second reason")  # the first one is kept
    with pytest.raises(IllegalTransition, match="resumed .* or reset"):
        runs.transition(wh.engine, wh.settings, run_id, S.LABELLING)

    assert runs.resume_run(wh.engine, wh.settings, run_id).status is S.EXTRACTED
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.error is None and "killed by SIGKILL" in run.warnings[-1]
    assert staging.pending_chunks(wh.engine, wh.settings, run_id) == chunks[1:]  # the finished chunk is kept
    with pytest.raises(IllegalTransition, match="not failed"):
        runs.resume_run(wh.engine, wh.settings, run_id)


def test_a_run_that_failed_in_extract_starts_its_extract_again(wh):
    wh.add_posts([("1", "hi", at(1))])
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY)
    runs.transition(wh.engine, wh.settings, run_id, S.EXTRACTING)
    runs.fail_run(wh.engine, wh.settings, run_id, "extract: OperationalError: Could not decode to UTF-8")
    assert runs.resume_run(wh.engine, wh.settings, run_id).status is S.CREATED
    assert extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY) == 1


def test_reset_run_starts_a_quarantined_run_over_and_refuses_a_working_one(wh):
    wh.add_posts([("1", "hi", at(1)), ("2", "buy", at(2))])
    run_id = wh.nightly()
    wh.label(run_id)
    with pytest.raises(IllegalTransition, match="is labelled: it cannot become created"):
        runs.reset_run(wh.engine, wh.settings, run_id)
    runs.transition(wh.engine, wh.settings, run_id, S.QUARANTINED, error="gate failed")
    runs.reset_run(wh.engine, wh.settings, run_id)
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert (run.status, run.items, run.extract_finished_at, run.error) == (S.CREATED, None, None, None)
    assert extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY) == 2
    assert len(staging.pending_chunks(wh.engine, wh.settings, run_id)) >= 1


def test_two_processes_racing_for_one_move_one_wins(wh):
    run_id = runs.create_run(wh.engine, wh.settings, "manual", wh.policies)
    for to in (S.EXTRACTING, S.EXTRACTED, S.LABELLED):
        assert runs.transition(wh.engine, wh.settings, run_id, to).status is to  # returns the run as it is now
    results: list[object] = []
    barrier = threading.Barrier(4)

    def move():
        barrier.wait()
        try:
            results.append(runs.transition(wh.engine, wh.settings, run_id, S.QUARANTINED).status)
        except RunStateError as exc:
            results.append(exc)

    threads = [threading.Thread(target=move) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    # labelled -> quarantined once; the others see 'quarantined', which may not move there again.
    assert results.count(S.QUARANTINED) == 1, results
    assert all(isinstance(r, RunStateError) for r in results if r is not S.QUARANTINED), results
