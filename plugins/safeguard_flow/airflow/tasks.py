"""The tasks the DAGs are built from: extract -> label -> validate -> publish, and the policy sync.

Each task is thin: it gets the warehouse from :class:`SafeguardWarehouseHook` and calls the library
(warehouse.*, quality, raylib). What passes between tasks is a small "run" dict in XCom::

    {"run_id": "nightly-20250101T000000-20250102T000000-3f2a9c1d", "items": 120, "policies": [["spam", 2]]}

Warehouse run ids are derived from the DAG run, so a rerun of the same interval (a retry, a cleared
run, a backfill over it) continues the same warehouse run: same rows, never duplicates. A run the
gate quarantined is started afresh when its DAG run is cleared (the fix is usually a policy or
threshold change, and nothing from it was published).
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import date, datetime, timezone
from contextlib import contextmanager
from typing import Any, Iterator

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from safeguard_flow.airflow.assets import (
    changed_policies_from_events,
    policy_asset,
    policy_change_extra,
    policy_changes_alias,
    verdicts_asset,
)
from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook
from safeguard_flow.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = SafeguardWarehouseHook.default_conn_name
RETRY_FRESH_STATUSES = ("quarantined", "failed")


# --- run ids ----------------------------------------------------------------------------------------


def interval_run_id(kind: str, start: datetime, end: datetime, refs: list[tuple[str, int]]) -> str:
    """Same interval and policy versions -> same id. A new active version labels the interval anew."""
    digest = hashlib.sha256(repr(sorted(refs)).encode()).hexdigest()[:8]
    return f"{kind}-{_stamp(start)}-{_stamp(end)}-{digest}"


def relabel_run_id(dag_run_id: str, policy: str, version: int) -> str:
    """One warehouse run per (DAG run, policy version); clearing the DAG run continues it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run_id)[:120]
    return f"relabel-{policy.replace('/', '_')}-v{version}-{safe}"


def _stamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")


@contextmanager
def _warehouse(conn_id: str) -> Iterator[tuple[Any, Any]]:
    """(engine, settings) of the warehouse connection, disposed when the task is done with it."""
    hook = SafeguardWarehouseHook(safeguard_conn_id=conn_id)
    try:
        yield hook.get_engine(), hook.settings
    finally:
        hook.close()


def _run_info(engine, settings, run_id: str, items: int) -> dict[str, Any]:
    from safeguard_flow.warehouse import runs

    run = runs.get_run(engine, settings, run_id)
    return {"run_id": run_id, "items": int(items), "policies": [list(r) for r in run["policy_refs"]]}


def _has_work(engine, settings, run_id: str, extract_fn) -> int | None:
    """Extract the run's work list; None when there is nothing to label (the run is then closed).

    A run published before (a rerun of the same interval or DAG run) is left as it is; a run with no
    work is published empty at once, so it never shows as pending.
    """
    from safeguard_flow.warehouse import publish, runs

    if runs.get_run(engine, settings, run_id)["status"] == "published":
        log.info("run %s is already published: nothing to do (same rows, no duplicates)", run_id)
        return None
    _fresh_if_failed(engine, settings, run_id)
    items = extract_fn()
    if items == 0:
        publish.publish_run(engine, settings, run_id)
        log.info("run %s: nothing new to label; closed as published with 0 verdicts", run_id)
        return None
    return items


def _fresh_if_failed(engine, settings, run_id: str) -> None:
    from safeguard_flow.warehouse import runs

    status = runs.get_run(engine, settings, run_id)["status"]
    if status in RETRY_FRESH_STATUSES:
        log.warning("run %s was %s: starting it afresh (its staged verdicts are dropped; nothing was published)", run_id, status)
        runs.reset_run(engine, settings, run_id)


# --- extract ----------------------------------------------------------------------------------------


@task.short_circuit(task_id="extract")
def extract_interval(safeguard_conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Create the interval's run against the active version of every policy and write its work list.

    Returns the run (its id also as XCom "run_id", for the label operator), or {} when there is
    nothing to label, which skips the rest of the DAG run.
    """
    from safeguard_flow.warehouse import extract, policy_store, runs

    ctx = get_current_context()
    start, end = ctx.get("data_interval_start"), ctx.get("data_interval_end")
    if start is None or end is None or not start < end:
        raise AirflowFailException(f"this DAG run has no data interval ({start} - {end}); trigger it with a logical date")
    with _warehouse(safeguard_conn_id) as (engine, settings):
        policies = policy_store.get_policies(engine, settings)
        if not policies:
            raise AirflowFailException(
                "no policies are published in the warehouse: run the safeguard_policy_sync DAG or "
                "`safeguard-flow policies publish DIR` first"
            )
        dag_run = ctx["dag_run"]
        run_type = getattr(dag_run, "run_type", None)
        kind = "backfill" if getattr(run_type, "value", run_type) == "backfill" else "nightly"
        refs = [(p.name, int(p.version)) for p in policies]
        run_id = interval_run_id(kind, start, end, refs)
        runs.create_run(engine, settings, kind, policies, interval_start=start, interval_end=end,
                        params={"dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id}, run_id=run_id)
        items = _has_work(engine, settings, run_id, lambda: extract.extract_interval(engine, settings, run_id, start, end))
        if items is None:
            return {}
        log.info("run %s: %d item(s) to label in [%s, %s) against %s", run_id, items, start, end,
                 ", ".join(f"{n} v{v}" for n, v in refs))
        ctx["ti"].xcom_push(key="run_id", value=run_id)
        return _run_info(engine, settings, run_id, items)


RELABEL_PARAMS = {
    "policy": Param(None, type=["null", "string"], description="Policy to relabel (default: the policies whose change triggered this run)."),
    "version": Param(None, type=["null", "integer"], minimum=1, description="Policy version (default: the triggering event's, else the active one)."),
    "scope": Param("all", enum=["all", "since"], description="'all' content in the sources, or only content updated 'since' a date."),
    "since": Param(None, type=["null", "string"], format="date", description="YYYY-MM-DD; required when scope is 'since'."),
    "limit": Param(None, type=["null", "integer"], minimum=1, description="At most this many items per policy (a sample)."),
}


def relabel_targets(params: dict[str, Any], events: Any, active: dict[str, int]) -> dict[str, int]:
    """{policy: version} to relabel, from params (a manual run) or the triggering policy events."""
    policy, version = params.get("policy"), params.get("version")
    if version is not None and not policy:
        raise ValueError("params.version needs params.policy")
    if policy:
        if version is None:
            if policy not in active:
                raise ValueError(f"params.policy {policy!r} is not published (published: {', '.join(sorted(active)) or 'none'})")
            version = active[policy]
        return {policy: int(version)}
    targets = changed_policies_from_events(events or {})
    if not targets:
        raise ValueError("nothing to relabel: no policy change triggered this run; trigger it with params.policy")
    return targets


def relabel_scope(params: dict[str, Any]) -> tuple[datetime | None, int | None]:
    scope, since = params.get("scope") or "all", params.get("since")
    if scope == "since":
        if not since:
            raise ValueError("params.since (YYYY-MM-DD) is required when params.scope is 'since'")
        day = date.fromisoformat(str(since))
        return datetime(day.year, day.month, day.day, tzinfo=timezone.utc), params.get("limit")
    if since:
        raise ValueError("params.since is only used with params.scope = 'since'")
    return None, params.get("limit")


@task(task_id="extract")
def extract_relabel(safeguard_conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """One run per policy version to relabel; each run's work list is the content in scope without
    a verdict for that version. Verdicts of older versions are kept (the flips view compares them).
    Runs with nothing to label are closed here and left out (no list: the mapped tasks skip)."""
    from safeguard_flow.warehouse import extract, policy_store, runs

    ctx = get_current_context()
    params = dict(ctx["params"])
    with _warehouse(safeguard_conn_id) as (engine, settings):
        active = {p.name: int(p.version) for p in policy_store.get_policies(engine, settings)}
        try:
            targets = relabel_targets(params, ctx.get("triggering_asset_events"), active)
            since, limit = relabel_scope(params)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        dag_run = ctx["dag_run"]
        out = []
        for name, version in sorted(targets.items()):
            policy = policy_store.get_policies(engine, settings, [(name, version)])[0]  # raises if unknown
            run_id = relabel_run_id(dag_run.run_id, name, version)
            runs.create_run(engine, settings, "relabel", [policy], params={
                "dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id, "scope": params.get("scope") or "all",
                "since": since.isoformat() if since else None, "limit": limit,
            }, run_id=run_id)
            items = _has_work(engine, settings, run_id, lambda: extract.extract_relabel(
                engine, settings, run_id, name, version, since=since, limit=limit))
            if items is not None:
                log.info("run %s: %d item(s) to relabel with %s v%d", run_id, items, name, version)
                out.append(_run_info(engine, settings, run_id, items))
        return out


# --- policy change: eval, diff report, gate (safeguard_flow.policy_change) -------------------------------


def _targets(engine, settings, ctx) -> dict[str, int]:
    from safeguard_flow.warehouse import policy_store

    active = {p.name: int(p.version) for p in policy_store.get_policies(engine, settings)}
    try:
        return relabel_targets(dict(ctx["params"]), ctx.get("triggering_asset_events"), active)
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None


@task(task_id="evaluate")
def evaluate_versions(safeguard_conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """Evaluate each changed version (and the promoted one, if not yet) on its policy's eval dataset
    (settings evals.policies), with the configured engine in this worker. Policies without one are skipped."""
    from safeguard_flow.policy_change import evaluate_version

    ctx = get_current_context()
    with _warehouse(safeguard_conn_id) as (engine, settings):
        out = []
        for name, version in sorted(_targets(engine, settings, ctx).items()):
            out += evaluate_version(engine, settings, name, version)
        for e in out:
            log.info("eval %s: %s v%s F1 %.3f, report %s", e["eval_id"], e["policy"], e["version"], e["f1"], e["report"])
        return out


@task(task_id="review", trigger_rule="none_failed")
def review_versions(evaluated: list[dict[str, Any]], safeguard_conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """Once the new versions labelled their scope: the diff report per version, the promotion gate for
    shadow versions, and the promotion itself only with policy_gate.auto_promote."""
    from safeguard_flow.policy_change import review_version

    ctx = get_current_context()
    actor = f"airflow:{ctx['dag_run'].dag_id}/{ctx['dag_run'].run_id}"
    with _warehouse(safeguard_conn_id) as (engine, settings):
        out = [review_version(engine, settings, name, version, actor)
               for name, version in sorted(_targets(engine, settings, ctx).items())]
        for r in out:
            log.info("policy %s v%s: %s", r["policy"], r["version"], r)
        return out


# --- label ------------------------------------------------------------------------------------------


@task(task_id="label")
def label_in_process(run: dict[str, Any]) -> dict[str, Any]:
    """Label the run's pending chunks inside this worker (local/dev): raylib with a local Ray."""
    from safeguard_flow.raylib import run_label_job

    if not run["items"]:
        log.info("run %s: nothing to label", run["run_id"])
        return {"run_id": run["run_id"], "verdicts": 0}
    hook = SafeguardWarehouseHook(safeguard_conn_id=DEFAULT_CONN_ID)
    summary = run_label_job(hook.settings, run["run_id"])
    log.info("%s", summary.format())
    return summary.to_dict()


def label(run, *, mapped: bool = False, **operator_kwargs: Any) -> Any:
    """The label step: a Ray job (deferrable operator), or in-process when ``ray.label_mode`` says so."""
    settings = get_settings()
    if settings.ray.label_mode == "in_process":
        return label_in_process.expand(run=run) if mapped else label_in_process(run)
    from safeguard_flow.airflow.ray_operator import RayLabelJobOperator

    if mapped:
        return RayLabelJobOperator.partial(task_id="label", **operator_kwargs).expand(run_id=run.map(_run_id))
    return RayLabelJobOperator(task_id="label", run_id=run["run_id"], **operator_kwargs)


def _run_id(run: dict[str, Any]) -> str:
    return run["run_id"]


# --- validate ---------------------------------------------------------------------------------------


@task(task_id="validate", retries=0)
def validate(run: dict[str, Any], safeguard_conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """The Great Expectations gate. Failing quarantines the run and fails the task (no retries)."""
    from safeguard_flow.quality import QualityGateFailed, enforce_gate

    with _warehouse(safeguard_conn_id) as (engine, settings):
        try:
            report = enforce_gate(engine, settings, run["run_id"])
        except QualityGateFailed as exc:
            log.error("%s\nfull validation result: %s", exc.report.summary, exc.report.path)
            raise AirflowFailException(exc.report.summary) from None
        log.info("%s\nfull validation result: %s", report.summary, report.path)
        return {"run_id": run["run_id"], "success": True, "checks": len(report.checks), "report": report.path}


# --- publish ----------------------------------------------------------------------------------------


@task(task_id="publish", outlets=[verdicts_asset(get_settings())])
def publish(run: dict[str, Any], safeguard_conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Merge the staged verdicts in one transaction (idempotent); an event on the verdict table asset."""
    from safeguard_flow.warehouse import publish as warehouse_publish

    with _warehouse(safeguard_conn_id) as (engine, settings):
        counts = warehouse_publish.publish_run(engine, settings, run["run_id"])
        log.info("published run %s: %s", run["run_id"], counts)
        extra = {k: counts.get(k) for k in ("run_id", "inserted", "updated", "unchanged", "errors", "positives")}
        extra["policies"] = run["policies"]
        get_current_context()["outlet_events"][verdicts_asset(get_settings())].extra = extra
        return {k: v for k, v in counts.items() if isinstance(v, (int, float, str)) or v is None}


# --- policy sync ------------------------------------------------------------------------------------


@task(task_id="publish_policies", inlets=[policy_changes_alias()], outlets=[policy_changes_alias()])
def sync_policies(safeguard_conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """Store changed policy files as new versions, then announce every policy whose current version
    has no asset event yet: changed ones, and versions published meanwhile by the CLI."""
    from safeguard_flow.policies import load_policy_set
    from safeguard_flow.warehouse import policy_store

    ctx = get_current_context()
    with _warehouse(safeguard_conn_id) as (engine, settings):
        directory = ctx["params"].get("directory") or settings.policies_dir
        policies = load_policy_set(directory)
        author = f"airflow:{ctx['dag_run'].dag_id}/{ctx['dag_run'].run_id}"
        results = policy_store.publish_policies(engine, settings, policies, author=author)
        announced = {(e.extra.get("policy"), e.extra.get("version")) for e in ctx["inlet_events"][policy_changes_alias()]}
        alias = ctx["outlet_events"][policy_changes_alias()]
        out = []
        for result in results:
            extra = policy_change_extra(result)
            announce = result.changed or (result.policy.name, int(result.version)) not in announced
            if announce:
                alias.add(policy_asset(result.policy.name), extra=extra)
            log.info("policy %s: v%s%s%s", result.policy.name, result.version, " (new version)" if result.created else "",
                     " -> asset event" if announce else "")
            out.append({**extra, "changed": bool(result.changed), "announced": announce})
        return out
