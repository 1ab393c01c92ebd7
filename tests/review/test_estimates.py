"""The audit estimator: its 95% interval covers the true production precision in at least 93 of 100
seeded draws, with the doubtful stratum oversampled (where an unweighted estimate is biased)."""

from __future__ import annotations

import numpy as np
import pytest

from safeguard_flow.review.estimates import AuditDecision, agreement, production_estimates, weighted_ratio


def _draw(seed: int, n: int = 20_000, rates=(0.15, 0.03)):
    """A production population (20% doubtful items, where the model is often wrong) and one audit sample."""
    rng = np.random.default_rng(seed)
    doubtful = rng.random(n) < 0.2
    model = rng.random(n) < np.where(doubtful, 0.5, 0.25)
    truly = rng.random(n) < np.where(model, np.where(doubtful, 0.6, 0.92), np.where(doubtful, 0.2, 0.02))
    pi = np.where(doubtful, *rates)
    drawn = np.flatnonzero(rng.random(n) < pi)
    audit = [AuditDecision(float(pi[i]), bool(model[i]), bool(truly[i])) for i in drawn]
    truth = {"precision": (model & truly).sum() / model.sum(), "recall": (model & truly).sum() / truly.sum(),
             "prevalence": truly.mean()}
    unweighted = (model[drawn] & truly[drawn]).sum() / model[drawn].sum()
    return production_estimates(audit), truth, unweighted


def test_interval_covers_the_true_precision_in_at_least_93_of_100_draws():
    covered = {"precision": 0, "recall": 0, "prevalence": 0}
    bias, naive_bias = [], []
    for seed in range(100):
        est, truth, unweighted = _draw(seed)
        for name in covered:
            covered[name] += est[name].low <= truth[name] <= est[name].high
        bias.append(est["precision"].value - truth["precision"])
        naive_bias.append(unweighted - truth["precision"])
    assert covered["precision"] >= 93, covered
    assert min(covered.values()) >= 90, covered
    assert abs(np.mean(bias)) < 0.01 < abs(np.mean(naive_bias))  # the weights are what makes it honest


def test_small_and_degenerate_samples():
    assert weighted_ratio([]).value is None
    r = weighted_ratio([(0.1, 1, 1)] * 5)  # five positives, all confirmed: 1.0, but not certain
    assert r.value == 1.0 and 0.4 < r.low < 0.9 and r.high == pytest.approx(1.0)
    census = weighted_ratio([(1.0, 1, 1), (1.0, 1, 0)])  # pi = 1: the whole population was reviewed
    assert (census.value, census.low, census.high) == (0.5, 0.5, 0.5)
    assert agreement([(1, 1), (0, 1), (None, 0)]) == (1 / 3, 3)
