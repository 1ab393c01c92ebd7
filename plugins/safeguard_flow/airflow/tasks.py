"""The tasks the DAGs are built from: extract -> label -> validate -> publish, and the policy sync.

Each task is thin: it gets the warehouse from :class:`SafeguardWarehouseHook` and calls the core
pipeline (safeguard_flow.pipeline), which holds the rules: run ids, reruns, quarantined and failed
runs, empty intervals. What passes between tasks in XCom is the warehouse run id; each task reads
the run (a ``runs.Run``) from the warehouse. Nothing here reads the warehouse connection when a DAG
file is parsed: the label mode and the verdict asset's URI come from the task's settings when it runs.
Only each step's execution_timeout (deadlines.*) is read then, from the environment and SAFEGUARD_CONFIG.

Warehouse run ids are derived from the DAG run, so a rerun of the same interval (a retry, a cleared
run, a backfill over it) continues the same warehouse run: same rows, never duplicates.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from safeguard_flow.airflow.assets import (
    changed_policies_from_events,
    policy_asset,
    policy_change_extra,
    policy_changes_alias,
    verdicts_alias,
    verdicts_asset,
)
from safeguard_flow.airflow import lineage  # extract and publish report OpenLineage datasets
from safeguard_flow.airflow.ray_operator import step_timeout  # deadlines.* (read at parse: environment only)
from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = SafeguardWarehouseHook.default_conn_name


@contextmanager
def _warehouse(conn_id: str) -> Iterator[tuple[Any, Any]]:
    """(engine, settings) of the warehouse connection, disposed when the task is done with it."""
    hook = SafeguardWarehouseHook(safeguard_conn_id=conn_id)
    try:
        yield hook.get_engine(), hook.settings
    finally:
        hook.close()


# --- extract ----------------------------------------------------------------------------------------


@lineage.extract_task(short_circuit=True, task_id="extract", execution_timeout=step_timeout("extract"))
def extract_interval(safeguard_conn_id: str = DEFAULT_CONN_ID) -> str | None:
    """Create the interval's run against the active version of every policy and write its work list.

    Returns the run id (also as XCom "run_id", for the label operator), or None when there is
    nothing to label, which skips the rest of the DAG run.
    """
    from safeguard_flow import pipeline

    ctx = get_current_context()
    start, end = ctx.get("data_interval_start"), ctx.get("data_interval_end")
    if start is None or end is None or not start < end:
        raise AirflowFailException(f"this DAG run has no data interval ({start} - {end}); trigger it with a logical date")
    dag_run = ctx["dag_run"]
    run_type = getattr(dag_run, "run_type", None)
    kind = "backfill" if getattr(run_type, "value", run_type) == "backfill" else "nightly"
    with _warehouse(safeguard_conn_id) as (engine, settings):
        try:
            run = pipeline.start_interval_run(engine, settings, start, end, kind=kind,
                                              params={"dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id})
        except pipeline.PipelineError as exc:
            raise AirflowFailException(str(exc)) from None
        if not pipeline.needs_work(run):
            return None
        log.info("run %s: %d item(s) to label in [%s, %s) against %s", run.id, run.items or 0, start, end, run.label())
        ctx["ti"].xcom_push(key="run_id", value=run.id)
        return run.id


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


@lineage.extract_task(task_id="extract", execution_timeout=step_timeout("extract"))
def extract_relabel(safeguard_conn_id: str = DEFAULT_CONN_ID) -> list[str]:
    """One run per policy version to relabel; each run's work list is the content in scope without
    a verdict for that version. Verdicts of older versions are kept (the flips view compares them).
    Runs with nothing to label are closed here and left out (no list: the mapped tasks skip)."""
    from safeguard_flow import pipeline
    from safeguard_flow.warehouse import policy_store

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
            run = pipeline.start_relabel_run(
                engine, settings, name, version, trigger_id=dag_run.run_id, since=since, limit=limit,
                params={"dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id, "scope": params.get("scope") or "all"})
            if pipeline.needs_work(run):
                log.info("run %s: %d item(s) to relabel with %s v%d", run.id, run.items or 0, name, version)
                out.append(run.id)
        return out


# --- policy change: eval, diff report, gate (safeguard_flow.policy_quality.policy_change) -------------------------------


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
    from safeguard_flow.policy_quality.policy_change import evaluate_version

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
    from safeguard_flow.policy_quality.policy_change import review_version

    ctx = get_current_context()
    actor = f"airflow:{ctx['dag_run'].dag_id}/{ctx['dag_run'].run_id}"
    with _warehouse(safeguard_conn_id) as (engine, settings):
        out = [review_version(engine, settings, name, version, actor)
               for name, version in sorted(_targets(engine, settings, ctx).items())]
        for r in out:
            log.info("policy %s v%s: %s", r["policy"], r["version"], r)
        return out


# --- promotion with a person in the loop (policy_quality.promotion_gate) ------------------------------

APPROVAL_TIMEOUT = timedelta(days=3)  # unanswered: rejected (the version stays in shadow), so the next relabel can run


class PromotionApproval(ApprovalOperator):
    """Airflow's own approval task for the shadow versions the review task left awaiting promotion
    (policy_gate.auto_promote off): the subject, the figures and the diff page link are read when the
    task runs; Approve promotes, Reject leaves them in shadow; either is logged in the promotion log
    with the person who answered as actor. Skipped when nothing awaits (or auto_promote is on)."""

    def __init__(self, *, review_task_id: str = "review", safeguard_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any):
        kwargs.setdefault("response_timeout", APPROVAL_TIMEOUT)
        kwargs.setdefault("defaults", ApprovalOperator.REJECT)
        super().__init__(subject="Promote the reviewed policy versions?", **kwargs)
        self.review_task_id = review_task_id
        self.safeguard_conn_id = safeguard_conn_id

    def _request(self, context: Any) -> Any:
        from airflow.configuration import conf
        from safeguard_flow.policy_quality.promotion_gate import approval_request

        summaries = context["ti"].xcom_pull(task_ids=self.review_task_id) or []
        with _warehouse(self.safeguard_conn_id) as (engine, settings):
            if settings.policy_gate.auto_promote:
                return None
            return approval_request(engine, settings, summaries, conf.get("api", "base_url", fallback=""))

    def execute(self, context: Any) -> Any:
        request = self._request(context)
        if request is None:
            raise AirflowSkipException("no shadow version awaits a promotion decision")
        self.subject, self.body = request.subject, request.body
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from safeguard_flow.policy_quality.promotion_gate import awaiting_approval, decide_promotions

        answer = super().execute_complete(context=context, event=event)
        user = answer.get("responded_by_user") or {}
        approver = user.get("name") or user.get("id") or "airflow:timeout"
        approved = list(answer["chosen_options"]) == [self.APPROVE]
        dag_run = context["dag_run"]
        candidates = awaiting_approval(context["ti"].xcom_pull(task_ids=self.review_task_id) or [])
        with _warehouse(self.safeguard_conn_id) as (engine, settings):
            decided = decide_promotions(engine, settings, candidates, approved=approved, approver=approver,
                                        where=f"Airflow {dag_run.dag_id}/{dag_run.run_id}")
        for d in decided:
            log.info("policy %s v%s: %s by %s", d["policy"], d["version"], d["outcome"], approver)
        return {**answer, "decisions": decided}


def approve_promotion(**kwargs: Any) -> PromotionApproval:
    return PromotionApproval(task_id="approve_promotion", **kwargs)


# --- label ------------------------------------------------------------------------------------------


def label(run, *, mapped: bool = False, **operator_kwargs: Any) -> Any:
    """The label step: a Ray job (deferrable) or in-process, as ``ray.label_mode`` says when the task
    runs; in the ``safeguard_label`` pool so a backfill never starts more label jobs than it has slots.
    `run` is the extract task's output: a run id, or (mapped) a list of run ids."""
    from safeguard_flow.airflow.label_operator import LabelOperator
    from safeguard_flow.airflow.pools import LABEL_POOL

    operator_kwargs.setdefault("pool", LABEL_POOL)
    operator_kwargs.setdefault("execution_timeout", step_timeout("label"))  # .partial() skips the operator's __init__
    if mapped:
        return LabelOperator.partial(task_id="label", **operator_kwargs).expand(run_id=run)
    return LabelOperator(task_id="label", run_id=run, **operator_kwargs)


# --- validate ---------------------------------------------------------------------------------------


@task(task_id="validate", retries=0, execution_timeout=step_timeout("validate"))
def validate(run: str, safeguard_conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """The Great Expectations gate. Failing quarantines the run and fails the task (no retries)."""
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline.expectations import QualityGateFailed

    with _warehouse(safeguard_conn_id) as (engine, settings):
        try:
            report = pipeline.validate_run(engine, settings, run)
        except QualityGateFailed as exc:
            log.error("%s\nfull validation result: %s", exc.report.summary, exc.report.path)
            raise AirflowFailException(exc.report.summary) from None
        # Some policy versions quarantined: the run is published without them (a warning in the log).
        log.log(logging.WARNING if report.partial else logging.INFO, "%s\nfull validation result: %s",
                report.summary, report.path)
        return {"run_id": run, "success": True, "checks": len(report.checks), "report": report.path,
                "quarantined": [v.key for v in report.quarantined]}


# --- publish ----------------------------------------------------------------------------------------


@lineage.publish_task(task_id="publish", outlets=[verdicts_alias()], execution_timeout=step_timeout("publish"))
def publish(run: str, safeguard_conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Merge the staged verdicts in one transaction (idempotent); an event on the verdict table asset,
    named from the settings publish wrote with (through the alias: nothing is resolved at parse time)."""
    from safeguard_flow import pipeline
    from safeguard_flow.warehouse import runs

    with _warehouse(safeguard_conn_id) as (engine, settings):
        counts = pipeline.publish_run(engine, settings, run)
        log.info("published run %s: %s", run, counts)
        extra = {k: counts.get(k) for k in ("inserted", "updated", "unchanged", "errors", "positives")}
        extra["run_id"] = run
        extra["policies"] = [list(r) for r in runs.get_run(engine, settings, run).policy_refs]
        get_current_context()["outlet_events"][verdicts_alias()].add(verdicts_asset(settings), extra=extra)
        if counts.get("quarantined"):
            log.warning("run %s: quarantined, not published: %s", run, ", ".join(counts["quarantined"]))
        _retention(engine, settings)
        return {k: v for k, v in counts.items() if isinstance(v, (int, float, str)) or v is None}


def _retention(engine, settings) -> None:
    """The retention pass (retention.* settings) after a publish; its failure is logged, never the publish's."""
    from safeguard_flow.warehouse.retention import apply_retention

    try:
        apply_retention(engine, settings)
    except Exception:  # the verdicts are published: a purge can wait for the next night
        log.exception("retention pass failed (the next publish retries it; or run `safeguard-flow retention`)")


# --- policy sync ------------------------------------------------------------------------------------


@task(task_id="publish_policies", inlets=[policy_changes_alias()], outlets=[policy_changes_alias()])
def sync_policies(safeguard_conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """Store changed policy files as new versions, then announce every change not announced yet (from
    this sync or published meanwhile with the CLI), with the version it replaced. Unchanged policies
    and first versions get no event, so no relabel run is started for them."""
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse import policy_store

    ctx = get_current_context()
    with _warehouse(safeguard_conn_id) as (engine, settings):
        directory = ctx["params"].get("directory") or settings.policies_dir
        policies = load_policy_set(directory)
        author = f"airflow:{ctx['dag_run'].dag_id}/{ctx['dag_run'].run_id}"
        results = policy_store.publish_policies(engine, settings, policies, author=author)
        announced = {e.extra.get("change_id") for e in ctx["inlet_events"][policy_changes_alias()]} - {None}
        pending = {c.name: c for c in policy_store.changes_to_announce(engine, settings, announced)}
        alias = ctx["outlet_events"][policy_changes_alias()]
        for change in pending.values():
            alias.add(policy_asset(change.name), extra=policy_change_extra(change))
        out = []
        for result in results:
            change = pending.get(result.policy.name)
            note = " (new version)" if result.created else ""
            if change is not None:
                note += f" -> asset event (v{change.previous_version} -> v{change.version})"
            elif result.changed and result.previous_version is None:
                note += "; a first version is labelled by the nightly runs (trigger safeguard_relabel with " \
                        f'{{"policy": "{result.policy.name}"}} to label existing content)'
            log.info("policy %s: v%s%s", result.policy.name, result.version, note)
            out.append({"policy": result.policy.name, "version": int(result.version), "created": bool(result.created),
                        "changed": bool(result.changed), "announced": change is not None,
                        "previous_version": change.previous_version if change else result.previous_version})
        for change in pending.values():  # published with the CLI, not among the files synced now
            if change.name not in {r.policy.name for r in results}:
                log.info("policy %s: v%s published elsewhere -> asset event", change.name, change.version)
        return out
