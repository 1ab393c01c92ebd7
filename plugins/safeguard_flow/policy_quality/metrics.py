"""Scoring a policy version's verdicts against gold labels: counts, precision, recall, F1 with a
bootstrap interval, multi-policy accuracy, and McNemar's exact test between two versions.

Error verdicts are counted apart (never as a guess of 0), so a policy that makes the model fail to
answer shows up as such instead of as high precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from safeguard_flow.domain.verdicts import Verdict
from safeguard_flow.policy_quality.datasets import LabelledRow


def _outcomes(rows: list[LabelledRow], verdicts: Mapping[tuple[str, str], Verdict], policy: str):
    """Per row: gold (or -1 when skipped), prediction (or -1 when an error verdict)."""
    import numpy as np

    gold = np.full(len(rows), -1, dtype=np.int8)
    pred = np.full(len(rows), -1, dtype=np.int8)
    for i, row in enumerate(rows):
        g = row.gold.get(policy)
        if g is None:
            continue
        gold[i] = g
        v = verdicts.get((row.content_id, policy))
        if v is not None and not v.is_error and v.label is not None:
            pred[i] = 1 if v.label >= 1 else 0
    return gold, pred


def _f1(tp, fp, fn):
    import numpy as np

    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def bootstrap_indices(n: int, samples: int, seed: int):
    """The resampled row indices of the F1 intervals: `samples` draws of n rows with replacement from
    numpy's default_rng(seed), one row of the matrix per draw (documented so it can be recomputed)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def compute_metrics(rows: list[LabelledRow], verdicts: Iterable[Verdict], policies: Iterable[str], *,
                    bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """The metrics.json figures (without model/engine/tokens): per policy tp/fp/fn/tn, errors, skipped,
    precision, recall, F1 and a 95% bootstrap interval of F1 over rows; multi-policy accuracy.

    A gold label other than 0/1 skips the row for that policy. An error verdict is counted apart
    (never as a 0) and, for multi-policy accuracy, as a mismatch. Rows with no gold label for any
    policy are not scored. The interval resamples the scored rows (bootstrap_indices) and takes the
    2.5th and 97.5th percentiles of F1 over the draws.
    """
    import numpy as np

    policies = list(policies)
    by_key = {(v.content_id, v.policy): v for v in verdicts}
    scored = [r for r in rows if any(r.gold.get(p) is not None for p in policies)]
    n = len(scored)
    idx = bootstrap_indices(n, bootstrap_samples, seed) if n else None
    out: dict = {"policies": {}}
    all_match = np.ones(n, dtype=bool)
    for policy in policies:
        gold, pred = _outcomes(scored, by_key, policy)
        has_gold = gold >= 0
        ok = has_gold & (pred >= 0)
        tp = ok & (gold == 1) & (pred == 1)
        fp = ok & (gold == 0) & (pred == 1)
        fn = ok & (gold == 1) & (pred == 0)
        tn = ok & (gold == 0) & (pred == 0)
        all_match &= ~has_gold | (ok & (gold == pred))
        counts = {k: int(a.sum()) for k, a in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn))}
        precision = counts["tp"] / (counts["tp"] + counts["fp"]) if counts["tp"] + counts["fp"] else 0.0
        recall = counts["tp"] / (counts["tp"] + counts["fn"]) if counts["tp"] + counts["fn"] else 0.0
        f1 = float(_f1(counts["tp"], counts["fp"], counts["fn"]))
        if n:
            draws = _f1(tp[idx].sum(axis=1), fp[idx].sum(axis=1), fn[idx].sum(axis=1))
            low, high = (float(x) for x in np.percentile(draws, [2.5, 97.5]))
        else:
            low = high = 0.0
        out["policies"][policy] = {
            **counts,
            "errors": int((has_gold & (pred < 0)).sum()),
            "skipped": int(len(rows) - has_gold.sum()),
            "precision": precision, "recall": recall, "f1": f1, "f1_ci": [low, high],
        }
    out["multi_policy_accuracy"] = float(all_match.mean()) if n else 0.0
    out["rows_scored"] = n
    out["bootstrap"] = {"samples": bootstrap_samples, "seed": seed}
    return out


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test on paired predictions of two versions over the same gold labels."""

    pairs: int  # rows with a gold label in both evals
    old_only_correct: int  # b: the old version right, the new one wrong
    new_only_correct: int  # c
    p_value: float


def mcnemar_exact(gold: list[int], old_pred: list[int | None], new_pred: list[int | None]) -> PairedTest:
    """Two-sided exact McNemar test (a binomial test on the discordant pairs). An error prediction
    (None) counts as wrong, as in multi-policy accuracy."""
    from scipy.stats import binomtest

    b = c = 0
    for g, o, n in zip(gold, old_pred, new_pred):
        old_ok, new_ok = o is not None and o == g, n is not None and n == g
        b += old_ok and not new_ok
        c += new_ok and not old_ok
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return PairedTest(len(gold), b, c, p)
