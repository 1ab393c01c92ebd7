"""The review tables' SQL (migration 0009): the queue and its leases, the append-only decisions,
the estimates table, and the reads routing, the page and the exports need. No rules here: which
verdicts to route is review/routing.py, what to estimate review/estimates.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import utcnow, write_tx
from safeguard_flow.warehouse.errors import WarehouseError
from safeguard_flow.warehouse.schema import tables
from safeguard_flow.warehouse.tables import bucket_of

OPEN, DECIDED = "open", "decided"
ITEM_KEY = ("source", "content_id", "policy", "policy_version", "content_hash")
_BATCH = 500


class LeaseLost(WarehouseError):
    """The reviewer no longer holds the item's lease (it expired and another reviewer took it, or it was decided)."""


# ---- routing's reads -------------------------------------------------------------------------------


def run_verdicts(engine: Engine, settings: Settings, run_id: str, batch: int = 5000) -> Iterator[list[sa.Row]]:
    """The run's published verdicts in batches, each with its item's label under the newest earlier
    stored version (`previous_label`, NULL when there is none)."""
    t = tables(settings)
    v, prev = t.verdicts, t.verdicts.alias("prev")
    newest_earlier = (sa.select(prev.c.label).where(
        prev.c.source == v.c.source, prev.c.content_id == v.c.content_id, prev.c.policy == v.c.policy,
        prev.c.policy_version < v.c.policy_version).order_by(prev.c.policy_version.desc()).limit(1)
        .correlate(v).scalar_subquery())
    q = (sa.select(v.c.source, v.c.content_id, v.c.policy, v.c.policy_version, v.c.content_hash, v.c.label,
                   v.c.confidence, v.c.parse_status, v.c.decided_by, v.c.extra, newest_earlier.label("previous_label"))
         .where(v.c.run_id == run_id).order_by(v.c.policy, v.c.source, v.c.content_id))
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(q)
        for part in result.partitions(batch):
            yield list(part)


def newest_decisions(engine: Engine, settings: Settings, policies: Iterable[str]) -> dict[tuple[str, str], int]:
    """{(policy, content_hash): the newest reviewer decision on that text for that policy, any version}."""
    d = tables(settings).review_decisions
    q = (sa.select(d.c.policy, d.c.content_hash, d.c.decision)
         .where(d.c.policy.in_(sorted(set(policies))), d.c.decision.is_not(None)).order_by(d.c.id))
    with engine.connect() as conn:
        return {(r.policy, r.content_hash): r.decision for r in conn.execute(q)}


def run_texts(engine: Engine, settings: Settings, run_id: str,
              keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], str | None]:
    """{(source, content_id, content_hash): text} from the run's work items (found through their bucket)."""
    w = tables(settings).work_items
    out: dict[tuple[str, str, str], str | None] = {}
    with engine.connect() as conn:
        for i in range(0, len(keys), _BATCH):
            part = keys[i:i + _BATCH]
            q = sa.select(w.c.source, w.c.content_id, w.c.content_hash, w.c.text).where(
                w.c.run_id == run_id, w.c.bucket.in_(sorted({bucket_of(h) for _, _, h in part})),
                w.c.content_hash.in_(sorted({h for _, _, h in part})))
            for r in conn.execute(q):
                out[(r.source, r.content_id, r.content_hash)] = r.text
    return out


# ---- the queue ---------------------------------------------------------------------------------------


def enqueue(engine: Engine, settings: Settings, entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Add routed entries (ITEM_KEY + run_id, text, model_label, confidence, parse_status, decided_by,
    reason, reasons, priority, audit, sampling_prob, stratum). An entry already queued for the same
    verdict and text is left as it is, unless the new one disagrees with a human decision: then the
    entry is reopened with the new model label and its reasons (a flag, never a silent override)."""
    q = tables(settings).review_queue
    now = utcnow()
    added = reopened = 0
    with write_tx(engine) as conn:
        for i in range(0, len(entries), _BATCH):
            part = entries[i:i + _BATCH]
            existing = _existing(conn, q, part)
            new = [{**e, "status": OPEN, "created_at": now} for e in part if _key(e) not in existing]
            if new:
                conn.execute(q.insert(), new)
                added += len(new)
            for e in part:
                old = existing.get(_key(e))
                if old is not None and "disagrees_with_human" in e["reasons"] and old.model_label != e["model_label"]:
                    conn.execute(q.update().where(q.c.id == old.id).values(
                        status=OPEN, run_id=e["run_id"], model_label=e["model_label"], confidence=e["confidence"],
                        parse_status=e["parse_status"], decided_by=e["decided_by"], reason=e["reason"],
                        reasons=e["reasons"], priority=e["priority"], leased_by=None, lease_until=None,
                        decided_at=None))
                    reopened += 1
    return {"added": added, "reopened": reopened, "already_queued": len(entries) - added - reopened}


def _key(e: Any) -> tuple:
    get = e.get if isinstance(e, dict) else lambda k: getattr(e, k)
    return tuple(get(k) for k in ITEM_KEY)


def _existing(conn: Connection, q: sa.Table, part: Sequence[dict[str, Any]]) -> dict[tuple, sa.Row]:
    rows = conn.execute(sa.select(q.c.id, q.c.model_label, *(q.c[k] for k in ITEM_KEY)).where(
        q.c.policy.in_(sorted({e["policy"] for e in part})),
        q.c.content_hash.in_(sorted({e["content_hash"] for e in part}))))
    return {_key(r): r for r in rows}


def claim_next(engine: Engine, settings: Settings, policy: str, reviewer: str, lease_seconds: int,
               now: dt.datetime | None = None) -> sa.Row | None:
    """Lease the next open item of the policy to the reviewer and return it: the item they already
    hold, else the most urgent one nobody holds (or whose lease expired) that they have not skipped.
    The lease is taken by a conditional UPDATE, so two reviewers never get the same item."""
    q, d = tables(settings).review_queue, tables(settings).review_decisions
    now = now or utcnow()
    until = now + dt.timedelta(seconds=lease_seconds)
    free = sa.or_(q.c.leased_by.is_(None), q.c.lease_until < now, q.c.leased_by == reviewer)
    with engine.connect() as conn:
        held = conn.execute(sa.select(q.c.id).where(q.c.policy == policy, q.c.status == OPEN,
                                                    q.c.leased_by == reviewer, q.c.lease_until >= now)
                            .order_by(q.c.priority.desc(), q.c.id).limit(1)).scalar()
    skipped = sa.exists().where(d.c.queue_id == q.c.id, d.c.reviewer == reviewer, d.c.decision.is_(None))
    for _ in range(20):  # lost races only: each pass re-reads the candidates
        if held is None:
            with engine.connect() as conn:
                candidates = conn.execute(sa.select(q.c.id).where(q.c.policy == policy, q.c.status == OPEN, free, ~skipped)
                                          .order_by(q.c.priority.desc(), q.c.id).limit(5)).scalars().all()
        else:
            candidates = [held]
        if not candidates:
            return None
        for item_id in candidates:
            with write_tx(engine) as conn:
                took = conn.execute(q.update().where(q.c.id == item_id, q.c.status == OPEN, free)
                                    .values(leased_by=reviewer, lease_until=until)).rowcount
            if took == 1:
                return get_item(engine, settings, item_id)
        held = None
    return None


def held_item(engine: Engine, settings: Settings, policy: str, reviewer: str,
              now: dt.datetime | None = None) -> sa.Row | None:
    """The open item of the policy this reviewer holds an unexpired lease on, if any (reads only)."""
    q = tables(settings).review_queue
    with engine.connect() as conn:
        return conn.execute(sa.select(q).where(q.c.policy == policy, q.c.status == OPEN, q.c.leased_by == reviewer,
                                               q.c.lease_until >= (now or utcnow()))
                            .order_by(q.c.priority.desc(), q.c.id).limit(1)).first()


def release(engine: Engine, settings: Settings, item_id: int, reviewer: str) -> None:
    q = tables(settings).review_queue
    with write_tx(engine) as conn:
        conn.execute(q.update().where(q.c.id == item_id, q.c.leased_by == reviewer)
                     .values(leased_by=None, lease_until=None))


def get_item(engine: Engine, settings: Settings, item_id: int) -> sa.Row | None:
    q = tables(settings).review_queue
    with engine.connect() as conn:
        return conn.execute(sa.select(q).where(q.c.id == item_id)).one_or_none()


def record_decision(engine: Engine, settings: Settings, *, reviewer: str, decision: int | None, origin: str,
                    note: str | None = None, item_id: int | None = None, item: dict[str, Any] | None = None,
                    model_label: int | None = None, lease_required: bool = False,
                    now: dt.datetime | None = None) -> int:
    """Append a decision (decision None: a skip) and close or release the queue entry; returns its id.

    With `item_id`: the queued item (with `lease_required`, only while the reviewer holds its lease:
    LeaseLost otherwise). Without: `item` names the verdict (ITEM_KEY); its queue entry, if any, is closed."""
    q, d = tables(settings).review_queue, tables(settings).review_decisions
    now = now or utcnow()
    with write_tx(engine) as conn:
        if item_id is None and item is not None:
            item_id = conn.execute(sa.select(q.c.id).where(*(q.c[k] == item[k] for k in ITEM_KEY))).scalar()
        if item_id is not None:
            row = conn.execute(sa.select(q).where(q.c.id == item_id).with_for_update()).one_or_none()
            if row is None:
                raise WarehouseError(f"no review item {item_id}")
            if lease_required and (row.status != OPEN or row.leased_by != reviewer or row.lease_until < now):
                raise LeaseLost(f"review item {item_id} is no longer leased to {reviewer}: take the next item")
            values = {k: getattr(row, k) for k in ITEM_KEY}
            model_label = row.model_label
            if decision is None:
                conn.execute(q.update().where(q.c.id == item_id).values(leased_by=None, lease_until=None))
            else:
                conn.execute(q.update().where(q.c.id == item_id).values(
                    status=DECIDED, decided_at=now, leased_by=None, lease_until=None))
        elif item is not None:
            values = {k: item[k] for k in ITEM_KEY}
        else:
            raise ValueError("record_decision needs item_id or item")
        return conn.execute(d.insert().values(
            queue_id=item_id, **values, decision=decision, model_label=model_label, reviewer=reviewer,
            note=note or None, origin=origin, decided_at=now)).inserted_primary_key[0]


def decision_history(engine: Engine, settings: Settings, policy: str, content_hash: str) -> list[dict[str, Any]]:
    """Every decision and skip on this text for this policy (all versions), newest first."""
    d = tables(settings).review_decisions
    q = sa.select(d).where(d.c.policy == policy, d.c.content_hash == content_hash).order_by(d.c.id.desc())
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def verdict_details(engine: Engine, settings: Settings, item: sa.Row) -> dict[str, Any]:
    """The published verdict's rationale, category, model and stored analysis for a queue entry."""
    t = tables(settings)
    v, a = t.verdicts, t.verdict_analysis
    keys = [v.c[k] == getattr(item, k) for k in ("source", "content_id", "policy", "policy_version")]
    with engine.connect() as conn:
        row = conn.execute(sa.select(v.c.rationale, v.c.category, v.c.model, v.c.error, v.c.labelled_at)
                           .where(*keys)).one_or_none()
        analysis = conn.execute(sa.select(a.c.analysis).where(
            a.c.run_id == item.run_id, *(a.c[k] == getattr(item, k) for k in ("source", "content_id", "policy",
                                                                                 "policy_version")))).scalar()
    out = dict(row._mapping) if row is not None else {}
    out["analysis"] = analysis
    return out


def queue_summary(engine: Engine, settings: Settings, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per policy: open items, those leased right now, decided ones."""
    q = tables(settings).review_queue
    now = now or utcnow()
    is_open = q.c.status == OPEN
    leased = sa.and_(is_open, q.c.leased_by.is_not(None), q.c.lease_until >= now)
    stmt = (sa.select(q.c.policy,
                      sa.func.sum(sa.case((is_open, 1), else_=0)).label("open"),
                      sa.func.sum(sa.case((leased, 1), else_=0)).label("leased"),
                      sa.func.sum(sa.case((q.c.status == DECIDED, 1), else_=0)).label("decided"))
            .group_by(q.c.policy).order_by(q.c.policy))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def queue_items(engine: Engine, settings: Settings, policy: str | None = None, status: str | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """Queue entries with their newest decision (`decision`, `reviewer`, `reviewed_at`, `note`), by id."""
    q, d = tables(settings).review_queue, tables(settings).review_decisions
    newest = (sa.select(sa.func.max(d.c.id)).where(d.c.policy == q.c.policy, d.c.policy_version == q.c.policy_version,
                                                   d.c.content_hash == q.c.content_hash, d.c.decision.is_not(None))
              .correlate(q).scalar_subquery())
    stmt = (sa.select(q, d.c.decision, d.c.reviewer, d.c.decided_at.label("reviewed_at"), d.c.note)
            .outerjoin(d, d.c.id == newest).order_by(q.c.id))
    if policy:
        stmt = stmt.where(q.c.policy == policy)
    if status:
        stmt = stmt.where(q.c.status == status)
    if limit:
        stmt = stmt.limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def policy_versions_with_items(engine: Engine, settings: Settings) -> list[tuple[str, int]]:
    q, d = tables(settings).review_queue, tables(settings).review_decisions
    with engine.connect() as conn:
        pairs = set(conn.execute(sa.select(q.c.policy, q.c.policy_version).distinct()).all())
        pairs |= set(conn.execute(sa.select(d.c.policy, d.c.policy_version).distinct()).all())
    return sorted((str(p), int(v)) for p, v in pairs)


# ---- estimates -----------------------------------------------------------------------------------------


def decided_pairs(engine: Engine, settings: Settings, policy: str, version: int) -> list[tuple[int | None, int]]:
    """(model label, newest decision) per decided text of this policy version."""
    d = tables(settings).review_decisions
    newest = (sa.select(sa.func.max(d.c.id).label("id")).where(d.c.policy == policy, d.c.policy_version == version,
                                                                d.c.decision.is_not(None))
              .group_by(d.c.content_hash).subquery())
    with engine.connect() as conn:
        return [(r.model_label, r.decision) for r in conn.execute(
            sa.select(d.c.model_label, d.c.decision).join(newest, newest.c.id == d.c.id))]


def audit_sample(engine: Engine, settings: Settings, policy: str, version: int) -> list[dict[str, Any]]:
    """The audit entries of a policy version: sampling_prob, model_label and the newest decision on
    their text (None: not decided yet). Reads the audit index, never the texts."""
    q, d = tables(settings).review_queue, tables(settings).review_decisions
    newest = (sa.select(d.c.decision).where(d.c.policy == q.c.policy, d.c.policy_version == q.c.policy_version,
                                            d.c.content_hash == q.c.content_hash, d.c.decision.is_not(None))
              .order_by(d.c.id.desc()).limit(1).correlate(q).scalar_subquery())
    stmt = sa.select(q.c.sampling_prob, q.c.model_label, newest.label("decision")).where(
        q.c.policy == policy, q.c.policy_version == version, q.c.audit.is_(True))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def write_estimates(engine: Engine, settings: Settings, row: dict[str, Any]) -> None:
    e = tables(settings).review_estimates
    with write_tx(engine) as conn:
        conn.execute(e.delete().where(e.c.policy == row["policy"], e.c.policy_version == row["policy_version"]))
        conn.execute(e.insert().values(**row, computed_at=utcnow()))


def read_estimates(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    e = tables(settings).review_estimates
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(e).order_by(e.c.policy, e.c.policy_version.desc()))]
