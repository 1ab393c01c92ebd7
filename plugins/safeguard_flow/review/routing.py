"""Which published verdicts go to the review queue, and why (settings ``review.*``).

A verdict is routed for every reason that applies; the queue entry keeps them all, its `reason` is
the most urgent and its priority that reason's (higher first):

- ``disagrees_with_human`` (100): a reviewer decided the same text for this policy and the model now
  says otherwise. The decision keeps winning for its version; a newer version's verdict is flagged
  here instead of silently replacing it.
- ``error`` (80): no label (the model's output did not parse, or the item could not be labelled).
- ``cascade_disagreement`` (70): the cascade decided the item and the model, asked for audit, did not
  agree (``extra["cascade"]["label"]`` on the model's verdict).
- ``low_confidence`` (60 + up to 9, the lower the more urgent): confidence under
  ``review.confidence_below``.
- ``flip`` (50): the label differs from this item's verdict under the previous policy version.
- ``audit`` (40): drawn into the uniform random audit sample of its policy version, with probability
  ``review.audit_rate`` (``review.audit_rate_doubtful`` in the doubtful stratum). The draw is a hash
  of the item and ``review.seed``: routing the same run again draws the same items, and every entry
  keeps its probability so estimates weight by it (review/estimates.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from safeguard_flow.settings import ReviewSettings

PRIORITY = {"disagrees_with_human": 100, "error": 80, "cascade_disagreement": 70, "low_confidence": 60,
            "flip": 50, "audit": 40}
REASONS = tuple(PRIORITY)


@dataclass(frozen=True)
class PublishedVerdict:
    """What routing reads of one published verdict (warehouse/review_store.py fills it)."""

    source: str
    content_id: str
    policy: str
    policy_version: int
    content_hash: str
    label: int | None
    confidence: float | None
    parse_status: str
    decided_by: str = "model"
    extra: Mapping[str, Any] | None = None
    previous_label: int | None = None  # this item's label under the previous stored version, if any
    human_label: int | None = None  # the newest reviewer decision on this text for this policy, if any


@dataclass(frozen=True)
class Routing:
    reasons: tuple[str, ...]
    priority: int
    audit: bool
    sampling_prob: float
    stratum: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.reasons[0]


def _positive(label: int | None) -> bool | None:
    return None if label is None else label >= 1


def stratum(v: PublishedVerdict, rules: ReviewSettings) -> str:
    doubtful = v.label is None or v.confidence is None or v.confidence < rules.confidence_below
    return "doubtful" if doubtful else "confident"


def sampling_prob(v: PublishedVerdict, rules: ReviewSettings) -> float:
    if stratum(v, rules) == "doubtful" and rules.audit_rate_doubtful is not None:
        return rules.audit_rate_doubtful
    return rules.audit_rate


def audit_draw(v: PublishedVerdict, seed: str) -> float:
    """A uniform number in [0, 1) fixed by the verdict's identity (and the seed), not by the run."""
    key = "\x1f".join((seed, v.source, v.content_id, v.policy, str(v.policy_version), v.content_hash))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64


def cascade_label(v: PublishedVerdict) -> int | None:
    cascade = (v.extra or {}).get("cascade") if isinstance(v.extra, Mapping) else None
    if isinstance(cascade, Mapping) and isinstance(cascade.get("label"), int) and not isinstance(cascade["label"], bool):
        return cascade["label"]
    return None


def route(v: PublishedVerdict, rules: ReviewSettings) -> Routing:
    """The reasons this verdict should be reviewed (empty reasons: it stays out of the queue)."""
    reasons: list[str] = []
    details: dict[str, Any] = {}
    model = _positive(v.label)
    if v.human_label is not None and model != _positive(v.human_label):
        reasons.append("disagrees_with_human")
        details["human_label"] = v.human_label
    if v.label is None or v.parse_status != "ok":
        reasons.append("error")
    cascade = cascade_label(v)
    if cascade is not None and v.decided_by != "cascade" and _positive(cascade) != model:
        reasons.append("cascade_disagreement")
        details["cascade_label"] = cascade
    if v.label is not None and v.confidence is not None and v.confidence < rules.confidence_below:
        reasons.append("low_confidence")
    if rules.route_flips and v.previous_label is not None and v.label is not None \
            and _positive(v.previous_label) != model:
        reasons.append("flip")
        details["previous_label"] = v.previous_label
    prob = sampling_prob(v, rules)
    audit = prob > 0 and audit_draw(v, rules.seed) < prob
    if audit:
        reasons.append("audit")
    reasons.sort(key=lambda r: -PRIORITY[r])
    priority = PRIORITY[reasons[0]] if reasons else 0
    if reasons and reasons[0] == "low_confidence":
        priority += min(9, int((1 - (v.confidence or 0) / max(rules.confidence_below, 1e-9)) * 10))
    return Routing(tuple(reasons), priority, audit, prob, stratum(v, rules), details)
