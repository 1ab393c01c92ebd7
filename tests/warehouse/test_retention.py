"""Retention on real warehouses (SQLite, PostgreSQL): publishing clears a run's text copies (the
default), `safeguard-flow retention` purges work lists, staging, analysis, eval predictions, old
reports and logs, rotates the local head's log, and `runs show` still answers for a purged run."""

from __future__ import annotations

import datetime as dt
import os

import sqlalchemy as sa
import yaml
from tests.warehouse.warehouse_helpers import DAY, T0, at

from safeguard_flow import pipeline
from safeguard_flow.warehouse import retention, runs, schema


def _count(wh, table: str, run_id: str | None = None, where=None) -> int:
    t = getattr(schema.tables(wh.settings), table)
    q = sa.select(sa.func.count()).select_from(t)
    if run_id is not None:
        q = q.where(t.c.run_id == run_id)
    if where is not None:
        q = q.where(where)
    with wh.engine.connect() as conn:
        return conn.execute(q).scalar_one()


def _cli(wh, tmp_path, capsys, *argv) -> str:
    from safeguard_flow.cli import main as cli

    config = tmp_path / "retention.yaml"
    config.write_text(yaml.safe_dump(wh.settings.model_dump(mode="json")))
    assert cli.main(["--config", str(config), *argv]) == 0
    return capsys.readouterr().out


def test_retention_leaves_no_text_copy_and_runs_show_still_answers(make_warehouse, tmp_path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SAFEGUARD_")]:
        monkeypatch.delenv(key)  # the CLI reads the environment: only the config file counts here
    wh = make_warehouse(store_analysis=True)
    wh.create_posts()
    wh.add_posts([(str(i), f"post {i} about my day" + (" buy now" if i % 4 == 0 else ""), at(i)) for i in range(8)])
    run = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)
    wh.label(run.id)
    assert _count(wh, "work_items", run.id, sa.text("text IS NOT NULL")) == 8  # the copies exist while labelling
    pipeline.validate_run(wh.engine, wh.settings, run.id)
    pipeline.publish_run(wh.engine, wh.settings, run.id)

    # Default retention.text_days = 0: publishing clears the run's text copies itself.
    assert _count(wh, "work_items", run.id) == 8
    assert _count(wh, "work_items", run.id, sa.text("text IS NOT NULL")) == 0
    assert runs.get_run(wh.engine, wh.settings, run.id).purged_at is not None
    assert _count(wh, "verdict_staging", run.id) == 16 and _count(wh, "verdict_analysis", run.id) == 16

    # Old files: a CLI log, a validation report past their days; a local head log past its size.
    home = wh.settings.home_path
    old = (dt.datetime.now() - dt.timedelta(days=120)).timestamp()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    stale_log, fresh_log = home / "logs" / "run-20250101T000000.log", home / "logs" / "run-now.log"
    for path in (stale_log, fresh_log):
        path.write_text("vLLM says hello\n")
    os.utime(stale_log, (old, old))
    report_file = home / "reports" / run.id / "validation.json"
    assert report_file.is_file()
    os.utime(report_file, (old, old))
    head_log = home / "ray" / "head-6379.log"
    head_log.parent.mkdir(parents=True, exist_ok=True)
    head_log.write_bytes(b"x" * 3 * 1024 * 1024)

    # Everything past its days (analysis 30 days after labelling: ask a month on), staging at once.
    wh.settings = wh.settings.model_copy(update={"retention": wh.settings.retention.model_copy(
        update={"staging_days": 0, "log_max_mb": 1.0})})
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    dry = retention.apply_retention(wh.engine, wh.settings, dry_run=True, now=later)
    assert dry.staging_runs == [run.id] and dry.rows_deleted["sg_verdict_staging"] == 16
    assert _count(wh, "verdict_staging", run.id) == 16  # a dry run deletes nothing
    os.utime(fresh_log, (later.timestamp(), later.timestamp()))  # written "today" as seen from `later`
    done = retention.apply_retention(wh.engine, wh.settings, now=later)
    assert done.rows_deleted == {"sg_work_items": 8, "sg_run_chunks": done.rows_deleted["sg_run_chunks"],
                                 "sg_verdict_staging": 16, "sg_verdict_analysis": 16, "sg_eval_predictions": 0}
    for table in ("work_items", "run_chunks", "verdict_staging", "verdict_analysis"):
        assert _count(wh, table, run.id) == 0, table
    assert _count(wh, "verdicts") == 16  # published verdicts are never purged
    assert not stale_log.exists() and fresh_log.exists() and not report_file.exists()
    assert head_log.stat().st_size == 0 and head_log.with_name("head-6379.log.1").stat().st_size == 3 * 1024 * 1024

    # `runs show` answers for the purged run, with its counts, timings and gate rows.
    shown = _cli(wh, tmp_path, capsys, "runs", "show", run.id)
    assert "status     published" in shown and "items      8 item(s)" in shown and "verdicts   16" in shown
    assert "spam v1" in shown and "passed" in shown
    # A second pass (the CLI's) finds nothing left to purge.
    again = _cli(wh, tmp_path, capsys, "retention")
    assert "text copies of 0 published run(s)" in again and "staging of 0 run(s)" in again


def test_runs_not_published_keep_their_texts(wh):
    wh.add_posts([(str(i), f"post {i}", at(i)) for i in range(4)])
    run_id = wh.nightly()
    assert retention.clear_texts(wh.engine, wh.settings, run_id) == 0  # extracted, not published: needed still
    report = retention.apply_retention(wh.engine, wh.settings.model_copy(update={"retention": wh.settings.retention
                                       .model_copy(update={"staging_days": 0})}))
    assert report.text_runs == [] and report.staging_runs == []
    assert _count(wh, "work_items", run_id, sa.text("text IS NOT NULL")) == 4
