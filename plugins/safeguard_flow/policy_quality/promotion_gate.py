"""The promotion gate: may a (shadow) policy version become the one BI and labelling use?

The promotion gate compares the candidate with the promoted version (the policy's current_version):
- eval F1 on the policy's eval dataset (settings evals.policies.<name>): refused when it drops by
  more than policy_gate.max_f1_drop, or when either version has no eval there (policy_gate.require_eval);
- flip rate over the content both versions labelled: refused above policy_gate.max_flip_rate, or when
  the promoted version has verdicts but the candidate labelled none of that content yet.
`force` (with a reason) promotes anyway. Every promotion, refusal and forced promotion is a row of
the promotion log (warehouse.promotions): who, when, the figures, the gate's problems and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from safeguard_flow.policy_quality.datasets import dataset_key
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse import evals
from safeguard_flow.warehouse.errors import WarehouseError
from safeguard_flow.warehouse.flips import flip_counts, verdict_count
from safeguard_flow.warehouse.policy_store import get_head, version_sha
from safeguard_flow.warehouse.promotions import FORCED, PROMOTED, REFUSED, record_promotion


class PromotionRefused(WarehouseError):
    def __init__(self, gate: PromotionGateResult):
        self.gate = gate
        super().__init__(f"promotion of {gate.policy} v{gate.to_version} refused: " + "; ".join(gate.problems)
                         + " (use --force --reason TEXT to promote anyway)")


@dataclass
class PromotionGateResult:
    policy: str
    from_version: int | None
    to_version: int
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def check_promotion_gate(engine: Engine, settings: Settings, policy: str, version: int) -> PromotionGateResult:
    gate = settings.policy_gate
    head = get_head(engine, settings, policy)
    if head is None:
        raise WarehouseError(f"policy {policy!r} is not published in the warehouse")
    new_sha = version_sha(engine, settings, policy, version)  # raises for an unknown version
    current = head.current_version
    if current == version:
        raise WarehouseError(f"policy {policy!r} v{version} is already the promoted version")
    result = PromotionGateResult(policy, current, version, figures={
        "max_f1_drop": gate.max_f1_drop, "max_flip_rate": gate.max_flip_rate})
    if current is None:
        result.figures["note"] = "no promoted version yet: nothing to compare with"
        return result

    cfg = settings.evals.policies.get(policy)
    if cfg is None:
        result.figures["eval"] = f"no eval dataset configured (settings evals.policies.{policy})"
    else:
        dataset = dataset_key(cfg.dataset)
        old_sha = version_sha(engine, settings, policy, current)
        old = next(iter(evals.scores_for(engine, settings, policy, old_sha, dataset)), None)
        new = next(iter(evals.scores_for(engine, settings, policy, new_sha, dataset)), None)
        result.figures["dataset"] = dataset
        missing = [f"v{v}" for v, s in ((current, old), (version, new)) if s is None]
        if missing:
            if gate.require_eval:
                result.problems.append(f"no eval of {' and '.join(missing)} on {dataset} "
                                       f"(run `safeguard-flow eval`, or set policy_gate.require_eval false)")
        else:
            drop = old.f1 - new.f1
            result.figures.update(f1_old=old.f1, f1_new=new.f1, f1_drop=drop, eval_old=old.eval_id, eval_new=new.eval_id)
            if old.dataset_sha256 != new.dataset_sha256:
                result.problems.append(f"the evals of v{current} ({old.eval_id}) and v{version} ({new.eval_id}) "
                                       "scored different rows of the dataset: evaluate both on the same rows")
            elif drop > gate.max_f1_drop:
                result.problems.append(f"eval F1 drops by {drop:.3f} ({old.f1:.3f} -> {new.f1:.3f}), more than "
                                       f"policy_gate.max_f1_drop {gate.max_f1_drop}")

    flips = flip_counts(engine, settings, policy, min(current, version), max(current, version))
    result.figures.update(compared=flips.compared, both_labelled=flips.both_labelled, flips=flips.flips,
                          to_positive=flips.to_positive, to_safe=flips.to_safe, flip_rate=flips.flip_rate)
    if flips.flip_rate is None:
        has_old = verdict_count(engine, settings, policy, current)
        if has_old:
            result.problems.append(f"v{version} has labelled none of the {has_old} item(s) v{current} labelled: "
                                   "relabel in shadow first, so the flip rate can be measured")
    elif flips.flip_rate > gate.max_flip_rate:
        result.problems.append(f"flip rate {flips.flip_rate:.1%} ({flips.flips} of {flips.both_labelled}) exceeds "
                               f"policy_gate.max_flip_rate {gate.max_flip_rate:.1%}")
    return result


def promote(engine: Engine, settings: Settings, policy: str, version: int, actor: str, *, force: bool = False,
            reason: str | None = None) -> tuple[str, PromotionGateResult]:
    """Promote `version` when the promotion gate passes (or when forced with a reason); returns
    (outcome, gate). A refusal is recorded and raises PromotionRefused."""
    if force and not (reason or "").strip():
        raise WarehouseError("a forced promotion needs a reason (--reason TEXT)")
    gate = check_promotion_gate(engine, settings, policy, version)
    outcome = PROMOTED if gate.passed else (FORCED if force else REFUSED)
    gate.figures = record_promotion(engine, settings, policy, gate.from_version, version, outcome=outcome, actor=actor,
                                    figures=gate.figures, problems=gate.problems, reason=reason)
    if outcome == REFUSED:
        raise PromotionRefused(gate)
    return outcome, gate
