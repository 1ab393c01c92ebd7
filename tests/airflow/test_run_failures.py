"""A label job that ends badly marks its run failed with the reason, in Ray-job mode too (a job whose
driver was killed cannot say so itself: the operator does); the run then resumes."""

from __future__ import annotations

import datetime as dt

import pytest


def _labelling_run(engine, settings):
    from safeguard_flow import pipeline
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse.sample_data import load_sample, read_sample
    from safeguard_flow.warehouse import policy_store, runs
    from safeguard_flow.warehouse.runs import RunStatus

    load_sample(engine, read_sample(per_day=4, days=["2026-11-21"]))
    policy_store.publish_policies(engine, settings, load_policy_set(settings.policies_dir), author="t")
    start = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
    run = pipeline.start_interval_run(engine, settings, start, start + dt.timedelta(days=1))
    runs.transition(engine, settings, run.id, RunStatus.LABELLING)  # a job is on it
    return run.id


def test_a_ray_job_that_ends_failed_or_stopped_fails_its_run(wh_engine, wh_settings):
    from airflow.sdk.exceptions import AirflowException

    from safeguard_flow.airflow.ray_operator import RayLabelJobOperator
    from safeguard_flow.warehouse import runs
    from safeguard_flow.warehouse.runs import RunStatus

    run_id = _labelling_run(wh_engine, wh_settings)
    op = RayLabelJobOperator(task_id="label", run_id=run_id, settings=wh_settings, ray_conn_id=None)
    event = {"status": "FAILED", "job_id": "raysubmit_123", "message": "Job entrypoint command failed with exit code -9",
             "log_tail": "..."}
    with pytest.raises(AirflowException, match="ended FAILED"):
        op.execute_complete({}, event)
    run = runs.get_run(wh_engine, wh_settings, run_id)
    assert run.status is RunStatus.FAILED
    assert run.error == "label job: Ray job raysubmit_123 ended FAILED: Job entrypoint command failed with exit code -9"
    # The task's retry (a new job) resumes the run where it stopped.
    assert runs.resume_run(wh_engine, wh_settings, run_id).status is RunStatus.EXTRACTED


def test_a_label_job_that_raises_fails_its_run_with_the_error(sqlite_wh_settings, monkeypatch):
    """run_label_job's status handling (in-process, or inside a Ray job): whatever the labelling
    raises, the run ends failed with it. (Ray itself is stubbed here; the real worker is killed in
    test_pipeline_cli.py.)"""
    import contextlib

    from safeguard_flow.raylib.batch.runner import run_label_job
    from safeguard_flow.raylib.batch import runner
    from safeguard_flow.warehouse import db, runs
    from safeguard_flow.warehouse.runs import RunStatus

    def dying(*args, **kwargs):
        raise RuntimeError("replica died: out of memory")
        yield  # pragma: no cover

    monkeypatch.setattr(runner, "ray_session", lambda settings: contextlib.nullcontext())
    monkeypatch.setattr(runner, "label_chunks", dying)
    engine = db.make_engine(sqlite_wh_settings)
    try:
        run_id = _labelling_run(engine, sqlite_wh_settings)
        with pytest.raises(RuntimeError, match="replica died"):
            run_label_job(sqlite_wh_settings, run_id)
        run = runs.get_run(engine, sqlite_wh_settings, run_id)
        assert (run.status, run.error) == (RunStatus.FAILED, "label job: RuntimeError: replica died: out of memory")
    finally:
        engine.dispose()
