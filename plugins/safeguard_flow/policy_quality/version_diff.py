"""What a new policy version changes: flips over the content both versions labelled, examples with
their rationales, and, where both versions were evaluated on the same dataset, the F1 change with
McNemar's exact test on the paired predictions.

The flip counts are read from the `policy_version_diff` view (what BI sees); the CLI
(`policies diff`), the promotion gate and the reports all use this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.policy_quality.metrics import PairedTest, mcnemar_exact
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse import evals
from safeguard_flow.warehouse.errors import WarehouseError
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


@dataclass(frozen=True)
class EvalComparison:
    dataset: str
    old_eval: str
    new_eval: str
    old_f1: float
    new_f1: float
    old_ci: tuple[float, float]
    new_ci: tuple[float, float]
    same_rows: bool  # both evals scored the same rows (dataset_sha256)
    test: PairedTest

    @property
    def f1_change(self) -> float:
        return self.new_f1 - self.old_f1


@dataclass
class VersionDiff:
    policy: str
    old_version: int
    new_version: int
    flips: FlipCounts
    examples: list[dict[str, Any]] = field(default_factory=list)
    evals: list[EvalComparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "old_version": self.old_version, "new_version": self.new_version,
            "flips": {**self.flips.__dict__, "flips": self.flips.flips, "flip_rate": self.flips.flip_rate},
            "examples": self.examples,
            "evals": [{**{k: v for k, v in e.__dict__.items() if k != "test"}, "f1_change": e.f1_change,
                       "mcnemar": e.test.__dict__} for e in self.evals],
        }


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


def version_sha(engine: Engine, settings: Settings, policy: str, version: int) -> str:
    t = tables(settings).policy_versions
    with engine.connect() as conn:
        sha = conn.execute(sa.select(t.c.sha256).where(t.c.name == policy, t.c.version == version)).scalar_one_or_none()
    if sha is None:
        raise WarehouseError(f"policy {policy!r} has no stored version {version}")
    return sha


def eval_comparisons(engine: Engine, settings: Settings, policy: str, old_sha: str, new_sha: str,
                     dataset: str | None = None) -> list[EvalComparison]:
    """Per dataset both texts were evaluated on: the newest eval of each, and McNemar's test on the
    predictions paired by content id (rows with a gold label in both)."""
    old_scores = evals.scores_for(engine, settings, policy, old_sha, dataset)
    new_scores = evals.scores_for(engine, settings, policy, new_sha, dataset)
    newest_old = {}
    for s in old_scores:
        newest_old.setdefault(s.dataset, s)
    out, done = [], set()
    for n in new_scores:
        o = newest_old.get(n.dataset)
        if o is None or n.dataset in done:
            continue
        done.add(n.dataset)
        old_pred = evals.predictions(engine, settings, o.eval_id, policy)
        new_pred = evals.predictions(engine, settings, n.eval_id, policy)
        ids = sorted(k for k in old_pred.keys() & new_pred.keys() if old_pred[k][0] == new_pred[k][0])
        test = mcnemar_exact([old_pred[k][0] for k in ids], [old_pred[k][1] for k in ids], [new_pred[k][1] for k in ids])
        out.append(EvalComparison(n.dataset, o.eval_id, n.eval_id, o.f1, n.f1, (o.f1_low, o.f1_high),
                                  (n.f1_low, n.f1_high), o.dataset_sha256 == n.dataset_sha256, test))
    return out


def compare_versions(engine: Engine, settings: Settings, policy: str, old: int, new: int,
                     examples: int = 5) -> VersionDiff:
    if not old < new:
        raise WarehouseError(f"policies diff: V_OLD ({old}) must be an older version than V_NEW ({new})")
    old_sha, new_sha = version_sha(engine, settings, policy, old), version_sha(engine, settings, policy, new)
    return VersionDiff(policy, old, new, flip_counts(engine, settings, policy, old, new),
                       flip_examples(engine, settings, policy, old, new, examples),
                       eval_comparisons(engine, settings, policy, old_sha, new_sha))
