"""What a new policy version changes: flips over the content both versions labelled, examples with
their rationales, and, where both versions were evaluated on the same dataset, the F1 change with
McNemar's exact test on the paired predictions.

The flips are read by warehouse.flips (counts from the `policy_version_diff` view, what BI sees);
the CLI (`policies diff`), the relabel flow's review and the reports all use this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from safeguard_flow.policy_quality.metrics import PairedTest, mcnemar_exact
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse import evals
from safeguard_flow.warehouse.errors import WarehouseError
from safeguard_flow.warehouse.flips import FlipCounts, flip_counts, flip_examples
from safeguard_flow.warehouse.policy_store import version_sha


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
