"""The cascade stage of the label job: a Ray Data actor between the pending chunk numbers and the vLLM
replicas. For each chunk it reads the items, embeds them once (batched) and lets each policy version's
cascade decide what it is sure of; the plan travels with the chunk number to a replica, which sends the
model only the rest and the audit slice (labelling/cascade_route.py) and records the chunk's figures.

Audit agreement is read back from what replicas recorded (sg_cascade_chunks) before each chunk is
planned: once it falls under cascade.min_agreement for a policy version, the cascade is off for that
version for the rest of the run (chunks already planned in the pipeline keep their plan), and the run
says so in its warnings at the end (finish).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Sequence

from safeguard_flow.domain.policies import Policy
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

PLAN_COLUMN = "cascade_plan"


def cascades_for_run(sql_engine, settings: Settings, policies: Sequence[Policy]) -> dict:
    """The run's cascades by (policy, version): none when cascade.enabled is off or none is trained."""
    if not settings.cascade.enabled:
        return {}
    from safeguard_flow.warehouse import cascades

    return cascades.for_policies(sql_engine, settings, [(p.name, p.version or 0) for p in policies])


def run_has_cascades(settings: Settings, policies: Sequence[Policy]) -> bool:
    from safeguard_flow.warehouse import db

    sql_engine = db.make_engine(settings)
    try:
        return bool(cascades_for_run(sql_engine, settings, policies))
    finally:
        sql_engine.dispose()


def off_policies(sql_engine, settings: Settings, run_id: str) -> dict[str, str]:
    """policy -> why its cascade is off for the rest of this run (audit agreement fell under the threshold)."""
    from safeguard_flow.labelling.cascade_route import switched_off
    from safeguard_flow.warehouse import cascades

    cfg = settings.cascade
    out = {}
    for (policy, version), f in cascades.run_figures(sql_engine, settings, run_id).items():
        if f["chunks_off"] or switched_off(f["audited"], f["audit_agree"], min_agreement=cfg.min_agreement,
                                           min_audit=cfg.min_audit, confidence=cfg.bound_confidence):
            out[policy] = (f"cascade for {policy} v{version} switched off for the rest of the run: audit agreement "
                           f"{f['audit_agree']}/{f['audited']} is under cascade.min_agreement {cfg.min_agreement}")
    return out


class CascadeRouter:
    """Constructed once per stage actor (encoder and cascades load once); called per chunk number."""

    def __init__(self, settings: Settings, run_id: str, policies: Sequence[Policy]):
        from safeguard_flow.engines.cascade import Encoder
        from safeguard_flow.warehouse import db

        self.settings, self.run_id, self.policies = settings, run_id, list(policies)
        self.db = db.make_engine(settings)
        self.cascades = cascades_for_run(self.db, settings, self.policies)
        self.encoder = Encoder(settings) if self.cascades else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        chunk_nos = [int(c) for c in batch["chunk_no"]]
        return {"chunk_no": chunk_nos, PLAN_COLUMN: [json.dumps(self.plan(c)) for c in chunk_nos]}

    def plan(self, chunk_no: int) -> dict[str, Any]:
        from safeguard_flow.labelling.cascade_route import plan_chunk
        from safeguard_flow.warehouse import staging

        if self.encoder is None or chunk_no not in staging.pending_chunks(self.db, self.settings, self.run_id):
            return {}
        items = staging.read_chunk(self.db, self.settings, self.run_id, chunk_no)
        plan = plan_chunk(items, self.policies, self.cascades, self.encoder, audit_rate=self.settings.cascade.audit_rate,
                          seed=self.settings.cascade.seed, off=off_policies(self.db, self.settings, self.run_id))
        return plan.to_json()


def label_planned(label: Callable, items, policies: Sequence[Policy], plan_json: str | None, figures: dict,
                  run_policies: int | None = None):
    """The replica's labelling of a slice: through the plan when there is one (figures summed per
    policy into `figures`), else straight to the model. `run_policies`: how many policies the run has
    when `policies` is a policy-affinity replica's share."""
    from safeguard_flow.labelling.cascade_route import ChunkPlan, label_routed

    plan = json.loads(plan_json) if plan_json else {}
    if not plan:
        return label(items, policies)
    verdicts, rows = label_routed(items, policies, ChunkPlan.from_json(plan), label, run_policies)
    for r in rows:
        acc = figures.setdefault(r["policy"], dict(r, items=0, decided=0, audited=0, audit_agree=0, calls_avoided=0,
                                                   cascade_s=0.0, model_s=0.0))
        for key in ("items", "decided", "audited", "audit_agree", "calls_avoided", "model_s"):
            acc[key] += r[key]
        acc["cascade_s"] = r["cascade_s"]  # the chunk's plan, the same for each slice
    return verdicts


def record(sql_engine, settings: Settings, run_id: str, chunk_no: int, figures: dict) -> None:
    if figures:
        from safeguard_flow.warehouse import cascades

        cascades.record_chunk(sql_engine, settings, run_id, chunk_no, list(figures.values()))


def finish(sql_engine, settings: Settings, run_id: str) -> dict:
    """At the end of a label job: the run's cascade figures per policy version, logged; a warning on the
    run for each policy version whose cascade audit agreement switched it off."""
    from safeguard_flow.warehouse import cascades, db, runs

    figures = cascades.run_figures(sql_engine, settings, run_id)
    if not figures:
        return {}
    for (policy, version), f in figures.items():
        log.info("run %s: cascade %s v%s decided %d of %d pairs (%d model calls avoided), audit %d/%d, "
                 "stage %.1fs, model %.1fs", run_id, policy, version, f["decided"], f["items"], f["calls_avoided"],
                 f["audit_agree"], f["audited"], f["cascade_s"], f["model_s"])
    off = off_policies(sql_engine, settings, run_id)
    if off:
        with db.write_tx(sql_engine) as conn:
            existing = runs.get_run(conn, settings, run_id).warnings
            for message in off.values():
                if message not in existing:
                    runs.add_warning(conn, settings, run_id, message)
    return {f"{p} v{v}": f for (p, v), f in figures.items()}


def add_stage(ds, settings: Settings, run_id: str, policies: Sequence[Policy]):
    """ds of chunk numbers -> ds of chunk numbers with their plan (one stage actor, batched per chunk)."""
    import ray.data

    started = time.perf_counter()
    out = ds.map_batches(
        CascadeRouter,
        fn_constructor_kwargs={"settings": settings, "run_id": run_id, "policies": list(policies)},
        batch_size=1,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,  # beside the replicas: embedding is light next to a model call
    )
    log.debug("cascade stage added in %.3fs", time.perf_counter() - started)
    return out
