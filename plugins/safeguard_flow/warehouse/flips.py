"""Label flips between two versions of a policy, over the content both labelled: the counts BI sees
(the `policy_version_diff` view) and flipped examples with both rationales (the verdicts table).
policy_quality.version_diff and the promotion gate read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.schema import tables, view_names


@dataclass(frozen=True)
class FlipCounts:
    compared: int = 0  # content both versions labelled
    both_labelled: int = 0  # ... without an error on either side
    to_positive: int = 0
    to_safe: int = 0
    with_error: int = 0
    content_edited: int = 0

    @property
    def flips(self) -> int:
        return self.to_positive + self.to_safe

    @property
    def flip_rate(self) -> float | None:
        return self.flips / self.both_labelled if self.both_labelled else None


def flip_counts(engine: Engine, settings: Settings, policy: str, old: int, new: int) -> FlipCounts:
    view = sa.table(view_names(settings)["policy_version_diff"], schema=settings.warehouse.db_schema)
    cols = ["compared", "both_labelled", "to_positive", "to_safe", "with_error", "content_edited"]
    q = (sa.select(*[sa.column(c) for c in cols]).select_from(view)
         .where(sa.column("policy") == policy, sa.column("old_version") == old, sa.column("new_version") == new))
    with engine.connect() as conn:
        row = conn.execute(q).one_or_none()
    return FlipCounts() if row is None else FlipCounts(*(int(x or 0) for x in row))


def flip_examples(engine: Engine, settings: Settings, policy: str, old: int, new: int,
                  limit: int = 5) -> list[dict[str, Any]]:
    """Items whose label flipped, each direction in turn, with both versions' rationales."""
    v = tables(settings).verdicts
    a, b = v.alias("a"), v.alias("b")
    base = (sa.select(a.c.source, a.c.content_id, a.c.label.label("old_label"), b.c.label.label("new_label"),
                      a.c.rationale.label("old_rationale"), b.c.rationale.label("new_rationale"),
                      b.c.category.label("new_category"), (a.c.content_hash == b.c.content_hash).label("same_content"))
            .select_from(a.join(b, sa.and_(a.c.source == b.c.source, a.c.content_id == b.c.content_id,
                                           a.c.policy == b.c.policy)))
            .where(a.c.policy == policy, a.c.policy_version == old, b.c.policy_version == new)
            .order_by(a.c.source, a.c.content_id).limit(limit))
    out = []
    with engine.connect() as conn:
        for cond in ((a.c.label == 0) & (b.c.label >= 1), (a.c.label >= 1) & (b.c.label == 0)):
            out += [dict(r._mapping) for r in conn.execute(base.where(cond))]
    for row in out:
        row["same_content"] = bool(row["same_content"])
    return out


def verdict_count(engine: Engine, settings: Settings, policy: str, version: int) -> int:
    """Published verdicts of one policy version (the promotion gate: has the promoted one labelled anything?)."""
    v = tables(settings).verdicts
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(v).where(
            v.c.policy == policy, v.c.policy_version == version)).scalar_one()
