"""Extract, the first step: create the run (by the run rules) and write its work list.

- **A published run** is left as it is: rerunning it labels nothing.
- **A quarantined run** is started afresh (the fix is usually a policy or threshold change, and
  nothing of it was published); **a failed run** resumes at the step that failed.
- **An empty work list** closes the run as published at once, so it never shows as pending.

The SQL (what is new in an interval, what a relabel covers) is the warehouse's (warehouse/extract.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any, Callable

from safeguard_flow.pipeline.run_rules import PipelineError, failing, interval_run_id, relabel_run_id, resume_if_failed
from safeguard_flow.warehouse import extract as work_list
from safeguard_flow.warehouse import policy_store, run_gates, runs
from safeguard_flow.warehouse.db import utcnow, write_tx
from safeguard_flow.warehouse.runs import Run, RunStatus

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)


def start_interval_run(sql_engine: Engine, settings: Settings, start: dt.datetime, end: dt.datetime, *,
                       kind: str = "nightly", params: dict[str, Any] | None = None) -> Run:
    """The interval's run against the active version of every policy (and each shadow version beside
    it), with its work list extracted."""
    policies = policy_store.run_policies(sql_engine, settings)
    if not policies:
        raise PipelineError("no policies are published in the warehouse: run `safeguard-flow policies publish DIR` "
                            "(or the safeguard_policy_sync DAG) first")
    refs = [(p.name, int(p.version)) for p in policies]
    run_id = interval_run_id(kind, start, end, refs)
    runs.create_run(sql_engine, settings, kind, policies, interval_start=start, interval_end=end, params=params,
                    run_id=run_id)
    run_id = _retry_of_quarantined(sql_engine, settings, run_id, kind, start, end, params)
    return extract_run(sql_engine, settings, run_id,
                       lambda: work_list.extract_interval(sql_engine, settings, run_id, start, end))


def _retry_of_quarantined(sql_engine: Engine, settings: Settings, run_id: str, kind: str, start: dt.datetime,
                          end: dt.datetime, params: dict[str, Any] | None) -> str:
    """The run to carry on with: `run_id`, or, when it was published with some policy versions
    quarantined by the gate, a run of the interval for those versions only (the rerun relabels
    nothing that was published). Its id comes from the same rule (kind, interval, versions), so
    rerunning again continues it; the quarantined versions' gate rows name it."""
    while True:
        run = runs.get_run(sql_engine, settings, run_id)
        if run.status is not RunStatus.PUBLISHED:
            return run_id
        quarantined = [g.ref for g in run_gates.gates(sql_engine, settings, run_id) if not g.passed]
        if not quarantined:
            return run_id
        retry_id = interval_run_id(kind, start, end, quarantined)
        policies = policy_store.get_policies(sql_engine, settings, quarantined)
        runs.create_run(sql_engine, settings, kind, policies, interval_start=start, interval_end=end,
                        params={**(params or {}), "retry_of": run_id}, run_id=retry_id)
        with write_tx(sql_engine) as conn:
            run_gates.set_retry(conn, settings, run_id, quarantined, retry_id)
        log.warning("run %s was published with %s quarantined: run %s relabels only those", run_id,
                    ", ".join(f"{n} v{v}" for n, v in quarantined), retry_id)
        run_id = retry_id


def start_relabel_run(sql_engine: Engine, settings: Settings, policy: str, version: int | None = None, *,
                      trigger_id: str, since: dt.datetime | None = None, limit: int | None = None,
                      params: dict[str, Any] | None = None) -> Run:
    """A relabel run of `policy` at `version` (default: its active one) over the content in scope that
    has no verdict for that version yet, with its work list extracted."""
    if version is None:
        active = {p.name: int(p.version) for p in policy_store.get_policies(sql_engine, settings)}
        if policy not in active:
            raise PipelineError(f"policy {policy!r} is not published (published: {', '.join(sorted(active)) or 'none'})")
        version = active[policy]
    found = policy_store.get_policies(sql_engine, settings, [(policy, int(version))])[0]  # raises if unknown
    run_id = relabel_run_id(trigger_id, policy, int(version))
    runs.create_run(sql_engine, settings, "relabel", [found], params={
        **(params or {}), "since": since.isoformat() if since else None, "limit": limit}, run_id=run_id)
    return extract_run(sql_engine, settings, run_id, lambda: work_list.extract_relabel(
        sql_engine, settings, run_id, policy, int(version), since=since, limit=limit))


def extract_run(sql_engine: Engine, settings: Settings, run_id: str, extract_fn: Callable[[], int]) -> Run:
    """Apply the run rules, then write its work list with `extract_fn` if it has none yet.

    Returns the run: published already (nothing to do), closed as published because nothing is new,
    or extracted and waiting for the label step.
    """
    run = runs.get_run(sql_engine, settings, run_id)
    if run.status is RunStatus.PUBLISHED:
        log.info("run %s is already published: nothing to do (same rows, no duplicates)", run_id)
        return run
    if run.status is RunStatus.QUARANTINED:
        log.warning("run %s was quarantined: starting it afresh (its staged verdicts are dropped; nothing of it "
                    "was published)", run_id)
        run = runs.reset_run(sql_engine, settings, run_id)
    run = resume_if_failed(sql_engine, settings, run)
    if not run.extracted:
        with failing(sql_engine, settings, run_id, "extract"):
            extract_fn()
        run = runs.get_run(sql_engine, settings, run_id)
    if run.status is RunStatus.EXTRACTED and run.empty:
        run = close_empty(sql_engine, settings, run_id)
        log.info("run %s: nothing new to label; closed as published with 0 verdicts", run_id)
    return run


def close_empty(sql_engine: Engine, settings: Settings, run_id: str) -> Run:
    """An extracted run with nothing to label: published with zero counts (the gate has nothing to judge)."""
    zero = dict.fromkeys(("verdicts", "errors", "positives", "inserted", "updated", "unchanged", "prompt_tokens",
                          "completion_tokens"), 0)
    return runs.transition(sql_engine, settings, run_id, RunStatus.PUBLISHED, published_at=utcnow(), **zero,
                           validation={"success": True, "summary": "nothing to label: no verdicts to validate"})
