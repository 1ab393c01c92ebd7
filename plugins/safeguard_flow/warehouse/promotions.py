"""The promotion log (<prefix>policy_promotions) and the promotion itself: a shadow (or older) version
becoming the policy's current version. Whether it may is the promotion gate's decision
(policy_quality.promotion_gate); this module records that decision and applies it.
"""

from __future__ import annotations

from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import utcnow, write_tx
from safeguard_flow.warehouse.errors import WarehouseError
from safeguard_flow.warehouse.schema import tables

PROMOTED, REFUSED, FORCED = "promoted", "refused", "forced"


def record_promotion(engine: Engine, settings: Settings, policy: str, from_version: int | None, to_version: int, *,
                     outcome: str, actor: str, figures: dict[str, Any], problems: Sequence[str],
                     reason: str | None) -> dict[str, Any]:
    """Log one promotion attempt and, unless it was refused, make `to_version` current (no longer the
    shadow) in the same transaction; raises when the current version moved since the promotion gate
    read it. Returns the figures as logged: with a note when a pin, not the promotion, decides what BI sees."""
    t = tables(settings)
    now = utcnow()
    figures = {k: (float(v) if isinstance(v, float) else v) for k, v in figures.items()}  # numpy floats: JSON
    with write_tx(engine) as conn:
        if outcome != REFUSED:
            head = conn.execute(sa.select(t.policies).where(t.policies.c.name == policy).with_for_update()).one()
            if head.current_version != from_version:
                raise WarehouseError(f"policy {policy!r} changed meanwhile (current v{head.current_version}): try again")
            conn.execute(t.policies.update().where(t.policies.c.name == policy).values(
                current_version=to_version, updated_at=now,
                shadow_version=None if head.shadow_version == to_version else head.shadow_version))
            if head.pinned_version is not None:
                figures["note"] = f"pinned to v{head.pinned_version}: the pin still decides what BI sees"
        conn.execute(t.policy_promotions.insert().values(
            policy=policy, from_version=from_version, to_version=to_version, outcome=outcome, actor=actor,
            figures=figures, problems=list(problems), reason=reason, created_at=now))
    return figures


def list_promotions(engine: Engine, settings: Settings, policy: str | None = None, limit: int = 50) -> list[dict]:
    """The promotion log, newest first: promotions, refusals and forced promotions."""
    t = tables(settings).policy_promotions
    q = sa.select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
    if policy:
        q = q.where(t.c.policy == policy)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
