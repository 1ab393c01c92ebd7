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


# --- promotion with a person in the loop (the relabel DAG's approval task) -----------------------------


@dataclass
class ApprovalRequest:
    """What the approver reads: a subject line and a Markdown body (the diff and eval figures, the gate's
    problems, a link to the diff page), and the versions their answer decides."""

    subject: str
    body: str
    candidates: list[dict[str, Any]]


def awaiting_approval(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shadow versions a relabel run reviewed and did not promote itself (policy_change.review_version)."""
    return [s for s in summaries or [] if s.get("shadow") and s.get("compared_with") is not None
            and str(s.get("outcome", "")).startswith("awaiting")]


def approval_request(engine: Engine, settings: Settings, summaries: list[dict[str, Any]],
                     base_url: str = "") -> ApprovalRequest | None:
    """The question for the approver, with the promotion gate's figures as they are now; None when no
    version awaits a decision."""
    candidates = awaiting_approval(summaries)
    if not candidates:
        return None
    parts, names, refused = [], [], False
    for s in candidates:
        policy, version, current = s["policy"], int(s["version"]), s["compared_with"]
        gate = check_promotion_gate(engine, settings, policy, version)
        refused |= not gate.passed
        f = gate.figures
        old, new = min(current, version), max(current, version)
        link = f"{base_url.rstrip('/')}/safeguard/diff/{policy}/{old}/{new}"
        names.append(f"{policy} v{version}")
        lines = [f"### {policy}: v{current} -> v{version}",
                 f"- Diff page: [{policy} v{old} vs v{new}]({link})",
                 f"- Promotion gate: **{'passed' if gate.passed else 'refused'}**"]
        lines += [f"  - {p}" for p in gate.problems]
        flips = f.get("flips")
        if f.get("both_labelled"):
            lines.append(f"- Flips: {flips} of {f['both_labelled']} items both versions labelled "
                         f"({_pct(f.get('flip_rate'))}; to violating {f.get('to_positive')}, to safe {f.get('to_safe')}), "
                         f"limit {_pct(f.get('max_flip_rate'))}")
        else:
            lines.append("- Flips: no item labelled by both versions yet")
        if "f1_new" in f:
            lines.append(f"- Eval F1 on {f.get('dataset')}: v{current} {f['f1_old']:.3f} -> v{version} {f['f1_new']:.3f} "
                         f"(drop {f['f1_drop']:+.3f}, limit {f.get('max_f1_drop')}); evals {f.get('eval_old')}, {f.get('eval_new')}")
        elif f.get("eval"):
            lines.append(f"- Eval: {f['eval']}")
        if s.get("report"):
            lines.append(f"- Diff report file: `{s['report']}`")
        parts.append("\n".join(lines))
    body = ("Approve to make these shadow versions current (labelling and BI use them from then on); "
            "reject to leave them in shadow. Either answer is recorded in the promotion log with your name."
            + ("\n\nApproving promotes a version whose gate refused it: that is logged as a forced promotion."
               if refused else "") + "\n\n" + "\n\n".join(parts))
    return ApprovalRequest(subject=f"Promote {', '.join(names)}?", body=body, candidates=candidates)


def decide_promotions(engine: Engine, settings: Settings, candidates: list[dict[str, Any]], *, approved: bool,
                      approver: str, where: str) -> list[dict[str, Any]]:
    """The approver's answer, applied and logged with the approver as actor: approved versions become
    current (a forced promotion, with the answer as its reason, where the gate refuses); rejected ones
    stay in shadow, logged as refused. `where` says where the answer was given (for the reason)."""
    out = []
    for s in candidates:
        policy, version = s["policy"], int(s["version"])
        verb = "approved" if approved else "rejected"
        reason = f"{verb} by {approver} ({where})"
        try:
            if approved:
                gate = check_promotion_gate(engine, settings, policy, version)
                outcome, gate = promote(engine, settings, policy, version, approver, force=not gate.passed, reason=reason)
            else:
                gate = check_promotion_gate(engine, settings, policy, version)
                record_promotion(engine, settings, policy, gate.from_version, version, outcome=REFUSED, actor=approver,
                                 figures=gate.figures, problems=[*gate.problems, reason], reason=reason)
                outcome = REFUSED
        except WarehouseError as exc:  # e.g. promoted by hand meanwhile: nothing left to decide
            out.append({"policy": policy, "version": version, "outcome": "unchanged", "note": str(exc)})
            continue
        out.append({"policy": policy, "version": version, "outcome": outcome, "actor": approver})
    return out


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.1%}"
