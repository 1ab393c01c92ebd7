"""Extract: intervals, content hashes (unchanged never relabelled, edited always), fan-out of identical
texts, NULL/empty text, duplicate ids, relabel scope, retries, flat memory."""

import dataclasses
import tracemalloc

import pytest
import sqlalchemy as sa
from tests.warehouse.warehouse_helpers import DAY, SOURCE, T0, at

from safeguard_flow.domain.verdicts import ENGINE_ERROR, INPUT_ERROR, OK, error_verdict
from safeguard_flow.warehouse import extract, policy_store, runs, schema, staging
from safeguard_flow.warehouse.errors import RunStateError, SourceError, WarehouseError


def work_ids(wh, run_id):
    return sorted(i.content_id for c in staging.pending_chunks(wh.engine, wh.settings, run_id)
                  for i in staging.read_chunk(wh.engine, wh.settings, run_id, c))


def test_interval_is_half_open_on_updated_at(wh):
    wh.add_posts([("before", "a", at(-1)), ("start", "b", at(0)), ("mid", "c", at(12)),
                  ("end", "d", at(24)), ("null-ts", "e", None)])
    run_id = wh.nightly(T0, T0 + DAY)
    assert work_ids(wh, run_id) == ["mid", "start"]


def test_unchanged_content_is_skipped_and_edited_content_relabelled(wh):
    wh.add_posts([("1", "hello there", at(1)), ("2", "buy cheap pills", at(2)), ("3", "nice day", at(3))])
    wh.run_all()
    # Day 2: 1 is touched without a real change (whitespace only), 2 is edited, 4 is new.
    wh.edit_post("1", "  hello there \r\n", at(25))
    wh.edit_post("2", "pills are cheap, buy", at(26))
    wh.add_posts([("4", "new post", at(27))])
    run_id = wh.nightly(T0 + DAY, T0 + 2 * DAY)
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert work_ids(wh, run_id) == ["2", "4"]
    assert (run.items, run.skipped_unchanged) == (2, 1)
    wh.label(run_id)
    wh.publish(run_id)
    by_id = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    assert by_id[("2", "spam")]["run_id"] == run_id and by_id[("1", "spam")]["run_id"] != run_id
    # Re-running the same interval finds nothing new.
    again = wh.nightly(T0 + DAY, T0 + 2 * DAY)
    assert runs.get_run(wh.engine, wh.settings, again).items == 0
    assert staging.pending_chunks(wh.engine, wh.settings, again) == []


def test_identical_texts_are_labelled_once_and_fanned_out(wh):
    rows = [(f"spam{i}", "BUY now!!", at(1)) for i in range(9)] + [(f"ok{i}", f"post {i}", at(2)) for i in range(7)]
    wh.add_posts(rows)
    run_id = wh.nightly()
    chunks = staging.pending_chunks(wh.engine, wh.settings, run_id)
    assert len(chunks) > 2  # chunk_size 4: several chunks...
    holding = [c for c in chunks if any(i.content_id.startswith("spam")
                                        for i in staging.read_chunk(wh.engine, wh.settings, run_id, c))]
    assert len(holding) == 1  # ...but every copy of the text is in one of them
    model = wh.label(run_id)
    assert model.requests.count("BUY now!!") == 2  # once per policy, not 9 times
    assert len(model.requests) == (1 + 7) * 2
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert (run.items, run.unique_texts) == (16, 8)
    wh.publish(run_id)
    spam = [v for v in wh.verdicts() if v["content_id"].startswith("spam")]
    assert len(spam) == 18 and {v["label"] for v in spam} == {1}
    assert runs.get_run(wh.engine, wh.settings, run_id).prompt_tokens == 8 * 2 * 20  # counted once per text


def test_null_and_empty_text_give_error_verdict_rows(wh):
    wh.add_posts([("null", None, at(1)), ("empty", "", at(1)), ("blank", " \n\t ", at(1)), ("ok", "hi", at(1))])
    run_id = wh.nightly()
    model = wh.label(run_id)
    assert model.requests == ["hi", "hi"]  # nothing else reaches the model
    result = wh.publish(run_id)
    assert result["errors"] == 6
    rows = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    assert len(rows) == 8
    for cid, why in [("null", "content is NULL"), ("empty", "content is empty"), ("blank", "content is empty")]:
        for policy in ("spam", "self-harm"):
            v = rows[(cid, policy)]
            assert (v["parse_status"], v["label"], v["error"]) == (INPUT_ERROR, None, why)
    assert rows[("ok", "spam")]["parse_status"] == OK
    # Problem rows are not retried forever: the next run over the same rows skips them.
    assert runs.get_run(wh.engine, wh.settings, wh.nightly()).items == 0


def test_bad_utf8_bytes_give_an_error_verdict(make_warehouse):
    wh = make_warehouse()
    md = sa.MetaData()
    blobs = sa.Table("posts", md, sa.Column("id", sa.Integer), sa.Column("body", sa.LargeBinary),
                     sa.Column("updated_at", sa.DateTime))
    md.create_all(wh.engine)
    with wh.engine.begin() as conn:
        conn.execute(blobs.insert(), [dict(id=1, body=b"\xff\xfe oops", updated_at=at(1).replace(tzinfo=None)),
                                      dict(id=2, body="fine".encode(), updated_at=at(1).replace(tzinfo=None))])
    wh.run_all()
    rows = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    assert rows[("1", "spam")]["parse_status"] == INPUT_ERROR and "UTF-8" in rows[("1", "spam")]["error"]
    assert rows[("2", "spam")]["parse_status"] == OK


def test_duplicate_content_ids_are_reported_not_merged(wh):
    wh.add_posts([("7", "first text", at(1)), ("7", "second text", at(2)), ("7", "third", at(3)),
                  ("8", "fine", at(4))])
    run_id = wh.nightly()
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.duplicate_ids == 1 and run.items == 2
    assert any("more than one source row" in w and "7" in w for w in run.warnings)
    wh.label(run_id)
    wh.publish(run_id)
    dup = [v for v in wh.verdicts() if v["content_id"] == "7"]
    assert len(dup) == 2  # one (error) row per policy, not one per source row
    assert {v["parse_status"] for v in dup} == {INPUT_ERROR}
    assert all("duplicate content id: 3 rows" in v["error"] for v in dup)


def test_rows_without_a_usable_id_are_reported(wh):
    wh.add_posts([(None, "orphan", at(1)), ("x" * 201, "long id", at(1)), ("ok", "fine", at(1))])
    run = runs.get_run(wh.engine, wh.settings, wh.nightly())
    assert run.items == 1
    assert any("2 source row(s) skipped" in w for w in run.warnings)


def test_relabel_scope_since_and_limit(wh, small_policies):
    wh.add_posts([(str(i), f"text {i}", at(i)) for i in range(6)])
    wh.run_all()
    spam = next(p for p in small_policies if p.name == "spam")
    (v2,) = policy_store.publish_policies(wh.engine, wh.settings, [dataclasses.replace(
        spam, text=spam.text + "\nStricter.", sha256="", version=None)], "me")
    assert v2.version == 2

    def relabel(**kw):
        run_id = runs.create_run(wh.engine, wh.settings, "relabel", [v2.policy])
        extract.extract_relabel(wh.engine, wh.settings, run_id, "spam", 2, **kw)
        return run_id

    assert work_ids(wh, relabel(since=at(4))) == ["4", "5"]
    limited = relabel(limit=4)
    assert len(work_ids(wh, limited)) == 4
    wh.label(limited)
    wh.publish(limited)
    rest = relabel()
    assert len(work_ids(wh, rest)) == 2  # only what has no v2 verdict yet
    wh.label(rest)
    wh.publish(rest)
    assert work_ids(wh, relabel()) == []
    assert len([v for v in wh.verdicts() if v["policy_version"] == 2]) == 6
    with pytest.raises(WarehouseError, match="create the relabel run"):
        extract.extract_relabel(wh.engine, wh.settings, runs.create_run(wh.engine, wh.settings, "relabel",
                                                                        wh.policies), "spam", 2)


def test_relabel_since_needs_an_updated_at_column(make_warehouse):
    wh = make_warehouse(sources=[{**SOURCE, "updated_at_column": None}])
    wh.create_posts()
    run_id = runs.create_run(wh.engine, wh.settings, "relabel", [("spam", 1)])
    with pytest.raises(SourceError, match=r"sources\[0\]\.updated_at_column"):
        extract.extract_relabel(wh.engine, wh.settings, run_id, "spam", 1, since=T0)


def test_interval_on_a_source_without_updated_at_scans_by_hash(make_warehouse):
    wh = make_warehouse(sources=[{**SOURCE, "updated_at_column": None}])
    wh.create_posts()
    wh.add_posts([("1", "a", None), ("2", "b", at(100))])
    first = wh.run_all()
    run = runs.get_run(wh.engine, wh.settings, first)
    assert run.items == 2 and any("no updated_at_column" in w for w in run.warnings)
    assert runs.get_run(wh.engine, wh.settings, wh.nightly(T0 + DAY, T0 + 2 * DAY)).items == 0


def test_engine_errors_are_retried_by_the_next_run(wh):
    wh.add_posts([("1", "hello", at(1))])
    run_id = wh.nightly()
    (chunk,) = staging.pending_chunks(wh.engine, wh.settings, run_id)
    items = staging.read_chunk(wh.engine, wh.settings, run_id, chunk)
    failed = [error_verdict(content_id=i.content_id, policy=p.name, policy_version=p.version, status=ENGINE_ERROR,
                            error="timeout", source=i.source, content_hash=i.content_hash)
              for i in items for p in wh.policies]
    staging.write_chunk(wh.engine, wh.settings, run_id, chunk, failed)
    wh.publish(run_id)
    assert {v["parse_status"] for v in wh.verdicts()} == {ENGINE_ERROR}
    again = wh.nightly()
    assert runs.get_run(wh.engine, wh.settings, again).items == 1


def test_extract_retry_is_idempotent_and_a_partial_extract_is_redone(wh):
    wh.add_posts([(str(i), f"text {i}", at(1)) for i in range(10)])
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY, run_id="airflow-1")
    # A crashed attempt left a partial work list behind.
    w = schema.tables(wh.settings).work_items
    with wh.engine.begin() as conn:
        conn.execute(w.insert(), [dict(run_id=run_id, item_no=0, bucket=0, source="posts", content_id="junk",
                                       content_hash="0" * 64, text="junk", problem=None)])
    runs.transition(wh.engine, wh.settings, run_id, runs.RunStatus.EXTRACTING)
    assert extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY) == 10
    assert "junk" not in work_ids(wh, run_id)
    # A retried task after success: same run, same list, nothing rewritten.
    assert runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY, run_id="airflow-1") == run_id
    assert extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY) == 10
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(w.c.run_id == run_id)).scalar_one() == 10
    wh.label(run_id)
    wh.publish(run_id)
    runs.update_run(wh.engine, wh.settings, run_id, extract_finished_at=None)
    with pytest.raises(RunStateError, match="is published"):
        extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY)


def test_extract_memory_does_not_grow_with_the_table(wh):
    def peak_for(n: int, offset: int) -> int:
        wh.add_posts([(f"{offset}-{i}", f"post number {i} " + "lorem ipsum " * 20, at(offset + i / n))
                      for i in range(n)])
        run_id = runs.create_run(wh.engine, wh.settings, "backfill", wh.policies, at(offset), at(offset + 1))
        tracemalloc.start()
        extract.extract_interval(wh.engine, wh.settings, run_id, at(offset), at(offset + 1))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert runs.get_run(wh.engine, wh.settings, run_id).items == n
        return peak

    small, big = peak_for(2000, 0), peak_for(8000, 2)
    # A list held in memory would make the 4x table cost ~4x; streaming keeps it about the same.
    assert big < 1.6 * small, (small, big)
