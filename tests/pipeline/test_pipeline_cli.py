"""The pipeline without Airflow, for real: the label step's worker process labelling through a real
Ray head and the real small model on vLLM (the shared OpenAI-compatible server), killed half way
with SIGKILL, then resumed; and `safeguard-flow run` / `runs` end to end on a fresh home."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from tests.conftest import ON_POSTGRES

pytestmark = pytest.mark.slow

DAY = "2026-11-21"


def _real_settings(settings, vllm_server, head, **warehouse):
    """`settings` labelling through the shared vLLM server on the test Ray head, small chunks."""
    from safeguard_flow.settings import Settings

    data = settings.model_dump()
    data["engine"].update(kind="openai", base_url=vllm_server, concurrency=2)
    data["ray"].update(address=head.gcs_address, num_cpus_per_replica=0.25, num_replicas=1)
    data["warehouse"].update(warehouse)
    data["quality"].update(max_error_rate=0.5, max_positive_rate=1.0)  # these tests are about the run, not the small model's answers
    return Settings.model_validate(data)


def _seed(engine, settings, per_day: int) -> int:
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse.sample_data import load_sample, read_sample
    from safeguard_flow.warehouse import policy_store

    rows = read_sample(per_day=per_day, days=[DAY])
    load_sample(engine, rows)
    policy_store.publish_policies(engine, settings, load_policy_set(settings.policies_dir), author="test")
    return len(rows)


def _chunks(engine, settings, run_id):
    from safeguard_flow.warehouse import schema

    c = schema.tables(settings).run_chunks
    with engine.connect() as conn:
        return {r.chunk_no: r.finished_at for r in conn.execute(sa.select(c.c.chunk_no, c.c.finished_at)
                                                                  .where(c.c.run_id == run_id, c.c.done == sa.true()))}


@ON_POSTGRES  # the next test runs the CLI on SQLite
def test_a_label_worker_killed_half_way_fails_the_run_and_the_rerun_resumes_it(wh_settings, vllm_server, jobs_ray_head,
                                                                                 tmp_path):
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline import day_interval
    from safeguard_flow.warehouse import db, runs, schema
    from safeguard_flow.warehouse.runs import RunStatus

    settings = _real_settings(wh_settings, vllm_server, jobs_ray_head, chunk_size=2)
    engine = db.make_engine(settings)
    try:
        n = _seed(engine, settings, per_day=8)
        start, end = day_interval(DAY, "2026-11-22")
        run = pipeline.start_interval_run(engine, settings, start, end)
        assert run.items == n and run.chunks >= 3
        killed: list[int] = []

        def kill_after_first_chunk(progress, pid):
            if pid and not killed and 1 <= progress["done"] < progress["chunks"]:
                os.kill(pid, signal.SIGKILL)  # the worker, as the OOM killer would
                killed.append(progress["done"])

        log = tmp_path / "label.log"
        with pytest.raises(pipeline.LabelJobFailed, match="SIGKILL"):
            pipeline.label_run(engine, settings, run.id, log_file=log, on_progress=kill_after_first_chunk)
        assert killed, "the job finished before the test could kill it"
        failed = runs.get_run(engine, settings, run.id)
        assert failed.status is RunStatus.FAILED and "killed by SIGKILL" in failed.error and str(log) in failed.error
        time.sleep(5)  # the dead driver's replica may still commit the chunk it was on
        before = _chunks(engine, settings, run.id)
        assert 1 <= len(before) < run.chunks

        result = pipeline.finish(engine, settings, run.id, log_file=log)
        done = result.run
        assert done.status is RunStatus.PUBLISHED and "killed by SIGKILL" in done.warnings[-1]
        summary = result.labelled.summary
        assert summary["chunks_labelled"] + summary["chunks_skipped"] == run.chunks - len(before)  # only the pending
        after = _chunks(engine, settings, run.id)
        assert {k: after[k] for k in before} == before  # finished chunks were not labelled again
        v = schema.tables(settings).verdicts
        with engine.connect() as conn:
            total, keys = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(v.c.content_id)))
                                       .where(v.c.run_id == run.id)).one()
        assert (total, keys) == (n * 2, n)  # every item once per policy, nothing twice
        assert done.verdicts == n * 2 and done.inserted == n * 2
    finally:
        engine.dispose()


def test_cli_runs_an_interval_on_a_fresh_home_and_a_rerun_labels_nothing(sqlite_wh_settings, vllm_server, jobs_ray_head,
                                                                            tmp_path, capsys, monkeypatch):
    from safeguard_flow.cli import main as cli

    for key in [k for k in os.environ if k.startswith("SAFEGUARD_")]:
        monkeypatch.delenv(key)  # the CLI reads the environment: only the config file below counts here
    from safeguard_flow.pipeline import day_interval, interval_run_id

    settings = _real_settings(sqlite_wh_settings, vllm_server, jobs_ray_head)
    home = tmp_path / "fresh-home"
    config = tmp_path / "cli.yaml"
    data = settings.model_dump(mode="json")
    data.update(home=str(home), warehouse={**data["warehouse"], "url": f"sqlite:///{home / 'warehouse.db'}"})
    data.pop("sources")  # none configured: `run` labels the sample's posts table
    config.write_text(yaml.safe_dump(data))

    def cli_run(*argv) -> str:
        assert cli.main(["--config", str(config), *argv]) == 0
        return capsys.readouterr().out

    from safeguard_flow.warehouse.sample_data import read_sample

    sample = tmp_path / "sample.jsonl"  # a few rows of each day: the real 144-row day is `make demo`'s
    sample.write_text("".join(json.dumps(r) + "\n" for r in read_sample(per_day=5)))
    assert "loaded 15 rows into table posts" in cli_run("sample", "load", "--path", str(sample))
    cli_run("policies", "publish", settings.policies_dir)
    out = cli_run("run", "--interval", "2026-11-20/2026-11-21")
    run_id = interval_run_id("nightly", *day_interval("2026-11-20", "2026-11-21"), [("self-harm", 1), ("spam", 1)])
    assert f"run {run_id}: 5 item(s)" in out and "quality gate passed" in out and "published: 10 new" in out
    log = Path(out.split("full log: ", 1)[1].split()[0])
    assert log.is_file() and log.stat().st_size > 0 and len(out.splitlines()) < 15

    again = cli_run("run", "--interval", "2026-11-20/2026-11-21")
    assert f"run {run_id}: already published; labelled nothing" in again
    shown = cli_run("runs", "show", run_id)
    assert "status     published" in shown and "items      5 item(s)" in shown and "validation passed" in shown
    assert "prompt +" in shown and run_id in cli_run("runs", "list")
