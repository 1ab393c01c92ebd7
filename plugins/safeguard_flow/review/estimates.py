"""Agreement and an honest production estimate from the random audit sample.

Every audit item was drawn independently with its own probability pi (Poisson sampling: a uniform
rate per stratum, strata by confidence), so each reviewed audit item stands for 1/pi verdicts of
production. Precision, recall and prevalence are ratios of weighted sums; their variance is the
linearised (Taylor) variance of a ratio under Poisson sampling, turned into an effective sample
size and a Wilson interval (which stays inside [0, 1] and behaves near 0 and 1, where Wald does not).
Only audit items count: the doubtful items routed for their own reasons are not a random sample.
Items the reviewers skipped are left out (treated as missing at random within their stratum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

Z95 = 1.959963984540054


@dataclass(frozen=True)
class AuditDecision:
    sampling_prob: float  # pi: the probability this verdict was drawn into the audit sample
    model_positive: bool  # the model's label >= 1 (an error verdict is not a positive)
    human_positive: bool  # the reviewer's decision >= 1


@dataclass(frozen=True)
class Ratio:
    value: float | None
    low: float | None
    high: float | None
    n: int  # audit decisions in the denominator


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def weighted_ratio(pairs: Iterable[tuple[float, float, float]]) -> Ratio:
    """R = sum(w*y) / sum(w*x) over (pi, x, y) with x, y in {0, 1}, y <= x; w = 1/pi."""
    rows = [(pi, x, y) for pi, x, y in pairs if x]
    if not rows:
        return Ratio(None, None, None, 0)
    sx = sum(1 / pi for pi, _, _ in rows)
    r = sum(y / pi for pi, _, y in rows) / sx
    var = sum((1 - pi) / pi ** 2 * (y - r) ** 2 for pi, _, y in rows) / sx ** 2
    if all(pi >= 1 for pi, _, _ in rows):  # a census of the population: no sampling error
        return Ratio(r, r, r, len(rows))
    if 0 < r < 1 and var > 0:
        n_eff = r * (1 - r) / var
    else:  # all agree: Kish's effective size of the weights
        n_eff = sx ** 2 / sum(1 / pi ** 2 for pi, _, _ in rows)
    low, high = wilson(r, n_eff)
    return Ratio(r, low, high, len(rows))


def production_estimates(audit: Iterable[AuditDecision]) -> dict[str, Ratio]:
    items = [a for a in audit if 0 < a.sampling_prob <= 1]
    return {
        "prevalence": weighted_ratio((a.sampling_prob, 1, a.human_positive) for a in items),
        "precision": weighted_ratio((a.sampling_prob, a.model_positive, a.model_positive and a.human_positive)
                                    for a in items),
        "recall": weighted_ratio((a.sampling_prob, a.human_positive, a.model_positive and a.human_positive)
                                 for a in items),
    }


def agreement(pairs: Iterable[tuple[int | None, int]]) -> tuple[float | None, int]:
    """Share of (model label, decision) pairs that agree (an error verdict never agrees), and how many."""
    pairs = list(pairs)
    if not pairs:
        return None, 0
    same = sum(1 for model, human in pairs if model is not None and (model >= 1) == (human >= 1))
    return same / len(pairs), len(pairs)
