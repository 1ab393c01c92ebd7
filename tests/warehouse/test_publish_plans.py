"""Publishing before PostgreSQL has statistics (issue 9): 20k new verdicts against 100k existing ones on
fresh, never-analysed tables. The old "is any staged key there yet?" join was planned as an index walk
per staged row (197 s); publish now uses no statement whose plan depends on statistics. Timings are in
bench/warehouse_bench.py --publish-scale; here a statement timeout only tells stalled from fine."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from safeguard_flow.warehouse.runs import RunStatus
from safeguard_flow.warehouse import db, policy_store, publish, runs, schema

pytestmark = pytest.mark.postgres

COLS = ("source, content_id, policy, policy_version, content_hash, label, category, rationale, confidence, rule_ids, "
        "parse_status, raw_output, error, model, prompt_tokens, completion_tokens, extra, labelled_at, extracted_at")


def _rows(lo: int, hi: int, tail: str) -> str:
    return (f"SELECT 'posts', 'e' || i, 'spam', 1, md5(i::text) || md5(i::text), (mod(i, 20) = 0)::int, NULL, 'r', "
            f"NULL, NULL, 'ok', NULL, NULL, 'm', 1, 1, NULL, timestamptz '2024-06-01' + i * interval '1 s', "
            f"timestamptz '2024-06-01', {tail} FROM generate_series({lo}, {hi}) AS i")


def test_publish_does_not_stall_on_fresh_tables_without_statistics(pg_url, settings_factory, small_policies):
    settings = settings_factory(pg_url)
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    try:
        spam = [p for p in small_policies if p.name == "spam"]
        policy_store.publish_policies(engine, settings, spam, author="tests")
        runs.create_run(engine, settings, "manual", [("spam", 1)], run_id="old")
        runs.create_run(engine, settings, "manual", [("spam", 1)], run_id="new")
        now = dt.datetime.now(dt.timezone.utc)
        with engine.begin() as conn:
            for table in ("sg_verdicts", "sg_verdict_staging"):
                conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            conn.exec_driver_sql(f"INSERT INTO sg_verdicts ({COLS}, run_id, published_at) "
                                 + _rows(0, 99_999, "'old', now()"))
            conn.exec_driver_sql(f"INSERT INTO sg_verdict_staging ({COLS}, run_id, chunk_no) "
                                 + _rows(100_000, 119_999, "'new', 0"))
            conn.execute(sa.text("INSERT INTO sg_run_chunks (run_id, chunk_no, bucket_lo, bucket_hi, items, done, "
                                 "verdicts, errors, positives, prompt_tokens, completion_tokens) "
                                 "VALUES ('new', 0, 0, 268435456, 20000, true, 20000, 0, 1000, 0, 0)"))
        runs.update_run(engine, settings, "new", items=20_000, extract_started_at=now, extract_finished_at=now)
        for status in (RunStatus.EXTRACTING, RunStatus.EXTRACTED, RunStatus.LABELLING, RunStatus.LABELLED):
            runs.transition(engine, settings, "new", status)
        runs.transition(engine, settings, "new", RunStatus.VALIDATED, validated_at=now,
                        validation={"success": True, "summary": "bench: gate not run"})
        with engine.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'sg_verdicts' "
                "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)").scalar_one() == 0

        limited = sa.create_engine(pg_url, connect_args={"options": "-c statement_timeout=15000"})
        try:
            result = publish.publish_run(limited, settings, "new")  # a stalled plan would be cancelled here
        finally:
            limited.dispose()
        assert (result["inserted"], result["updated"], result["unchanged"]) == (20_000, 0, 0)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM sg_verdicts").scalar_one() == 120_000
    finally:
        engine.dispose()
