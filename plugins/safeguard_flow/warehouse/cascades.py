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
        rows = conn.execute(sa.select(t.c.recorded_at, t.c.calls_avoided, t.c.decided, t.c["items"])).all()
    per_day: dict[str, dict[str, int]] = {}
    for at, avoided, decided, items in rows:
        day = per_day.setdefault(at.date().isoformat(), {"calls_avoided": 0, "decided": 0, "pairs": 0})
        day["calls_avoided"] += int(avoided or 0)
        day["decided"] += int(decided or 0)
        day["pairs"] += int(items or 0)
    return [{"day": d, **v} for d, v in sorted(per_day.items(), reverse=True)[:days]]


def training_rows(engine: Engine, settings: Settings, policy: str, version: int):
    """TrainingRow(content_hash, text, label 0/1, origin) for a policy version: its model verdicts (ok,
    decided by the model, never by a cascade), then reviewers' decisions (newest last), so a human
    decision wins over the model for the same text. Texts come from the runs' work lists while they
    keep them, the review queue, else the source tables (only where the text still has the verdict's hash:
    publish clears the runs' copies by default, retention.text_days)."""
    from safeguard_flow.policy_quality.cascade_train import TrainingRow

    t = tables(settings)
    v = t.verdicts
    with engine.connect() as conn:
        verdicts = conn.execute(sa.select(v.c.source, v.c.content_id, v.c.content_hash, v.c.label).where(
            v.c.policy == policy, v.c.policy_version == int(version), v.c.parse_status == "ok",
            v.c.decided_by == "model")).all()
        humans = []
        if _has_review(conn, settings):
            d = t.review_decisions
            humans = conn.execute(sa.select(d.c.source, d.c.content_id, d.c.content_hash, d.c.decision).where(
                d.c.policy == policy, d.c.policy_version == int(version), d.c.decision.is_not(None))
                .order_by(d.c.id)).all()
        hashes = {r.content_hash for r in verdicts} | {r.content_hash for r in humans}
        texts = _texts_kept(conn, settings, hashes)
    missing = [r for r in [*verdicts, *humans] if r.content_hash not in texts]
    if missing:
        texts.update(_texts_from_sources(engine, settings, missing))
    rows = [TrainingRow(r.content_hash, texts[r.content_hash], 1 if (r.label or 0) >= 1 else 0, "model")
            for r in verdicts if r.content_hash in texts]
    rows += [TrainingRow(r.content_hash, texts[r.content_hash], 1 if r.decision >= 1 else 0, "human")
             for r in humans if r.content_hash in texts]
    return rows


def _texts_kept(conn, settings: Settings, hashes: set[str]) -> dict[str, str]:
    t = tables(settings)
    out: dict[str, str] = {}
    wanted = sorted(hashes)
    sources = [(t.work_items.c.content_hash, t.work_items.c.text)]
    if _has_review(conn, settings):
        sources.append((t.review_queue.c.content_hash, t.review_queue.c.text))
    for hash_col, text_col in sources:
        for i in range(0, len(wanted), 500):
            part = [h for h in wanted[i:i + 500] if h not in out]
            if part:
                for h, text in conn.execute(sa.select(hash_col, text_col).where(hash_col.in_(part), text_col.is_not(None))):
                    out.setdefault(h, text)
    return out


def _texts_from_sources(engine: Engine, settings: Settings, rows) -> dict[str, str]:
    """Texts read back from the configured source tables by id, kept where they still hash as labelled."""
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.warehouse.sources import open_sources

    by_source: dict[str, set[str]] = {}
    for r in rows:
        by_source.setdefault(r.source, set()).add(r.content_id)
    names = [s.name for s in settings.sources if s.name in by_source] if settings.sources else []
    out: dict[str, str] = {}
    if not names:
        return out
    with open_sources(engine, settings, names) as srcs:
        for src in srcs:
            ids = sorted(by_source[src.name])
            with (src.engine or engine).connect() as conn:
                for i in range(0, len(ids), 500):
                    q = sa.select(src.id_col, src.text_col).where(sa.cast(src.id_col, sa.String).in_(ids[i:i + 500]))
                    for cid, text in conn.execute(q):
                        item = ContentItem.from_raw(cid, text)
                        if item.problem is None:
                            out.setdefault(item.content_hash, item.text)
    return out


def _has_review(conn, settings: Settings) -> bool:
    """The review decisions table exists (migration 0009 applied)."""
    t = tables(settings).review_decisions
    return sa.inspect(conn).has_table(t.name, schema=t.schema)


def recent_runs(engine: Engine, settings: Settings, policy: str, limit: int = 10) -> list[dict[str, Any]]:
    """The policy's cascade figures per run (newest first): decided, calls avoided, audit, seconds, off."""
    t = tables(settings).cascade_chunks
    q = (sa.select(t.c.run_id, t.c.policy_version, *(sa.func.sum(t.c[f]).label(f) for f in FIGURES),
                   sa.func.sum(sa.case((t.c.off, 1), else_=0)).label("chunks_off"),
                   sa.func.max(t.c.recorded_at).label("recorded_at"))
         .where(t.c.policy == policy).group_by(t.c.run_id, t.c.policy_version)
         .order_by(sa.func.max(t.c.recorded_at).desc()).limit(limit))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
