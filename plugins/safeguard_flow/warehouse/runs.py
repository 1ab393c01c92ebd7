"""Labelling runs: one row per run with its kind, interval, policy versions, status, counts and timings."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.policies import Policy
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import as_utc, utcnow, write_tx
from safeguard_flow.warehouse.errors import RunConflict, RunNotFound, WarehouseError
from safeguard_flow.warehouse.schema import tables

KINDS = ("nightly", "backfill", "relabel", "manual", "eval")
STATUSES = ("created", "extracting", "extracted", "labelling", "labelled", "validated", "quarantined", "published",
            "failed")
# Set by create_run / the warehouse itself, not through update_run.
_PROTECTED = {"id", "kind", "created_at", "updated_at", "policy_refs"}

PolicyRef = tuple[str, int]


def policy_refs(policies: Iterable[Policy | Sequence]) -> list[PolicyRef]:
    refs = []
    for p in policies:
        name, version = (p.name, p.version) if isinstance(p, Policy) else (p[0], p[1])
        if version is None:
            raise WarehouseError(f"policy {name!r} has no version: publish it (policy_store.publish_policies) first")
        refs.append((str(name), int(version)))
    if len({n for n, _ in refs}) != len(refs):
        raise WarehouseError(f"a run labels each policy at one version; got {refs}")
    return sorted(refs)


def create_run(
    engine: Engine,
    settings: Settings,
    kind: str,
    policies: Iterable[Policy | Sequence],
    interval_start: dt.datetime | None = None,
    interval_end: dt.datetime | None = None,
    params: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> str:
    """Record a new run (status 'created') and return its id.

    A given run_id that already exists with the same kind, policies and interval is returned as is,
    so a retried task carries on with the same run; different ones raise RunConflict.
    """
    if kind not in KINDS:
        raise WarehouseError(f"run kind {kind!r} is not one of {', '.join(KINDS)}")
    refs = policy_refs(policies)
    if not refs:
        raise WarehouseError("a run needs at least one policy")
    start, end = as_utc(interval_start), as_utc(interval_end)
    if start and end and not start < end:
        raise WarehouseError(f"run interval is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    run_id = run_id or f"{kind}-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    t = tables(settings).runs
    now = utcnow()
    with write_tx(engine) as conn:
        existing = conn.execute(sa.select(t).where(t.c.id == run_id)).one_or_none()
        if existing is not None:
            same = (existing.kind == kind and _refs(existing.policy_refs) == refs
                    and existing.interval_start == start and existing.interval_end == end)
            if not same:
                raise RunConflict(
                    f"run {run_id!r} exists as kind={existing.kind} policies={_refs(existing.policy_refs)} "
                    f"interval=[{existing.interval_start}, {existing.interval_end}); asked for kind={kind} "
                    f"policies={refs} interval=[{start}, {end}); use another run id or runs.reset_run")
            return run_id
        conn.execute(t.insert().values(
            id=run_id, kind=kind, status="created", interval_start=start, interval_end=end,
            policy_refs=[list(r) for r in refs], params=params or {}, warnings=[], created_at=now, updated_at=now))
    return run_id


def _refs(value: Any) -> list[PolicyRef]:
    return sorted((str(n), int(v)) for n, v in (value or []))


def _row_dict(row: sa.Row) -> dict[str, Any]:
    d = dict(row._mapping)
    d["policy_refs"] = _refs(d.get("policy_refs"))
    d["warnings"] = d.get("warnings") or []
    return d


def get_run(engine: Engine | Connection, settings: Settings, run_id: str) -> dict[str, Any]:
    t = tables(settings).runs
    if isinstance(engine, Connection):
        row = engine.execute(sa.select(t).where(t.c.id == run_id)).one_or_none()
    else:
        with engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == run_id)).one_or_none()
    if row is None:
        raise RunNotFound(f"run {run_id!r} not found in {t.name}")
    return _row_dict(row)


def update_run(engine: Engine | Connection, settings: Settings, run_id: str, /, **fields: Any) -> None:
    """Set columns of the run row (status, counts, timings, model, engine, validation, error, ...)."""
    t = tables(settings).runs
    unknown = sorted(set(fields) - set(t.c.keys()))
    if unknown:
        raise WarehouseError(f"update_run: unknown field(s) {unknown}; run columns are: {', '.join(t.c.keys())}")
    bad = sorted(set(fields) & _PROTECTED)
    if bad:
        raise WarehouseError(f"update_run: field(s) {bad} are set when the run is created and cannot change")
    if "status" in fields and fields["status"] not in STATUSES:
        raise WarehouseError(f"update_run: status {fields['status']!r} is not one of {', '.join(STATUSES)}")
    values = {**fields, "updated_at": utcnow()}
    if isinstance(engine, Connection):
        _update(engine, t, run_id, values)
    else:
        with write_tx(engine) as conn:
            _update(conn, t, run_id, values)


def _update(conn: Connection, t: sa.Table, run_id: str, values: dict[str, Any]) -> None:
    if conn.execute(t.update().where(t.c.id == run_id).values(**values)).rowcount == 0:
        raise RunNotFound(f"run {run_id!r} not found in {t.name}")


def add_warning(conn: Connection, settings: Settings, run_id: str, message: str) -> None:
    t = tables(settings).runs
    warnings = conn.execute(sa.select(t.c.warnings).where(t.c.id == run_id)).scalar_one_or_none() or []
    conn.execute(t.update().where(t.c.id == run_id).values(warnings=[*warnings, message], updated_at=utcnow()))


def list_runs(engine: Engine, settings: Settings, limit: int = 50, kind: str | None = None,
              status: str | None = None) -> list[dict[str, Any]]:
    t = tables(settings).runs
    q = sa.select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit)
    if kind:
        q = q.where(t.c.kind == kind)
    if status:
        q = q.where(t.c.status == status)
    with engine.connect() as conn:
        return [_row_dict(r) for r in conn.execute(q)]


def reset_run(engine: Engine, settings: Settings, run_id: str) -> None:
    """Forget a run's work list, chunks and staged verdicts (published verdicts stay); status 'created'."""
    t = tables(settings)
    with write_tx(engine) as conn:
        for table in (t.work_items, t.run_chunks, t.verdict_staging):
            conn.execute(table.delete().where(table.c.run_id == run_id))
        cleared = {c: None for c in ("items", "unique_texts", "skipped_unchanged", "duplicate_ids", "chunks",
                                     "verdicts", "errors", "positives", "inserted", "updated", "unchanged",
                                     "prompt_tokens", "completion_tokens", "validation", "error",
                                     "extract_started_at", "extract_finished_at", "label_started_at",
                                     "label_finished_at", "validated_at", "published_at")}
        _update(conn, t.runs, run_id, {**cleared, "status": "created", "warnings": [], "updated_at": utcnow()})
