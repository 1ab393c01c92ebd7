"""The labelling pipeline as plain functions: extract -> label -> validate -> publish, and its rules.

The Airflow tasks (airflow/tasks.py), the CLI (`safeguard-flow run`) and the tests call these, so
the whole pipeline runs without Airflow, with the same run ids and tables. The rules:

- **Run ids** come from what a run labels: an interval run from (kind, interval, policy versions),
  so rerunning an interval continues the same run (same rows, never duplicates) and a new active
  version labels the interval anew; a relabel run from (trigger, policy, version).
- **A published run** is left as it is: rerunning it labels nothing.
- **A quarantined run** is started afresh (the fix is usually a policy or threshold change, and
  nothing of it was published); **a failed run** resumes at the step that failed (finished chunks
  are kept).
- **An empty work list** closes the run as published at once, so it never shows as pending.
- **A step that raises** marks the run failed with the reason (state errors excepted: a step asked
  of a run in the wrong state leaves the run alone; and publish, one transaction, leaves the run
  validated for a retry). The label job runs in a worker process, so
  even a worker killed outright (SIGKILL, out of memory) leaves the run failed with why.

No Airflow, Ray or vLLM is imported here; the label step loads raylib when it runs in this process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from safeguard_flow.warehouse import runs
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError
from safeguard_flow.warehouse.runs import Run, RunStatus
from safeguard_flow.warehouse.staging import finish_labelling  # noqa: F401  (a step of this pipeline)

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.pipeline.expectations import ValidationReport
    from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

_DONE = (RunStatus.LABELLED, RunStatus.VALIDATED, RunStatus.PUBLISHED)
POLL_S = 0.5  # how often the label step looks at the worker and the run's chunks


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


# --- failure handling -----------------------------------------------------------------------------------


@contextmanager
def failing(engine: Engine, settings: Settings, run_id: str, step: str) -> Iterator[None]:
    """Mark the run failed with the reason if the block raises (then re-raise). A state error (the step
    was asked of a run in the wrong state) leaves the run as it is."""
    try:
        yield
    except RunStateError:
        raise
    except BaseException as exc:
        reason = f"{step}: {type(exc).__name__}: {exc}" if str(exc) else f"{step}: {type(exc).__name__}"
        try:
            if runs.fail_run(engine, settings, run_id, reason):
                log.error("run %s failed in %s: %s", run_id, step, reason)
        except Exception as mark:  # the warehouse itself may be what broke; keep the first error
            exc.add_note(f"(could not mark run {run_id} failed: {mark})")
        raise


def _resume_if_failed(engine: Engine, settings: Settings, run: Run) -> Run:
    if run.status is RunStatus.FAILED:
        point = runs.resume_run(engine, settings, run.id)
        log.warning("run %s had failed (%s): resuming it at %s; finished work is kept", run.id, run.error, point.value)
        return runs.get_run(engine, settings, run.id)
    return run


# --- extract ------------------------------------------------------------------------------------------


def start_interval_run(engine: Engine, settings: Settings, start: dt.datetime, end: dt.datetime, *,
                       kind: str = "nightly", params: dict[str, Any] | None = None) -> Run:
    """The interval's run against the active version of every policy (and each shadow version beside
    it), with its work list extracted."""
    from safeguard_flow.warehouse import extract as extract_mod
    from safeguard_flow.warehouse import policy_store

    policies = policy_store.run_policies(engine, settings)
    if not policies:
        raise PipelineError("no policies are published in the warehouse: run `safeguard-flow policies publish DIR` "
                            "(or the safeguard_policy_sync DAG) first")
    refs = [(p.name, int(p.version)) for p in policies]
    run_id = interval_run_id(kind, start, end, refs)
    runs.create_run(engine, settings, kind, policies, interval_start=start, interval_end=end, params=params,
                    run_id=run_id)
    return extract(engine, settings, run_id,
                   lambda: extract_mod.extract_interval(engine, settings, run_id, start, end))


def start_relabel_run(engine: Engine, settings: Settings, policy: str, version: int | None = None, *,
                      trigger_id: str, since: dt.datetime | None = None, limit: int | None = None,
                      params: dict[str, Any] | None = None) -> Run:
    """A relabel run of `policy` at `version` (default: its active one) over the content in scope that
    has no verdict for that version yet, with its work list extracted."""
    from safeguard_flow.warehouse import extract as extract_mod
    from safeguard_flow.warehouse import policy_store

    if version is None:
        active = {p.name: int(p.version) for p in policy_store.get_policies(engine, settings)}
        if policy not in active:
            raise PipelineError(f"policy {policy!r} is not published (published: {', '.join(sorted(active)) or 'none'})")
        version = active[policy]
    found = policy_store.get_policies(engine, settings, [(policy, int(version))])[0]  # raises if unknown
    run_id = relabel_run_id(trigger_id, policy, int(version))
    runs.create_run(engine, settings, "relabel", [found], params={
        **(params or {}), "since": since.isoformat() if since else None, "limit": limit}, run_id=run_id)
    return extract(engine, settings, run_id, lambda: extract_mod.extract_relabel(
        engine, settings, run_id, policy, int(version), since=since, limit=limit))


def extract(engine: Engine, settings: Settings, run_id: str, extract_fn: Callable[[], int]) -> Run:
    """Apply the run rules, then write its work list with `extract_fn` if it has none yet.

    Returns the run: published already (nothing to do), closed as published because nothing is new,
    or extracted and waiting for the label step.
    """
    run = runs.get_run(engine, settings, run_id)
    if run.status is RunStatus.PUBLISHED:
        log.info("run %s is already published: nothing to do (same rows, no duplicates)", run_id)
        return run
    if run.status is RunStatus.QUARANTINED:
        log.warning("run %s was quarantined: starting it afresh (its staged verdicts are dropped; nothing of it "
                    "was published)", run_id)
        runs.reset_run(engine, settings, run_id)
    run = _resume_if_failed(engine, settings, runs.get_run(engine, settings, run_id))
    if not run.extracted:
        with failing(engine, settings, run_id, "extract"):
            extract_fn()
        run = runs.get_run(engine, settings, run_id)
    if run.status is RunStatus.EXTRACTED and run.empty:
        close_empty(engine, settings, run_id)
        log.info("run %s: nothing new to label; closed as published with 0 verdicts", run_id)
        run = runs.get_run(engine, settings, run_id)
    return run


def close_empty(engine: Engine, settings: Settings, run_id: str) -> None:
    """An extracted run with nothing to label: published with zero counts (the gate has nothing to judge)."""
    zero = dict.fromkeys(("verdicts", "errors", "positives", "inserted", "updated", "unchanged", "prompt_tokens",
                          "completion_tokens"), 0)
    runs.transition(engine, settings, run_id, RunStatus.PUBLISHED, published_at=_now(), **zero,
                    validation={"success": True, "summary": "nothing to label: no verdicts to validate"})


def needs_work(run: Run) -> bool:
    """Whether the label/validate/publish steps have anything left to do for this run."""
    return run.status is not RunStatus.PUBLISHED


# --- label --------------------------------------------------------------------------------------------


@dataclass
class LabelOutcome:
    run_id: str
    summary: dict[str, Any] = field(default_factory=dict)  # LabelJobSummary.to_dict() of the job, if one ran
    log_file: str | None = None

    @property
    def labelled_anything(self) -> bool:
        return bool(self.summary.get("chunks_labelled"))


def label(engine: Engine, settings: Settings, run_id: str, *, isolate: bool = True, log_file: str | Path | None = None,
          progress: bool = False, on_progress: Callable[[dict[str, int], int | None], None] | None = None) -> LabelOutcome:
    """Label the run's pending chunks (local Ray replicas, the configured engine); the run ends labelled.

    isolate: run the job in a worker process (the default), whose death, however abrupt, marks the
    run failed with the reason; its output goes to `log_file` (None: this process's stdout/stderr).
    progress: draw a bar of finished chunks; on_progress(progress, worker_pid) is called as chunks finish.
    Raises LabelJobFailed (the run is then failed) when the job did not finish.
    """
    run = _resume_if_failed(engine, settings, runs.get_run(engine, settings, run_id))
    if run.status in _DONE:
        log.info("run %s is %s: nothing to label", run_id, run.status.value)
        return LabelOutcome(run_id)
    if run.status not in (RunStatus.EXTRACTED, RunStatus.LABELLING):
        raise RunStateError(f"run {run_id!r} is {run.status.value}: the label step needs an extracted run")
    if not isolate:
        from safeguard_flow.raylib import run_label_job

        summary = run_label_job(settings, run_id)  # marks the run failed itself if it raises
        return LabelOutcome(run_id, summary.to_dict())
    return _label_in_worker(engine, settings, run_id, log_file, progress, on_progress)


def _label_in_worker(engine: Engine, settings: Settings, run_id: str, log_file, progress: bool, on_progress) -> LabelOutcome:
    from safeguard_flow.warehouse import staging

    with tempfile.TemporaryDirectory(prefix="sg-label-") as tmp:
        result_path = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "safeguard_flow.pipeline.label_worker", "--run-id", run_id, "--result", str(result_path)]
        out = open(log_file, "ab", buffering=0) if log_file else None
        try:
            # Settings travel on stdin (never in the environment or the command line: they may hold secrets).
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True)
            assert proc.stdin is not None
            # Only what was set: the model preset fills the unset model fields in the worker too.
            proc.stdin.write(settings.model_dump_json(exclude_unset=True).encode())
            proc.stdin.close()
            code = _follow(engine, settings, run_id, proc, progress, on_progress, staging)
        except BaseException:
            _stop(proc if "proc" in locals() else None)
            raise
        finally:
            if out is not None:
                out.close()
        _reap_group(proc.pid)
        summary = json.loads(result_path.read_text()) if code == 0 and result_path.is_file() else {}
    if code != 0:
        reason = f"label job: {_exit_reason(code)}" + (f" (log: {log_file})" if log_file else "")
        runs.fail_run(engine, settings, run_id, reason)  # a no-op when the job already failed the run itself
        run = runs.get_run(engine, settings, run_id)
        raise LabelJobFailed(f"run {run_id}: {run.error or reason}")
    return LabelOutcome(run_id, summary, str(log_file) if log_file else None)


def _follow(engine, settings, run_id: str, proc: subprocess.Popen, progress: bool, on_progress, staging) -> int:
    bar = None
    seen = -1
    try:
        while True:
            code = proc.poll()
            try:
                now = staging.progress(engine, settings, run_id)
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
                    bar.set_postfix(items=_items_done(now), errors=now["errors"], refresh=True)
                if on_progress is not None:
                    on_progress(now, proc.pid if code is None else None)
            if code is not None:
                return code
            time.sleep(POLL_S)
    finally:
        if bar is not None:
            bar.close()


def _items_done(progress: dict[str, int]) -> int:
    return progress.get("verdicts", 0)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the label worker was killed by {name}; finished chunks are kept, rerun to resume"
    return f"the label worker exited with code {code}"


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


# --- validate -----------------------------------------------------------------------------------------


def validate(engine: Engine, settings: Settings, run_id: str) -> ValidationReport:
    """The quality gate on the run's staged verdicts, against its own policy versions and item count.

    Pass: the run becomes validated. Fail: it is quarantined (publish refuses it) and QualityGateFailed
    carries the readable summary; the full result is saved (validation_report) and on the run row.
    A run validated or published before gets its stored result back (its staging may be purged).
    """
    from safeguard_flow.pipeline.expectations import QualityGateFailed, ValidationReport, trailing_rates, validate_frame
    from safeguard_flow.pipeline.validation_report import save_report
    from safeguard_flow.warehouse import policy_store, staging

    run = _resume_if_failed(engine, settings, runs.get_run(engine, settings, run_id))
    if run.status in (RunStatus.VALIDATED, RunStatus.PUBLISHED):
        stored = run.validation or {}
        summary = stored.get("summary") or f"run {run_id} was already validated"
        return ValidationReport(run_id, True, summary, stored, rows=int(run.verdicts or 0), path=stored.get("report_path"))
    if run.status is not RunStatus.LABELLED:
        raise RunStateError(f"run {run_id!r} is {run.status.value}: the quality gate needs a labelled run")
    with failing(engine, settings, run_id, "validate"):
        policies = policy_store.get_policies(engine, settings, run.policy_refs)
        frame = staging.staged_frame(engine, settings, run_id)
        # The drift check compares each policy version with its own earlier published verdicts.
        trailing = trailing_rates(engine, settings, policies, exclude_run_id=run_id)
        report = validate_frame(frame, policies, settings.quality, run_id=run_id, expected_items=run.items,
                                trailing=trailing)
        report.path = str(save_report(settings, report))
        validation = {**report.result, "summary": report.summary, "report_path": report.path}
        if report.success:
            runs.transition(engine, settings, run_id, RunStatus.VALIDATED, validation=validation, validated_at=_now())
        else:
            runs.transition(engine, settings, run_id, RunStatus.QUARANTINED, validation=validation, error=report.summary)
    if not report.success:
        raise QualityGateFailed(report)
    return report


# --- publish ------------------------------------------------------------------------------------------


def publish(engine: Engine, settings: Settings, run_id: str) -> dict[str, Any]:
    """Merge the validated run's verdicts into the verdict table (one transaction) and record it.
    A run published before returns its recorded counts (nothing is merged twice)."""
    from safeguard_flow.warehouse import publish as publish_mod

    run = runs.get_run(engine, settings, run_id)
    if run.status is RunStatus.PUBLISHED:
        return {"run_id": run_id, "already_published": True,
                **{k: getattr(run, k) for k in ("verdicts", "inserted", "updated", "unchanged", "errors", "positives")}}
    # Not marked failed when it raises: the merge is one transaction, so the run is still validated
    # and publishing again (a task retry) is all it takes.
    return publish_mod.publish_run(engine, settings, run_id)


# --- the whole pipeline -------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    run: Run
    labelled: LabelOutcome | None = None
    report: Any = None  # ValidationReport
    published: dict[str, Any] | None = None
    nothing_to_do: bool = False  # the run was published before: nothing was labelled


def finish(engine: Engine, settings: Settings, run_id: str, **label_kw: Any) -> PipelineResult:
    """Label, validate and publish an extracted run (each step skips what is done already)."""
    labelled = label(engine, settings, run_id, **label_kw)
    report = validate(engine, settings, run_id)
    published = publish(engine, settings, run_id)
    return PipelineResult(runs.get_run(engine, settings, run_id), labelled, report, published)


def run_interval(engine: Engine, settings: Settings, start: dt.datetime, end: dt.datetime, *, kind: str = "nightly",
                 params: dict[str, Any] | None = None, **label_kw: Any) -> PipelineResult:
    """The nightly pipeline for one data interval, end to end (what safeguard_nightly does)."""
    run = start_interval_run(engine, settings, start, end, kind=kind, params=params)
    return _rest(engine, settings, run, label_kw)


def run_relabel(engine: Engine, settings: Settings, policy: str, version: int | None = None, *,
                since: dt.datetime | None = None, limit: int | None = None, trigger_id: str | None = None,
                **label_kw: Any) -> PipelineResult:
    """Relabel one policy version over the content in scope, end to end (what safeguard_relabel does)."""
    run = start_relabel_run(engine, settings, policy, version, since=since, limit=limit,
                            trigger_id=trigger_id or cli_relabel_trigger(since, limit))
    return _rest(engine, settings, run, label_kw)


def _rest(engine: Engine, settings: Settings, run: Run, label_kw: dict[str, Any]) -> PipelineResult:
    if run.status is RunStatus.PUBLISHED:
        return PipelineResult(run, nothing_to_do=True)  # published before, or nothing new to label
    return finish(engine, settings, run.id, **label_kw)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
