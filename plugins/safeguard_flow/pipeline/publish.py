"""Publish, the last step: merge a validated run's staged verdicts into the verdict table in one
transaction and record it (the merge itself, an upsert per dialect, is warehouse/publish.py).

Only the policy versions the quality gate passed are merged (warehouse/run_gates.py): a run some of
whose versions were quarantined is published with those left out (its warnings say which and why)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safeguard_flow.warehouse import publish as verdict_merge
from safeguard_flow.warehouse import run_gates, runs
from safeguard_flow.warehouse.runs import RunStatus

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings


def publish_run(sql_engine: Engine, settings: Settings, run_id: str) -> dict[str, Any]:
    """Publish the run; a run published before returns its recorded counts (nothing is merged twice).

    Not marked failed when it raises: the merge is one transaction, so the run is still validated and
    publishing again (a task retry) is all it takes. The merge refuses a run that is not validated."""
    run = runs.get_run(sql_engine, settings, run_id)
    if run.status is RunStatus.PUBLISHED:
        return {"run_id": run_id, "already_published": True,
                **{k: getattr(run, k) for k in ("verdicts", "inserted", "updated", "unchanged", "errors", "positives")}}
    gates = run_gates.gates(sql_engine, settings, run_id)
    quarantined = [g.key for g in gates if not g.passed]
    versions = [g.ref for g in gates if g.passed] if quarantined else None  # only what the gate passed
    result = verdict_merge.publish_run(sql_engine, settings, run_id, versions=versions)
    if quarantined:
        result["quarantined"] = quarantined
    # What was published goes to human review by settings.review (never fails the published run).
    from safeguard_flow.review.queue import route_after_publish

    review = route_after_publish(sql_engine, settings, run_id)
    if settings.retention.text_days == 0:  # the content's copies go as soon as the run is published
        from safeguard_flow.warehouse.retention import clear_texts

        clear_texts(sql_engine, settings, run_id)
    return result if review is None else {**result, "review": review}
