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
from typing import TYPE_CHECKING, Iterator, Sequence

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
                exc: BaseException | None = None) -> bool:
    """Mark the run failed with `reason` (a no-op for a run that already failed, was quarantined or
    published). The warehouse itself may be what broke: then the first error is kept (the marking
    error becomes a note on `exc`, or a warning) and False is returned."""
    try:
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
    return f"{step}: {type(exc).__name__}: {exc}" if str(exc) else f"{step}: {type(exc).__name__}"


@contextmanager
def failing(sql_engine: Engine, settings: Settings, run_id: str, step: str) -> Iterator[None]:
    """Mark the run failed with the reason if the block raises (an interrupt too: a run must never stay
    in a working state nobody works on), then re-raise. A state error (the step was asked of a run in
    the wrong state) leaves the run as it is."""
    try:
        yield
    except RunStateError:
        raise
    except BaseException as exc:
        mark_failed(sql_engine, settings, run_id, failure_reason(step, exc), exc)
        raise


def resume_if_failed(sql_engine: Engine, settings: Settings, run: Run) -> Run:
    """A failed run resumes at the step that failed (finished work is kept); any other run is returned as it is."""
    if run.status is not RunStatus.FAILED:
        return run
    resumed = runs.resume_run(sql_engine, settings, run.id)
    log.warning("run %s had failed (%s): resuming it at %s; finished work is kept", run.id, run.error,
                resumed.status.value)
    return resumed
