"""The quality gate's decision per (run, policy version), in `sg_run_gates` (migration 0007).

Validate writes one row per policy version it judged (passed or quarantined, the reason, its counts,
whether it was a shadow version then); publish merges only the passed ones; a rerun of a partly
quarantined run relabels only the quarantined ones and records which run does (`retry_run_id`).
`runs show`, the UI's run report and BI read it. The rows outlive retention (they hold no content).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import utcnow
from safeguard_flow.warehouse.schema import tables

PASSED, QUARANTINED = "passed", "quarantined"


@dataclass(frozen=True)
class Gate:
    run_id: str
    policy: str
    policy_version: int
    outcome: str
    shadow: bool
    reason: str | None
    checks: int
    failed: int
    verdicts: int
    errors: int
    positives: int
    retry_run_id: str | None

    @property
    def ref(self) -> tuple[str, int]:
        return self.policy, self.policy_version

    @property
    def passed(self) -> bool:
        return self.outcome == PASSED

    @property
    def key(self) -> str:
        return f"{self.policy} v{self.policy_version}"


def record(conn: Connection, settings: Settings, run_id: str, versions: Sequence[dict[str, Any]]) -> None:
    """Replace the run's gate rows with `versions` (VersionGate.to_dict() of each judged version)."""
    t = tables(settings).run_gates
    now = utcnow()
    conn.execute(t.delete().where(t.c.run_id == run_id))
    if versions:
        conn.execute(t.insert(), [dict(
            run_id=run_id, policy=v["policy"], policy_version=int(v["version"]), outcome=v["outcome"],
            shadow=bool(v.get("shadow")), reason=(v.get("reason") or None) and v["reason"][:20_000],
            checks=int(v.get("checks") or 0), failed=int(v.get("failed") or 0), verdicts=int(v.get("verdicts") or 0),
            errors=int(v.get("errors") or 0), positives=int(v.get("positives") or 0), validated_at=now)
            for v in versions])


def gates(engine: Engine | Connection, settings: Settings, run_id: str) -> list[Gate]:
    """The run's gate rows, by policy and version ([] for a run never validated, or validated before 0007)."""
    t = tables(settings).run_gates
    q = (sa.select(t.c.run_id, t.c.policy, t.c.policy_version, t.c.outcome, t.c.shadow, t.c.reason, t.c.checks,
                   t.c.failed, t.c.verdicts, t.c.errors, t.c.positives, t.c.retry_run_id)
         .where(t.c.run_id == run_id).order_by(t.c.policy, t.c.policy_version))
    if isinstance(engine, Connection):
        return [Gate(*r) for r in engine.execute(q)]
    with engine.connect() as conn:
        return [Gate(*r) for r in conn.execute(q)]


def set_retry(conn: Connection, settings: Settings, run_id: str, refs: Iterable[tuple[str, int]],
              retry_run_id: str) -> None:
    """Note on the quarantined versions `refs` of `run_id` which run relabels them."""
    t = tables(settings).run_gates
    for name, version in refs:
        conn.execute(t.update().where(t.c.run_id == run_id, t.c.policy == name, t.c.policy_version == int(version))
                     .values(retry_run_id=retry_run_id))
