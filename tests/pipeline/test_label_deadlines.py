"""Runs never wedge in `labelling` (issue 18), for real: the label worker (what a Ray job's entrypoint
runs) stopped with SIGTERM half way fails its run itself, with the reason, with no parent to do it;
the label step past deadlines.label_s stops its worker and fails the run with that reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ON_POSTGRES, ON_SQLITE
from tests.pipeline.test_pipeline_cli import DAY, _real_settings, _seed

pytestmark = pytest.mark.slow


def _extracted_run(engine, settings):
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline import day_interval

    _seed(engine, settings, per_day=8)
    start, end = day_interval(DAY, "2026-11-22")
    run = pipeline.start_interval_run(engine, settings, start, end)
    assert run.chunks >= 3
    return run


@ON_POSTGRES
def test_sigterm_during_labelling_fails_the_run(wh_settings, vllm_server, jobs_ray_head, tmp_path):
    from safeguard_flow.pipeline.label import WORKER_MODULE
    from safeguard_flow.warehouse import db, runs, staging
    from safeguard_flow.warehouse.runs import RunStatus

    settings = _real_settings(wh_settings, vllm_server, jobs_ray_head, chunk_size=2)
    engine = db.make_engine(settings)
    try:
        run = _extracted_run(engine, settings)
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, "--run-id", run.id, "--result",
                                   str(tmp_path / "summary.json")], stdin=subprocess.PIPE, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        worker.stdin.write(settings.model_dump_json(exclude_unset=True).encode())
        worker.stdin.close()
        deadline = time.monotonic() + 300
        while staging.progress(engine, settings, run.id)["done"] < 1:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no chunk labelled in 300 s"
            time.sleep(0.2)
        assert runs.get_run(engine, settings, run.id).status is RunStatus.LABELLING
        worker.send_signal(signal.SIGTERM)  # what `ray job stop` and a killed task send first
        assert worker.wait(timeout=60) != 0
        failed = runs.get_run(engine, settings, run.id)
        assert failed.status is RunStatus.FAILED, failed
        # Ours (sigterm_raises), or Ray's driver handler (sys.exit(15)) once ray.init replaced it.
        assert failed.error in ("label job: Terminated: stopped by SIGTERM",
                                "label job: stopped by SIGTERM (SystemExit 15)"), failed.error
        assert failed.label_attempt == 1
    finally:
        try:  # what the worker started in its session goes with it (as pipeline/label.py does)
            os.killpg(worker.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, NameError):
            pass
        engine.dispose()


@ON_SQLITE
def test_an_in_process_run_past_its_deadline_fails_with_the_reason(wh_settings, vllm_server, jobs_ray_head, tmp_path):
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline.label import LabelDeadlinePassed
    from safeguard_flow.warehouse import db, runs
    from safeguard_flow.warehouse.runs import RunStatus

    settings = _real_settings(wh_settings, vllm_server, jobs_ray_head, chunk_size=2)
    settings.deadlines.label_s = 6.0  # the worker alone takes longer to connect to Ray and label 8 chunks
    engine = db.make_engine(settings)
    try:
        run = _extracted_run(engine, settings)
        started = time.monotonic()
        with pytest.raises(LabelDeadlinePassed, match=r"deadlines.label_s=6s passed"):
            pipeline.label_run(engine, settings, run.id, log_file=tmp_path / "label.log")
        assert time.monotonic() - started < 60  # stopped at the deadline, not when the job ended
        failed = runs.get_run(engine, settings, run.id)
        assert failed.status is RunStatus.FAILED
        assert failed.error.startswith("label: LabelDeadlinePassed: ") and "deadlines.label_s=6s passed" in failed.error
        # The next attempt resumes it (finished chunks kept) once the deadline allows.
        settings.deadlines.label_s = 600.0
        done = pipeline.label_run(engine, settings, run.id, log_file=tmp_path / "label.log")
        assert runs.get_run(engine, settings, done.run_id).status is RunStatus.LABELLED
        assert "deadlines.label_s=6s passed" in runs.get_run(engine, settings, run.id).warnings[-1]
    finally:
        engine.dispose()
