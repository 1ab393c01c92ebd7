"""Fenced label attempts (issue 18): a chunk write carries its attempt's token and is refused, and
counted, when another attempt owns the run or the run left labelling (after validation, after a reset);
a run left labelling with no heartbeat is failed with the reason by the next attempt."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from tests.warehouse.warehouse_helpers import KeywordModel, at

from safeguard_flow.labelling.loop import label_items
from safeguard_flow.pipeline import run_rules
from safeguard_flow.warehouse import policy_store, runs, schema, staging
from safeguard_flow.warehouse.runs import RunStatus


@pytest.fixture
def extracted(wh):
    wh.add_posts([(str(i), f"buy item {i}" if i % 3 == 0 else f"post {i}", at(i / 10)) for i in range(12)])
    return wh, wh.nightly()


def _verdicts(wh, run_id, chunk):
    items = staging.read_chunk(wh.engine, wh.settings, run_id, chunk)
    policies = policy_store.get_policies(wh.engine, wh.settings, runs.get_run(wh.engine, wh.settings, run_id).policy_refs)
    return label_items(KeywordModel(), items, policies)


def _labelled_at(wh, run_id, chunk):
    c = schema.tables(wh.settings).run_chunks
    with wh.engine.connect() as conn:
        return conn.execute(sa.select(c.c.finished_at).where(c.c.run_id == run_id, c.c.chunk_no == chunk)).scalar_one()


def test_a_stale_attempt_is_refused_after_validation_and_after_a_reset(extracted):
    wh, run_id = extracted
    chunks = staging.pending_chunks(wh.engine, wh.settings, run_id)
    old = runs.start_label_attempt(wh.engine, wh.settings, run_id).label_attempt
    early = _verdicts(wh, run_id, chunks[0])  # the stale job labels chunk 0 and then hangs
    # A duplicate job starts: a new token; the old job's write is refused from now on.
    new = runs.start_label_attempt(wh.engine, wh.settings, run_id).label_attempt
    assert new == old + 1
    with pytest.raises(staging.StaleWrite, match=f"attempt {old} is stale: attempt {new} owns the run"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunks[0], early, attempt=old)
    for c in chunks:
        staging.write_chunk(wh.engine, wh.settings, run_id, c, _verdicts(wh, run_id, c), attempt=new)
    staging.finish_labelling(wh.engine, wh.settings, run_id)
    runs.transition(wh.engine, wh.settings, run_id, RunStatus.VALIDATED, validation={"success": True})
    before = _labelled_at(wh, run_id, chunks[0])

    # After validation: neither the stale attempt nor the one that labelled the run may rewrite a chunk.
    for attempt in (old, new, None):
        with pytest.raises(staging.StaleWrite, match="validated"):
            staging.write_chunk(wh.engine, wh.settings, run_id, chunks[0], early, attempt=attempt)
    assert _labelled_at(wh, run_id, chunks[0]) == before
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.refused_writes == 4 and run.status is RunStatus.VALIDATED

    # Failed (say publish broke), reset, extracted and labelled again by attempt new+1: old attempts stay refused.
    assert runs.fail_run(wh.engine, wh.settings, run_id, "test: publish failed")
    runs.reset_run(wh.engine, wh.settings, run_id)
    with pytest.raises(staging.StaleWrite, match="created"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunks[0], early, attempt=new)
    wh.nightly(run_id=run_id)
    third = runs.start_label_attempt(wh.engine, wh.settings, run_id).label_attempt
    assert third == new + 1  # the token never goes back: a reset does not revive an old attempt
    chunks = staging.pending_chunks(wh.engine, wh.settings, run_id)
    with pytest.raises(staging.StaleWrite, match=f"attempt {new} is stale"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunks[0], _verdicts(wh, run_id, chunks[0]), attempt=new)
    assert chunks[0] in staging.pending_chunks(wh.engine, wh.settings, run_id)  # nothing was marked done
    staging.write_chunk(wh.engine, wh.settings, run_id, chunks[0], _verdicts(wh, run_id, chunks[0]), attempt=third)
    assert chunks[0] not in staging.pending_chunks(wh.engine, wh.settings, run_id)
    assert runs.get_run(wh.engine, wh.settings, run_id).refused_writes == 6


def test_a_run_left_labelling_without_a_heartbeat_is_failed_by_the_next_attempt(extracted):
    wh, run_id = extracted
    runs.start_label_attempt(wh.engine, wh.settings, run_id)
    fresh = runs.get_run(wh.engine, wh.settings, run_id)
    assert run_rules.resume_if_failed(wh.engine, wh.settings, fresh).status is RunStatus.LABELLING  # alive: untouched

    # The worker died silently 20 minutes ago (SIGKILL, a lost node): no heartbeat since.
    t = schema.tables(wh.settings).runs
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20)
    with wh.engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == run_id).values(heartbeat_at=old, updated_at=old))
    stale = runs.get_run(wh.engine, wh.settings, run_id)
    assert "no heartbeat for 1200s" in run_rules.stale_reason(wh.settings, stale)
    resumed = run_rules.resume_if_failed(wh.engine, wh.settings, stale)
    assert resumed.status is RunStatus.EXTRACTED  # failed with the reason, then resumed at the label step
    assert "label: no heartbeat" in resumed.warnings[-1] and "deadlines.stale_after_s=600" in resumed.warnings[-1]


def test_a_failure_of_a_superseded_attempt_leaves_the_run_to_the_newer_one(extracted):
    wh, run_id = extracted
    old = runs.start_label_attempt(wh.engine, wh.settings, run_id).label_attempt
    runs.start_label_attempt(wh.engine, wh.settings, run_id)
    with pytest.raises(RuntimeError):
        with run_rules.failing(wh.engine, wh.settings, run_id, "label job", attempt=lambda: old):
            raise RuntimeError("the old job's replica crashed")
    assert runs.get_run(wh.engine, wh.settings, run_id).status is RunStatus.LABELLING
    assert not runs.heartbeat(wh.engine, wh.settings, run_id, old)
