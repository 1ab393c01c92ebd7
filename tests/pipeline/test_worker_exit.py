"""The label step reads its worker's exit honestly: a worker that wrote its summary (the job finished)
and then crashed in its teardown does not fail the run; one that died before the summary does."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def stand_in_worker(monkeypatch):
    from safeguard_flow.pipeline import label

    def use(how: str):
        # The worker's command is [python, -m, WORKER_MODULE, --run-id, ...]: put `how` before the flags.
        monkeypatch.setattr(label, "WORKER_MODULE", "tests.pipeline.crash_after_summary_worker " + how)
        real_popen = label.subprocess.Popen

        def popen(cmd, **kw):
            module, arg = cmd[2].split(" ")
            return real_popen([sys.executable, "-m", module, arg, *cmd[3:]], **kw)

        monkeypatch.setattr(label.subprocess, "Popen", popen)

    return use


def _extracted(wh_settings):
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline import day_interval
    from safeguard_flow.warehouse import db
    from tests.pipeline.test_pipeline_cli import DAY, _seed

    engine = db.make_engine(wh_settings)
    _seed(engine, wh_settings, per_day=2)
    start, end = day_interval(DAY, "2026-11-22")
    return engine, pipeline.start_interval_run(engine, wh_settings, start, end)


def test_a_crash_after_the_summary_keeps_the_jobs_result(wh_settings, stand_in_worker, tmp_path, caplog):
    from safeguard_flow.pipeline.label import _label_in_worker

    stand_in_worker("after")
    engine, run = _extracted(wh_settings)
    try:
        outcome = _label_in_worker(engine, wh_settings, run.id, tmp_path / "w.log", False, None)
        assert outcome.summary == {"items": 3, "errors": 0}
        assert "then was killed by SIGSEGV at exit; the job's result stands" in caplog.text
    finally:
        engine.dispose()


@pytest.mark.parametrize("how", ["before", "exit1"])
def test_a_worker_that_dies_before_its_summary_fails_the_run(wh_settings, stand_in_worker, tmp_path, how):
    from safeguard_flow.pipeline.label import LabelJobFailed, _label_in_worker
    from safeguard_flow.warehouse import runs
    from safeguard_flow.warehouse.runs import RunStatus

    stand_in_worker(how)
    engine, run = _extracted(wh_settings)
    try:
        with pytest.raises(LabelJobFailed):
            _label_in_worker(engine, wh_settings, run.id, tmp_path / "w.log", False, None)
        assert runs.get_run(engine, wh_settings, run.id).status is RunStatus.FAILED
    finally:
        engine.dispose()
