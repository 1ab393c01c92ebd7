"""Staging: chunk reads, atomic chunk writes with the done mark, restarts, the label-job invariant."""

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from tests.warehouse.warehouse_helpers import KeywordModel, at

from safeguard_flow.labelling.loop import label_items
from safeguard_flow.warehouse import policy_store, runs, schema, staging
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError


@pytest.fixture
def extracted(wh):
    wh.add_posts([(str(i), f"buy item {i}" if i % 3 == 0 else f"post {i}", at(i / 10)) for i in range(30)]
                 + [("null", None, at(1))])
    return wh, wh.nightly()


def label_chunk(wh, run_id, chunk, model=None):
    items = staging.read_chunk(wh.engine, wh.settings, run_id, chunk)
    policies = policy_store.get_policies(wh.engine, wh.settings, runs.get_run(wh.engine, wh.settings, run_id).policy_refs)
    verdicts = label_items(model or KeywordModel(), items, policies)
    return items, verdicts


def staged_count(wh, run_id, chunk=None):
    s = schema.tables(wh.settings).verdict_staging
    q = sa.select(sa.func.count()).where(s.c.run_id == run_id)
    if chunk is not None:
        q = q.where(s.c.chunk_no == chunk)
    with wh.engine.connect() as conn:
        return conn.execute(q).scalar_one()


def test_chunks_cover_the_work_list_once(extracted):
    wh, run_id = extracted
    chunks = staging.pending_chunks(wh.engine, wh.settings, run_id)
    ids = [i.content_id for c in chunks for i in staging.read_chunk(wh.engine, wh.settings, run_id, c)]
    assert sorted(ids) == sorted([str(i) for i in range(30)] + ["null"])
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.chunks == len(chunks) and run.status == "extracted"
    assert staging.progress(wh.engine, wh.settings, run_id)["items"] == 31
    (null_item,) = [i for c in chunks for i in staging.read_chunk(wh.engine, wh.settings, run_id, c)
                    if i.content_id == "null"]
    assert null_item.text is None and null_item.problem == "content is NULL"


def test_a_restarted_job_skips_finished_chunks(extracted):
    wh, run_id = extracted
    chunks = staging.pending_chunks(wh.engine, wh.settings, run_id)
    first = KeywordModel()
    for c in chunks[: len(chunks) // 2]:
        staging.write_chunk(wh.engine, wh.settings, run_id, c, label_chunk(wh, run_id, c, first)[1])
    # The job dies here; a new one asks what is left.
    left = staging.pending_chunks(wh.engine, wh.settings, run_id)
    assert left == chunks[len(chunks) // 2:]
    second = KeywordModel()
    for c in left:
        staging.write_chunk(wh.engine, wh.settings, run_id, c, label_chunk(wh, run_id, c, second)[1])
    assert staging.pending_chunks(wh.engine, wh.settings, run_id) == []
    assert len(first.requests) + len(second.requests) == 30 * 2  # nothing labelled twice
    prog = staging.progress(wh.engine, wh.settings, run_id)
    assert (prog["done"], prog["verdicts"], prog["errors"]) == (len(chunks), 31 * 2, 2)
    assert staged_count(wh, run_id) == 62


def test_write_chunk_is_atomic_with_its_done_mark(extracted):
    wh, run_id = extracted
    chunk = staging.pending_chunks(wh.engine, wh.settings, run_id)[0]
    _, verdicts = label_chunk(wh, run_id, chunk)

    def fail_on_done_mark(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE") and "run_chunks" in statement:
            raise RuntimeError("worker killed before the chunk was marked done")

    event.listen(wh.engine, "before_cursor_execute", fail_on_done_mark)
    try:
        with pytest.raises(RuntimeError, match="worker killed"):
            staging.write_chunk(wh.engine, wh.settings, run_id, chunk, verdicts)
    finally:
        event.remove(wh.engine, "before_cursor_execute", fail_on_done_mark)
    assert staged_count(wh, run_id, chunk) == 0  # the verdicts went with the transaction
    assert chunk in staging.pending_chunks(wh.engine, wh.settings, run_id)
    staging.write_chunk(wh.engine, wh.settings, run_id, chunk, verdicts)
    staging.write_chunk(wh.engine, wh.settings, run_id, chunk, verdicts)  # rewriting replaces, never duplicates
    assert staged_count(wh, run_id, chunk) == len(verdicts)
    assert chunk not in staging.pending_chunks(wh.engine, wh.settings, run_id)


def test_write_chunk_checks_one_verdict_per_item_and_policy(extracted):
    wh, run_id = extracted
    chunk = staging.pending_chunks(wh.engine, wh.settings, run_id)[0]
    _, verdicts = label_chunk(wh, run_id, chunk)
    with pytest.raises(WarehouseError, match="missing 1"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunk, verdicts[1:])
    with pytest.raises(WarehouseError, match="more than one verdict"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunk, verdicts + verdicts[:1])
    wrong_version = [v for v in verdicts]
    wrong_version[0] = type(verdicts[0])(**{**verdicts[0].to_dict(), "policy_version": 99})
    with pytest.raises(WarehouseError, match="unexpected 1"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunk, wrong_version)
    edited = [type(v)(**{**v.to_dict(), "content_hash": "f" * 64}) if i == 0 else v for i, v in enumerate(verdicts)]
    with pytest.raises(WarehouseError, match="content_hash differs"):
        staging.write_chunk(wh.engine, wh.settings, run_id, chunk, edited)
    assert staged_count(wh, run_id) == 0
    with pytest.raises(WarehouseError, match="no chunk 9999"):
        staging.read_chunk(wh.engine, wh.settings, run_id, 9999)


def test_chunks_need_a_finished_extraction(wh):
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies)
    with pytest.raises(RunStateError, match="run extract first"):
        staging.pending_chunks(wh.engine, wh.settings, run_id)


def test_staged_frame_has_one_row_per_item_and_policy(extracted):
    wh, run_id = extracted
    wh.label(run_id)
    frame = staging.staged_frame(wh.engine, wh.settings, run_id)
    assert len(frame) == 31 * 2
    assert not frame.duplicated(["source", "content_id", "policy", "policy_version"]).any()
    assert set(frame["policy"]) == {"spam", "self-harm"}
    errors = frame[frame["parse_status"] != "ok"]
    assert list(errors["content_id"]) == ["null", "null"] and errors["label"].isna().all()
    assert set(frame.loc[frame["parse_status"] == "ok", "label"]) == {0, 1}
    assert (frame.loc[frame["content_id"] == "3", "label"] == 1).all()


@pytest.mark.parametrize("store", [False, True])
def test_analysis_is_stored_only_when_asked(make_warehouse, store):
    wh = make_warehouse(store_analysis=store)
    wh.create_posts()
    wh.add_posts([("1", "buy", at(1)), ("2", "hi", at(1))])
    run_id = wh.nightly()
    wh.label(run_id)
    wh.label(run_id)  # nothing pending: a no-op
    a = schema.tables(wh.settings).verdict_analysis
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(a)).all()
    assert len(rows) == (4 if store else 0)
    if store:
        assert {r.analysis for r in rows} == {"thinking..."}
    wh.publish(run_id)
    assert all("thinking" not in str(v) for v in wh.verdicts())  # never in the BI table


def test_purge_keeps_published_verdicts(extracted):
    wh, run_id = extracted
    wh.label(run_id)
    with pytest.raises(RunStateError, match="purge only finished runs"):
        staging.purge_run(wh.engine, wh.settings, run_id)
    wh.publish(run_id)
    removed = staging.purge_run(wh.engine, wh.settings, run_id)
    assert removed["sg_work_items"] == 31 and removed["sg_verdict_staging"] == 62
    assert len(wh.verdicts()) == 62 and staged_count(wh, run_id) == 0
