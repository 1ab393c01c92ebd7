"""What a policy version labelled before: the baseline the validation suite's drift check compares a
run with (its published verdicts, newest first, on the (policy, version, labelled_at) index)."""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa

from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.verdicts import OK
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.schema import tables


def trailing_rates(sql_engine: sa.Engine, settings: Settings, policies: Sequence[Policy],
                   exclude_run_id: str | None = None) -> dict[tuple[str, int], tuple[int, int]]:
    """(positives, labelled) over each policy version's last `quality.drift_window` published labelled
    verdicts (newest first on the (policy, version, labelled_at) index), other runs than `exclude_run_id`."""
    v = tables(settings).verdicts
    out: dict[tuple[str, int], tuple[int, int]] = {}
    with sql_engine.connect() as conn:
        for policy in policies:
            if policy.version is None:
                continue
            recent = (sa.select(v.c.label).where(v.c.policy == policy.name, v.c.policy_version == policy.version,
                                                 v.c.parse_status == OK, v.c.label.is_not(None))
                      .order_by(v.c.labelled_at.desc()).limit(settings.quality.drift_window))
            if exclude_run_id is not None:
                recent = recent.where(v.c.run_id != exclude_run_id)
            recent = recent.subquery()
            positives, labelled = conn.execute(sa.select(
                sa.func.coalesce(sa.func.sum(sa.case((recent.c.label >= 1, 1), else_=0)), 0), sa.func.count()
            ).select_from(recent)).one()
            if labelled:
                out[(policy.name, int(policy.version))] = (int(positives), int(labelled))
    return out
