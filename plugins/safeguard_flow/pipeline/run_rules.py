"""The run rules every step follows: run ids, the pipeline's errors, and the one failure path.

- **Run ids** come from what a run labels: an interval run from (kind, interval, policy versions),
  so rerunning an interval continues the same run (same rows, never duplicates) and a new active
  version labels the interval anew; a relabel run from (trigger, policy, version).
- **A step that raises** marks the run failed with the reason, through :func:`failing` (state errors
  excepted: a step asked of a run in the wrong state leaves the run alone). Every caller uses it: the
  pipeline steps, the label worker, the Ray label job and the Airflow operator that follows a job.
- **A failed run** resumes at the step that failed (:func:`resume_if_failed`; finished chunks are kept).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from safeguard_flow.warehouse import runs
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError
from safeguard_flow.warehouse.runs import Run, RunStatus

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

# A run in one of these has nothing left to label.
LABEL_DONE = (RunStatus.LABELLED, RunStatus.VALIDATED, RunStatus.PUBLISHED)


class PipelineError(WarehouseError):
    """The pipeline cannot go on (no policies published, a label job that failed, ...)."""


class LabelJobFailed(PipelineError):
    """The label job died or raised; the run is marked failed with the same reason."""


# --- run ids ----------------------------------------------------------------------------------------


def interval_run_id(kind: str, start: dt.datetime, end: dt.datetime, refs: Sequence[tuple[str, int]]) -> str:
    """Same interval and policy versions -> same id. A new active version labels the interval anew."""
    digest = hashlib.sha256(repr(sorted((str(n), int(v)) for n, v in refs)).encode()).hexdigest()[:8]
    return f"{kind}-{_stamp(start)}-{_stamp(end)}-{digest}"


def relabel_run_id(trigger_id: str, policy: str, version: int) -> str:
    """One run per (trigger, policy version): a DAG run id, or the CLI's scope. Rerunning the same
    trigger continues its run."""
    from safeguard_flow.domain.policies import policy_id_part

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", trigger_id)[:120]
    return f"relabel-{policy_id_part(policy)}-v{version}-{safe}"


def cli_relabel_trigger(since: dt.datetime | None, limit: int | None) -> str:
    """The trigger id of `safeguard-flow run --relabel`: its scope, so repeating the command resumes it."""
    scope = f"since-{since:%Y%m%d}" if since else "all"
    return f"cli-{scope}" + (f"-limit{limit}" if limit else "")


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


def day_interval(start: str | dt.date, end: str | dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC from ISO dates or datetimes (a date is its midnight, UTC)."""
    def at(value: str | dt.date) -> dt.datetime:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
        if not isinstance(value, dt.datetime):
            value = dt.datetime(value.year, value.month, value.day)
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)

    lo, hi = at(start), at(end)
    if not lo < hi:
        raise ValueError(f"interval {lo.isoformat()} / {hi.isoformat()}: the start must be before the end")
    return lo, hi


def needs_work(run: Run) -> bool:
    """Whether the label/validate/publish steps have anything left to do for this run."""
    return run.status is not RunStatus.PUBLISHED


# --- the one failure path -------------------------------------------------------------------------------


def mark_failed(sql_engine: Engine, settings: Settings, run_id: str, reason: str,
                exc: BaseException | None = None, attempt: int | None = None) -> bool:
    """Mark the run failed with `reason` (a no-op for a run that already failed, was quarantined or
    published). The warehouse itself may be what broke: then the first error is kept (the marking
    error becomes a note on `exc`, or a warning) and False is returned. With `attempt` (a label
    attempt's fencing token), a run a newer attempt owns is left to it."""
    try:
        if attempt is not None and runs.get_run(sql_engine, settings, run_id).label_attempt != attempt:
            log.warning("run %s: label attempt %s failed (%s), but a newer attempt owns the run", run_id, attempt,
                        reason)
            return False
        marked = runs.fail_run(sql_engine, settings, run_id, reason)
    except Exception as mark:
        if exc is not None:
            exc.add_note(f"(could not mark run {run_id} failed: {mark})")
        else:
            log.warning("could not mark run %s failed: %s", run_id, mark)
        return False
    if marked:
        log.error("run %s failed: %s", run_id, reason)
    return marked


def failure_reason(step: str, exc: BaseException) -> str:
    if isinstance(exc, SystemExit) and exc.code == 15:  # SIGTERM where Ray's driver handler turned it into an exit
        return f"{step}: stopped by SIGTERM (SystemExit 15)"
    return f"{step}: {type(exc).__name__}: {exc}" if str(exc) else f"{step}: {type(exc).__name__}"


@contextmanager
def failing(sql_engine: Engine, settings: Settings, run_id: str, step: str,
            attempt: Callable[[], int | None] | None = None) -> Iterator[None]:
    """Mark the run failed with the reason if the block raises (an interrupt too: a run must never stay
    in a working state nobody works on), then re-raise. A state error (the step was asked of a run in
    the wrong state) leaves the run as it is; so does the failure of a label attempt (`attempt()`, its
    fencing token once it has one) that a newer attempt superseded."""
    try:
        yield
    except RunStateError:
        raise
    except BaseException as exc:
        mark_failed(sql_engine, settings, run_id, failure_reason(step, exc), exc,
                    attempt=attempt() if attempt is not None else None)
        raise


def resume_if_failed(sql_engine: Engine, settings: Settings, run: Run) -> Run:
    """A failed run resumes at the step that failed (finished work is kept); any other run is returned as
    it is. A run left in a working step with no heartbeat for deadlines.stale_after_s is failed with the
    reason first (its worker died without saying so), then resumed."""
    run = fail_if_stale(sql_engine, settings, run)
    if run.status is not RunStatus.FAILED:
        return run
    resumed = runs.resume_run(sql_engine, settings, run.id)
    log.warning("run %s had failed (%s): resuming it at %s; finished work is kept", run.id, run.error,
                resumed.status.value)
    return resumed


# --- deadlines, heartbeats, SIGTERM ---------------------------------------------------------------------

# The statuses a process works in (the others wait for the next step): left there with no heartbeat, the run is stale.
ACTIVE = {RunStatus.EXTRACTING: "extract", RunStatus.LABELLING: "label"}


def stale_reason(settings: Settings, run: Run, now: dt.datetime | None = None) -> str | None:
    """Why the run is stale (in a working step, no heartbeat for deadlines.stale_after_s), or None."""
    step = ACTIVE.get(run.status)
    if step is None:
        return None
    last = max(t for t in (run.heartbeat_at, run.updated_at) if t is not None)
    age = ((now or dt.datetime.now(dt.timezone.utc)) - last).total_seconds()
    limit = settings.deadlines.stale_after_s
    if age <= limit:
        return None
    attempt = f" (label attempt {run.label_attempt})" if step == "label" else ""
    return (f"{step}: no heartbeat for {age:.0f}s (deadlines.stale_after_s={limit:g}){attempt}; the step's worker "
            f"stopped without saying so. Finished work is kept")


def fail_if_stale(sql_engine: Engine, settings: Settings, run: Run) -> Run:
    """Fail a stale run with the reason (see stale_reason) and return it as it is now."""
    reason = stale_reason(settings, run)
    if reason is None:
        return run
    mark_failed(sql_engine, settings, run.id, reason)
    return runs.get_run(sql_engine, settings, run.id)


@contextmanager
def heartbeating(sql_engine: Engine, settings: Settings, run_id: str, attempt: int | None = None) -> Iterator[None]:
    """Write the run's heartbeat every deadlines.heartbeat_s while the block runs (a daemon thread)."""
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.deadlines.heartbeat_s):
            try:
                if not runs.heartbeat(sql_engine, settings, run_id, attempt):
                    log.warning("run %s: label attempt %s no longer owns the run", run_id, attempt)
            except Exception as exc:  # a busy database: the next beat tries again
                log.warning("run %s: heartbeat failed: %s", run_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:40]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class Terminated(BaseException):
    """This process got SIGTERM (a stopped job, a killed task): unwinds like an interrupt, so `failing`
    marks the run failed with the reason."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated in the main thread (elsewhere: nothing changes). By
    default SIGTERM ends Python without unwinding, which left a stopped job's run `labelling`."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
