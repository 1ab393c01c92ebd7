"""Routing a chunk through the cascade: plan (which (item, policy) pairs the cascade decides, which of
those are audited) and label (the model gets the rest and the audit slice; the verdicts come back in
the usual (item, policy) order, one per pair).

A cascade verdict has decided_by 'cascade', the cascade's probability of the chosen label as its
confidence, and `extra["cascade"]`; an audited pair's model verdict carries `extra["cascade"] =
{"label", "probability"}` so review can route disagreements. The audit draw is a hash of (seed, text,
policy): the same pair, the same draw, whichever replica plans it. Imports no Ray, vLLM or Airflow.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.verdicts import OK, Verdict
from safeguard_flow.engines.cascade import ENCODER_KEY, Cascade, Encoder


@dataclass
class ChunkPlan:
    """Per policy name: content_hash -> [label or None, probability, audited]. Policies absent: all to the model."""

    decisions: dict[str, dict[str, list]] = field(default_factory=dict)
    cascade_ids: dict[str, int | None] = field(default_factory=dict)
    off: dict[str, str] = field(default_factory=dict)  # policy -> why the cascade is off for it
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "cascade_ids": self.cascade_ids, "off": self.off, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkPlan:
        return cls(data.get("decisions", {}), data.get("cascade_ids", {}), data.get("off", {}), float(data.get("seconds", 0.0)))


def audit_draw(seed: int | str, content_hash: str, policy: str) -> float:
    """A number in [0, 1) fixed by (seed, text, policy)."""
    digest = hashlib.sha256(f"{seed}\x1f{content_hash}\x1f{policy}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def switched_off(audited: int, agree: int, *, min_agreement: float, min_audit: int, confidence: float) -> bool:
    """Audit agreement has fallen under the threshold: at least min_audit audited pairs, and even the
    upper confidence bound of the agreement is under min_agreement (a single unlucky disagreement in
    a small audit does not switch a good cascade off; a cascade that is really worse does)."""
    if audited < min_audit:
        return False
    from scipy.stats import beta

    upper = 1.0 if agree >= audited else float(beta.ppf(confidence, agree + 1, audited - agree))
    return upper < min_agreement


def plan_chunk(items: Sequence[ContentItem], policies: Sequence[Policy], cascades: dict[tuple[str, int], Cascade],
               encoder: Encoder, *, audit_rate: float, seed: int | str = 0,
               off: dict[str, str] | None = None) -> ChunkPlan:
    """Embed the chunk's texts once and let each policy's cascade decide what it is sure of."""
    start = time.perf_counter()
    plan = ChunkPlan(off=dict(off or {}))
    active = [(p, cascades.get((p.name, p.version or 0))) for p in policies]
    active = [(p, c) for p, c in active if c is not None and p.name not in plan.off]
    texts: dict[str, str] = {}
    for item in items:
        if item.problem is None and item.text:
            texts.setdefault(item.content_hash, item.text)
    if active and texts:
        hashes = list(texts)
        x = encoder.embed([texts[h] for h in hashes])
        for policy, cascade in active:
            decided = {}
            for h, d in zip(hashes, cascade.decide(cascade.probabilities(x))):
                if d.decided:
                    decided[h] = [d.label, round(d.probability, 6), audit_draw(seed, h, policy.name) < audit_rate]
            plan.decisions[policy.name] = decided
            plan.cascade_ids[policy.name] = cascade.id
    plan.seconds = time.perf_counter() - start
    return plan


LabelFn = Callable[[Sequence[ContentItem], Sequence[Policy]], list[Verdict]]


def label_routed(items: Sequence[ContentItem], policies: Sequence[Policy], plan: ChunkPlan, label: LabelFn,
                 run_policies: int | None = None) -> tuple[list[Verdict], list[dict[str, Any]]]:
    """Verdicts for every (item, policy) in (item, policy) order, the model (`label`) asked only for the
    pairs the cascade did not decide and the audited ones; and per policy the figures of the chunk
    (items, decided, audited, audit_agree, calls_avoided, model_s, cascade_s, off, note, cascade_id)."""
    by_pair: dict[tuple[int, str], Verdict] = {}
    figures = []
    # The plan's time, shared by every policy of the run (a policy-affinity replica labels only some).
    cascade_share = plan.seconds / max(1, run_policies or len(policies))
    for policy in policies:
        decided = plan.decisions.get(policy.name, {})
        to_model = [(i, it) for i, it in enumerate(items) if it.content_hash not in decided or decided[it.content_hash][2]]
        start = time.perf_counter()
        model_verdicts = label([it for _, it in to_model], [policy]) if to_model else []
        model_s = time.perf_counter() - start
        audited = agree = 0
        for (i, item), v in zip(to_model, model_verdicts):
            d = decided.get(item.content_hash)
            if d is not None:  # an audited pair: the model's verdict, with what the cascade said
                audited += 1
                agree += int(v.parse_status == OK and v.label is not None and int(v.label >= 1) == d[0])
                v.extra = {**(v.extra or {}), "cascade": {"label": d[0], "probability": d[1]}}
            by_pair[(i, policy.name)] = v
        n_decided = 0
        for i, item in enumerate(items):
            d = decided.get(item.content_hash)
            if d is None:
                continue
            n_decided += 1
            if (i, policy.name) not in by_pair:
                by_pair[(i, policy.name)] = cascade_verdict(item, policy, d[0], d[1], plan.cascade_ids.get(policy.name))
        figures.append({"policy": policy.name, "policy_version": policy.version or 0,
                        "cascade_id": plan.cascade_ids.get(policy.name), "items": len(items), "decided": n_decided,
                        "audited": audited, "audit_agree": agree, "calls_avoided": n_decided - audited,
                        "cascade_s": cascade_share if policy.name in plan.decisions else 0.0, "model_s": model_s,
                        "off": policy.name in plan.off, "note": plan.off.get(policy.name)})
    verdicts = [by_pair[(i, p.name)] for i in range(len(items)) for p in policies]
    return verdicts, figures


def cascade_verdict(item: ContentItem, policy: Policy, label: int, probability: float, cascade_id: int | None) -> Verdict:
    confidence = probability if label == 1 else 1.0 - probability
    return Verdict(content_id=item.content_id, policy=policy.name, policy_version=policy.version or 0, label=int(label),
                   parse_status=OK, source=item.source, content_hash=item.content_hash, confidence=round(confidence, 6),
                   model=f"cascade:{ENCODER_KEY}", decided_by="cascade",
                   extra={"cascade": {"label": int(label), "probability": probability, "id": cascade_id}})


class FileRouter:
    """The cascade for `safeguard-flow label --cascade` (no run, no Ray): the policies' stored versions'
    cascades from the configured warehouse, applied chunk by chunk in this process; figures summed."""

    def __init__(self, settings, policies: Sequence[Policy]):
        from safeguard_flow.warehouse import cascades, db, policy_store

        sql_engine = db.make_engine(settings)
        try:
            self.policies = policy_store.with_stored_versions(sql_engine, settings, policies)
            self.cascades = cascades.for_policies(sql_engine, settings, [(p.name, p.version or 0) for p in self.policies
                                                                          if p.version])
        finally:
            sql_engine.dispose()
        self.settings = settings
        self.encoder = Encoder(settings) if self.cascades else None
        self.figures: dict[str, dict[str, Any]] = {}

    def label(self, items: Sequence[ContentItem], label: LabelFn) -> list[Verdict]:
        if self.encoder is None:
            return label(items, self.policies)
        cfg = self.settings.cascade
        plan = plan_chunk(items, self.policies, self.cascades, self.encoder, audit_rate=cfg.audit_rate, seed=cfg.seed,
                          off={p: "audit agreement under cascade.min_agreement" for p, f in self.figures.items()
                               if switched_off(f["audited"], f["audit_agree"], min_agreement=cfg.min_agreement,
                                               min_audit=cfg.min_audit, confidence=cfg.bound_confidence)})
        verdicts, rows = label_routed(items, self.policies, plan, label)
        for r in rows:
            acc = self.figures.setdefault(r["policy"], {k: 0 for k in ("items", "decided", "audited", "audit_agree",
                                                                         "calls_avoided")})
            for k in acc:
                acc[k] += r[k]
        return verdicts

    def summary(self) -> str:
        if not self.cascades:
            return "cascade: none trained for these policy versions (safeguard-flow cascade train)"
        return "\n".join(f"cascade {p}: decided {f['decided']} of {f['items']}, {f['calls_avoided']} model calls avoided, "
                         f"audit {f['audit_agree']}/{f['audited']} agree" for p, f in sorted(self.figures.items()))
