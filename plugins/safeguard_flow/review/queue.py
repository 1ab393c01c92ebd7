"""The review queue's actions: route a published run, lease the next item, decide, refresh estimates."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from safeguard_flow.review.estimates import AuditDecision, agreement, production_estimates
from safeguard_flow.review.routing import PublishedVerdict, route
from safeguard_flow.warehouse import review_store as store

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

ORIGINS = ("ui", "labelstudio", "argilla")


def route_run(sql_engine: Engine, settings: Settings, run_id: str) -> dict[str, Any]:
    """Route the run's published verdicts by settings.review (idempotent: an item is queued once);
    returns counts per reason and what was added, then refreshes the estimates of its versions."""
    from safeguard_flow.warehouse import runs
    from safeguard_flow.warehouse.errors import RunStateError

    run = runs.get_run(sql_engine, settings, run_id)  # RunNotFound for an unknown id
    if run.status is not runs.RunStatus.PUBLISHED:
        raise RunStateError(f"run {run_id!r} is {run.status}: only published verdicts are routed to review")
    rules = settings.review
    by_reason: dict[str, int] = {}
    entries: list[dict[str, Any]] = []
    verdicts = seen = 0
    human = store.newest_decisions(sql_engine, settings, {name for name, _ in run.policy_refs})
    for batch in store.run_verdicts(sql_engine, settings, run_id):
        for row in batch:
            verdicts += 1
            v = PublishedVerdict(row.source, row.content_id, row.policy, row.policy_version, row.content_hash,
                                 row.label, row.confidence, row.parse_status, row.decided_by or "model",
                                 row.extra if isinstance(row.extra, dict) else None, row.previous_label,
                                 human.get((row.policy, row.content_hash)))
            r = route(v, rules)
            if not r.reasons:
                continue
            seen += 1
            for reason in r.reasons:
                by_reason[reason] = by_reason.get(reason, 0) + 1
            entries.append({"source": v.source, "content_id": v.content_id, "policy": v.policy,
                            "policy_version": v.policy_version, "content_hash": v.content_hash, "run_id": run_id,
                            "model_label": v.label, "confidence": v.confidence, "parse_status": v.parse_status,
                            "decided_by": v.decided_by, "reason": r.reason, "reasons": list(r.reasons),
                            "priority": r.priority, "audit": r.audit, "sampling_prob": r.sampling_prob,
                            "stratum": r.stratum})
    texts = store.run_texts(sql_engine, settings, run_id,
                            [(e["source"], e["content_id"], e["content_hash"]) for e in entries])
    for e in entries:
        e["text"] = texts.get((e["source"], e["content_id"], e["content_hash"]))
    counts = store.enqueue(sql_engine, settings, entries)
    for policy, version in sorted({(e["policy"], e["policy_version"]) for e in entries}):
        refresh_estimates(sql_engine, settings, policy, version)
    return {"run_id": run_id, "verdicts": verdicts, "routed": seen, "by_reason": by_reason, **counts}


def route_after_publish(sql_engine: Engine, settings: Settings, run_id: str) -> dict[str, Any] | None:
    """Routing as the last step of publish: never fails the published run (`review route RUN_ID` redoes it)."""
    if not settings.review.enabled:
        return None
    try:
        return route_run(sql_engine, settings, run_id)
    except Exception as exc:  # the verdicts are published; routing can be run again by hand
        log.warning("run %s: routing to review failed (%s); run `safeguard-flow review route %s`", run_id, exc, run_id)
        return {"run_id": run_id, "error": str(exc)}


def next_item(sql_engine: Engine, settings: Settings, policy: str, reviewer: str):
    return store.claim_next(sql_engine, settings, policy, reviewer, settings.review.lease_seconds)


def decide(sql_engine: Engine, settings: Settings, item_id: int, reviewer: str, decision: int | None,
           note: str | None = None, origin: str = "ui") -> int:
    """A reviewer's decision (None: skip) on an item they hold the lease of; refreshes the estimates."""
    if decision is not None and decision not in (0, 1):
        raise ValueError(f"decision must be 0, 1 or skip, not {decision!r}")
    decision_id = store.record_decision(sql_engine, settings, reviewer=reviewer, decision=decision, origin=origin,
                                        note=note, item_id=item_id, lease_required=True)
    if decision is not None:
        item = store.get_item(sql_engine, settings, item_id)
        refresh_estimates(sql_engine, settings, item.policy, item.policy_version)
    return decision_id


def estimates_for(sql_engine: Engine, settings: Settings, policy: str, version: int) -> dict[str, Any]:
    agree, n = agreement(store.decided_pairs(sql_engine, settings, policy, version))
    audit = store.audit_sample(sql_engine, settings, policy, version)
    decided = [AuditDecision(a["sampling_prob"], (a["model_label"] or 0) >= 1, a["decision"] >= 1)
               for a in audit if a["decision"] is not None]
    row: dict[str, Any] = {"policy": policy, "policy_version": version, "decisions": n, "agreement": agree,
                           "audit_items": len(audit), "audit_decided": len(decided)}
    for name, ratio in production_estimates(decided).items():
        row.update({name: ratio.value, f"{name}_low": ratio.low, f"{name}_high": ratio.high})
    return row


def refresh_estimates(sql_engine: Engine, settings: Settings, policy: str | None = None,
                      version: int | None = None) -> list[dict[str, Any]]:
    """Recompute sg_review_estimates for one policy version, or for every one with review data."""
    pairs = [(policy, version)] if policy is not None and version is not None else \
        store.policy_versions_with_items(sql_engine, settings)
    rows = [estimates_for(sql_engine, settings, p, v) for p, v in pairs]
    for row in rows:
        store.write_estimates(sql_engine, settings, row)
    return rows


def export_items(sql_engine: Engine, settings: Settings, fmt: str, out, policy: str | None = None,
                 status: str | None = None) -> int:
    """Write queue entries in an exchange format (review/exchange.py). Default: jsonl exports the
    decided entries (a labelled dataset), labelstudio and argilla the open ones (work to do)."""
    from safeguard_flow.review import exchange

    if fmt not in exchange.FORMATS:
        raise ValueError(f"--format {fmt!r}: one of {', '.join(exchange.FORMATS)}")
    status = status or ("decided" if fmt == "jsonl" else "open")
    items = store.queue_items(sql_engine, settings, policy, None if status == "all" else status)
    return exchange.write_export(fmt, items, out)


def import_decisions(sql_engine: Engine, settings: Settings, path) -> dict[str, Any]:
    """Decisions from a Label Studio export or Argilla records; returns counts and the problems."""
    from safeguard_flow.review import exchange

    decisions, problems = exchange.read_import(path)
    touched: set[tuple[str, int]] = set()
    for d in decisions:
        store.record_decision(sql_engine, settings, reviewer=d.reviewer, decision=d.decision, origin=d.origin,
                              note=d.note, item=d.item)
        touched.add((d.item["policy"], d.item["policy_version"]))
    for policy, version in sorted(touched):
        refresh_estimates(sql_engine, settings, policy, version)
    return {"decisions": len(decisions), "problems": problems}
