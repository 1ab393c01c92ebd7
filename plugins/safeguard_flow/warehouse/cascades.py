"""Storage of cascades (sg_cascades) and of what they did in runs (sg_cascade_chunks), and the
training rows a policy version's verdicts give (human review decisions winning).

A cascade serves exactly the policy version it was trained for: `for_version` looks up that version
only, so a new version never uses an older version's cascade (it has none until one is trained).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.engines.cascade import Cascade
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import utcnow, write_tx
from safeguard_flow.warehouse.schema import tables

FIGURES = ("items", "decided", "audited", "audit_agree", "calls_avoided", "cascade_s", "model_s")


def save(engine: Engine, settings: Settings, cascade: Cascade, *, actor: str = "") -> int:
    t = tables(settings).cascades
    held = cascade.meta.get("heldout", {})
    with write_tx(engine) as conn:
        new_id = conn.execute(t.insert().values(
            policy=cascade.policy, policy_version=cascade.policy_version, encoder=cascade.encoder,
            source=str(cascade.meta.get("source", ""))[:500], training_size=int(cascade.meta.get("training_size", 0)),
            training_sha256=cascade.meta.get("training_sha256", ""), low=cascade.low, high=cascade.high,
            min_agreement=float(cascade.meta.get("min_agreement", settings.cascade.min_agreement)),
            share_decided=held.get("share_decided"), agreement=held.get("agreement"),
            agreement_low=held.get("agreement_low"), heldout=held, model={"members": cascade.members, "meta": cascade.meta},
            actor=actor, created_at=utcnow())).inserted_primary_key[0]
    cascade.id = int(new_id)
    return cascade.id


def _from_row(row) -> Cascade:
    model = row.model or {}
    return Cascade.from_json({"policy": row.policy, "policy_version": row.policy_version, "members": model["members"],
                              "low": row.low, "high": row.high, "encoder": row.encoder,
                              "meta": model.get("meta", {}), "id": row.id})


def for_version(engine: Engine, settings: Settings, policy: str, version: int) -> Cascade | None:
    """The newest cascade trained for exactly this policy version, or None."""
    t = tables(settings).cascades
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.policy == policy, t.c.policy_version == int(version))
                           .order_by(t.c.id.desc()).limit(1)).first()
    return _from_row(row) if row is not None else None


def for_policies(engine: Engine, settings: Settings, refs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Cascade]:
    out = {}
    for name, version in refs:
        c = for_version(engine, settings, name, int(version))
        if c is not None:
            out[(name, int(version))] = c
    return out


def listing(engine: Engine, settings: Settings, policy: str | None = None) -> list[dict[str, Any]]:
    t = tables(settings).cascades
    cols = [t.c.id, t.c.policy, t.c.policy_version, t.c.encoder, t.c.source, t.c.training_size, t.c.training_sha256,
            t.c.low, t.c.high, t.c.min_agreement, t.c.share_decided, t.c.agreement, t.c.agreement_low, t.c.heldout,
            t.c.actor, t.c.created_at]
    q = sa.select(*cols).order_by(t.c.policy, t.c.policy_version, t.c.id)
    if policy:
        q = q.where(t.c.policy == policy)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def record_chunk(engine: Engine, settings: Settings, run_id: str, chunk_no: int, rows: Sequence[dict[str, Any]]) -> None:
    """What the cascade did in one chunk, per policy version (rewriting a chunk replaces its rows)."""
    t = tables(settings).cascade_chunks
    now = utcnow()
    with write_tx(engine) as conn:
        conn.execute(t.delete().where(t.c.run_id == run_id, t.c.chunk_no == int(chunk_no)))
        if rows:
            conn.execute(t.insert(), [{**r, "run_id": run_id, "chunk_no": int(chunk_no), "recorded_at": now} for r in rows])


def run_figures(engine: Engine, settings: Settings, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    """A run's cascade figures per policy version, summed over its chunks (off: chunks it was off in)."""
    t = tables(settings).cascade_chunks
    q = (sa.select(t.c.policy, t.c.policy_version, *(sa.func.sum(t.c[f]).label(f) for f in FIGURES),
                   sa.func.sum(sa.case((t.c.off, 1), else_=0)).label("chunks_off"),
                   sa.func.max(t.c.cascade_id).label("cascade_id"))
         .where(t.c.run_id == run_id).group_by(t.c.policy, t.c.policy_version))
    out = {}
    with engine.connect() as conn:
        for r in conn.execute(q):
            d = {f: (float(r._mapping[f] or 0) if f.endswith("_s") else int(r._mapping[f] or 0)) for f in FIGURES}
            d["chunks_off"] = int(r.chunks_off or 0)
            d["cascade_id"] = r.cascade_id
            d["audit_agreement"] = d["audit_agree"] / d["audited"] if d["audited"] else None
            out[(r.policy, int(r.policy_version))] = d
    return out


def calls_avoided_per_day(engine: Engine, settings: Settings, days: int = 30) -> list[dict[str, Any]]:
    """Model calls the cascade avoided per UTC day (by when the chunk was recorded), newest first."""
    t = tables(settings).cascade_chunks
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.recorded_at, t.c.calls_avoided, t.c.decided, t.c.items)).all()
    per_day: dict[str, dict[str, int]] = {}
    for at, avoided, decided, items in rows:
        day = per_day.setdefault(at.date().isoformat(), {"calls_avoided": 0, "decided": 0, "pairs": 0})
        day["calls_avoided"] += int(avoided or 0)
        day["decided"] += int(decided or 0)
        day["pairs"] += int(items or 0)
    return [{"day": d, **v} for d, v in sorted(per_day.items(), reverse=True)[:days]]


def training_rows(engine: Engine, settings: Settings, policy: str, version: int):
    """(content_hash, text, label 0/1, origin) for a policy version: its model verdicts (ok, decided by
    the model, never by a cascade, with their text still in the run's work list), then reviewers'
    decisions (newest last), so a human decision wins over the model for the same text."""
    from safeguard_flow.policy_quality.cascade_train import TrainingRow

    t = tables(settings)
    v, w = t.verdicts, t.work_items
    model_q = (sa.select(v.c.content_hash, v.c.label, w.c.text)
               .join(w, sa.and_(w.c.run_id == v.c.run_id, w.c.source == v.c.source, w.c.content_id == v.c.content_id))
               .where(v.c.policy == policy, v.c.policy_version == int(version), v.c.parse_status == "ok",
                      v.c.decided_by == "model", w.c.text.is_not(None)))
    rows: list[TrainingRow] = []
    texts: dict[str, str] = {}
    with engine.connect() as conn:
        for content_hash, label, text in conn.execute(model_q):
            texts[content_hash] = text
            rows.append(TrainingRow(content_hash, text, 1 if (label or 0) >= 1 else 0, "model"))
        if _has_review(conn, settings):
            d, q = t.review_decisions, t.review_queue
            human_q = (sa.select(d.c.content_hash, d.c.decision, q.c.text)
                       .select_from(d.outerjoin(q, q.c.id == d.c.queue_id))
                       .where(d.c.policy == policy, d.c.policy_version == int(version), d.c.decision.is_not(None))
                       .order_by(d.c.id))
            for content_hash, decision, text in conn.execute(human_q):
                text = text or texts.get(content_hash)
                if text is not None:
                    rows.append(TrainingRow(content_hash, text, 1 if decision >= 1 else 0, "human"))
    return rows


def _has_review(conn, settings: Settings) -> bool:
    """The review decisions table exists (migration 0009 applied)."""
    t = tables(settings).review_decisions
    return sa.inspect(conn).has_table(t.name, schema=t.schema)
