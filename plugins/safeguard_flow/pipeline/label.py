"""Label, the second step: the run's pending chunks through the label job (local Ray replicas, the
configured engine); the run ends labelled.

The job runs in a worker process by default (pipeline/label_worker.py), so even a worker killed
outright (SIGKILL, out of memory) leaves the run failed with why. No Ray or vLLM is imported here:
the worker (or, with isolate=False, this process) loads raylib when it labels.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from safeguard_flow.pipeline.run_rules import (LABEL_DONE, LabelJobFailed, failure_reason, mark_failed,
                                               resume_if_failed, sigterm_raises)
from safeguard_flow.warehouse import runs, staging
from safeguard_flow.warehouse.errors import RunStateError
from safeguard_flow.warehouse.runs import RunStatus

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the label step looks at the worker and the run's chunks
WORKER_MODULE = "safeguard_flow.pipeline.label_worker"


@dataclass
class LabelOutcome:
    run_id: str
    summary: dict[str, Any] = field(default_factory=dict)  # LabelJobSummary.to_dict() of the job, if one ran
    log_file: str | None = None

    @property
    def labelled_anything(self) -> bool:
        return bool(self.summary.get("chunks_labelled"))


def label_run(sql_engine: Engine, settings: Settings, run_id: str, *, isolate: bool = True,
              log_file: str | Path | None = None, progress: bool = False,
              on_progress: Callable[[dict[str, int], int | None], None] | None = None) -> LabelOutcome:
    """Label the run's pending chunks; the run ends labelled.

    isolate: run the job in a worker process (the default), whose death, however abrupt, marks the
    run failed with the reason; its output goes to `log_file` (None: this process's stdout/stderr).
    progress: draw a bar of finished chunks; on_progress(progress, worker_pid) is called as chunks finish.
    Raises LabelJobFailed (the run is then failed) when the job did not finish.
    """
    run = resume_if_failed(sql_engine, settings, runs.get_run(sql_engine, settings, run_id))
    if run.status in LABEL_DONE:
        log.info("run %s is %s: nothing to label", run_id, run.status.value)
        return LabelOutcome(run_id)
    if run.status not in (RunStatus.EXTRACTED, RunStatus.LABELLING):
        raise RunStateError(f"run {run_id!r} is {run.status.value}: the label step needs an extracted run")
    if not isolate:
        from safeguard_flow.raylib.batch.runner import run_label_job

        summary = run_label_job(settings, run_id)  # marks the run failed itself if it raises
        return LabelOutcome(run_id, summary.to_dict())
    return _label_in_worker(sql_engine, settings, run_id, log_file, progress, on_progress)


def _label_in_worker(sql_engine: Engine, settings: Settings, run_id: str, log_file, progress: bool,
                     on_progress) -> LabelOutcome:
    with tempfile.TemporaryDirectory(prefix="sg-label-") as tmp:
        result_path = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", WORKER_MODULE, "--run-id", run_id, "--result", str(result_path)]
        out = open(log_file, "ab", buffering=0) if log_file else None
        proc = None
        try:
            # Settings travel on stdin (never in the environment or the command line: they may hold secrets).
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True)
            assert proc.stdin is not None
            # Only what was set: the model preset fills the unset model fields in the worker too.
            proc.stdin.write(settings.model_dump_json(exclude_unset=True).encode())
            proc.stdin.close()
            with sigterm_raises():  # a SIGTERM here (a stopped task) fails the run like any other exception
                code = _follow(sql_engine, settings, run_id, proc, progress, on_progress)
        except BaseException as exc:
            # The reason first: the stopped worker would record only that it was stopped.
            mark_failed(sql_engine, settings, run_id, failure_reason("label", exc), exc)
            _stop(proc)
            raise
        finally:
            if out is not None:
                out.close()
        _reap_group(proc.pid)
        summary = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if code != 0 and summary:
        # The job finished and wrote its summary (renamed into place last): a crash after that is in
        # the process's teardown, not in the labelling, and the run's state is already the job's.
        log.warning("run %s: the label worker finished the job, then %s at exit; the job's result stands",
                    run_id, _how_it_ended(code))
        code = 0
    if code != 0:
        reason = f"label job: {_exit_reason(code)}" + (f" (log: {log_file})" if log_file else "")
        mark_failed(sql_engine, settings, run_id, reason)  # a no-op when the job already failed the run itself
        run = runs.get_run(sql_engine, settings, run_id)
        raise LabelJobFailed(f"run {run_id}: {run.error or reason}")
    return LabelOutcome(run_id, summary, str(log_file) if log_file else None)


class LabelDeadlinePassed(LabelJobFailed):
    """The label step ran past deadlines.label_s: its worker was stopped and the run failed with why."""


def _follow(sql_engine, settings, run_id: str, proc: subprocess.Popen, progress: bool, on_progress) -> int:
    bar = None
    seen = -1
    deadline_s = settings.deadlines.label_s
    started = time.monotonic()
    beat = started
    try:
        while True:
            code = proc.poll()
            now_t = time.monotonic()
            if code is None and now_t - started > deadline_s:
                raise LabelDeadlinePassed(
                    f"run {run_id}: label: the deadline deadlines.label_s={deadline_s:g}s passed "
                    f"({now_t - started:.0f}s); the label worker was stopped, finished chunks are kept")
            if code is None and now_t - beat >= settings.deadlines.heartbeat_s:
                beat = now_t
                try:  # the worker is alive: so is the run (its own job beats too, this covers its start-up)
                    runs.heartbeat(sql_engine, settings, run_id)
                except Exception as exc:  # a busy SQLite file; beat again next time
                    log.debug("heartbeat: %s", exc)
            try:
                now = staging.progress(sql_engine, settings, run_id)
            except Exception:  # a busy SQLite file; look again at the next poll
                now = None
            if now is not None and now["done"] != seen:
                seen = now["done"]
                if progress and bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=now["chunks"], initial=now["done"], unit="chunk", desc=f"labelling {run_id[:40]}",
                               file=sys.stderr, disable=None)
                if bar is not None:
                    bar.update(now["done"] - bar.n)
                    bar.set_postfix(items=now.get("verdicts", 0), errors=now["errors"], refresh=True)
                if on_progress is not None:
                    on_progress(now, proc.pid if code is None else None)
            if code is not None:
                return code
            time.sleep(POLL_S)
    finally:
        if bar is not None:
            bar.close()


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _exit_reason(code: int) -> str:
    reason = f"the label worker {_how_it_ended(code)}"
    return reason + "; finished chunks are kept, rerun to resume" if code < 0 else reason


def _stop(proc: subprocess.Popen | None) -> None:
    """This process is being interrupted: stop the worker and what it started."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    """Processes the worker left in its session (a local Ray's raylet, replicas) go with it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
