"""Training a policy version's cascade: embeddings -> calibrated logistic regression -> two thresholds.

The thresholds are chosen on held-out predictions: the training rows are cut into `cascade.folds`
folds and each row is scored by a model fitted without its fold (cross-fitting), so every row is a
held-out row once. On those predictions, the low threshold is the largest probability such that the
items at or under it agree with the teacher's 0 by a one-sided Clopper-Pearson lower bound of at least
`cascade.min_agreement` (at level `cascade.bound_confidence`), the high threshold likewise for 1. Each
side is held to the bound on its own, so a rare label is never decided on the back of the common one.
The regularisation is picked from a small grid by the share of items it lets the cascade decide; the
stored model is then fitted on every training row.

Training labels: a labelled file, or a policy version's verdicts where a reviewer's decision, if any,
wins (training_rows_from_verdicts). Imports no Ray, vLLM or Airflow; scikit-learn when fitting.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from safeguard_flow.engines.cascade import Cascade, CascadeError, Encoder, members_from_sklearn
from safeguard_flow.settings import Settings

C_GRID = (0.5, 2.0, 8.0)
CALIBRATION_FOLDS = 3
MIN_PER_CLASS = 8  # fewer examples of a label than this: no model can be fitted (nor checked)


@dataclass
class TrainingRow:
    content_hash: str
    text: str
    label: int  # the teacher's (0/1)
    source: str = "model"  # model | human | file


def lower_bound(agree: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a proportion agree/n (0 when n == 0)."""
    from scipy.stats import beta

    if n == 0 or agree == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, agree, n - agree + 1))


def _side(order: np.ndarray, probs: np.ndarray, hits: np.ndarray, min_agreement: float,
          confidence: float, side: int) -> tuple[int, float]:
    """How many items, taken in `order`, may be decided (the longest prefix whose lower bound clears
    min_agreement, cut only between distinct probabilities), and the probability at the cut."""
    from scipy.stats import beta

    if len(order) == 0:
        return 0, float("nan")
    agree = np.cumsum(hits[order])
    p_sorted = probs[order]
    n = np.arange(1, len(order) + 1)
    with np.errstate(all="ignore"):
        bound = np.where(agree > 0, beta.ppf(1.0 - confidence, np.maximum(agree, 1), n - agree + 1), 0.0)
    # a cut between two equal probabilities is not a threshold: ties decide together
    cuttable = np.append(p_sorted[1:] != p_sorted[:-1], True)
    # a side never reaches past 0.5: the cascade never decides against its own classifier's lean
    lean = p_sorted < 0.5 if side == 0 else p_sorted > 0.5
    ok = np.flatnonzero((bound >= min_agreement) & cuttable & lean)
    if len(ok) == 0:
        return 0, float("nan")
    best = int(ok[-1]) + 1
    cut = float(p_sorted[best - 1])
    return best, cut


def choose_thresholds(probs: Sequence[float], labels: Sequence[int], min_agreement: float,
                      confidence: float) -> tuple[float, float, dict[str, Any]]:
    """(low, high, figures) from held-out probabilities and the teacher's labels. low = -1 or high = 2
    means that side decides nothing."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n_low, low = _side(np.argsort(p, kind="stable"), p, (y == 0).astype(np.int64), min_agreement, confidence, 0)
    n_high, high = _side(np.argsort(-p, kind="stable"), p, (y == 1).astype(np.int64), min_agreement, confidence, 1)
    low = low if n_low else -1.0
    high = high if n_high else 2.0
    return low, high, decision_figures(p, y, low, high, confidence)


def decision_figures(p: np.ndarray, y: np.ndarray, low: float, high: float, confidence: float) -> dict[str, Any]:
    """Share decided, agreement (and its lower bound) per side and together, and F1 of the cascade
    alone (at 0.5) and of cascade + teacher (the teacher's label wherever the cascade does not decide)."""
    dec0, dec1 = p <= low, p >= high
    decided = dec0 | dec1
    pred = np.where(dec1, 1, np.where(dec0, 0, -1))
    agree = int(((pred == y) & decided).sum())
    n = int(decided.sum())
    combined = np.where(decided, pred, y)
    return {
        "items": int(len(y)), "positives": int(y.sum()),
        "decided": n, "share_decided": n / len(y) if len(y) else 0.0,
        "decided_0": int(dec0.sum()), "agree_0": int((dec0 & (y == 0)).sum()),
        "decided_1": int(dec1.sum()), "agree_1": int((dec1 & (y == 1)).sum()),
        "agreement": agree / n if n else None, "agreement_low": lower_bound(agree, n, confidence),
        "agreement_0_low": lower_bound(int((dec0 & (y == 0)).sum()), int(dec0.sum()), confidence),
        "agreement_1_low": lower_bound(int((dec1 & (y == 1)).sum()), int(dec1.sum()), confidence),
        "f1_cascade_alone": f1(y, (p >= 0.5).astype(np.int64)),
        "f1_cascade_teacher": f1(y, combined),
        "wrong": n - agree,
    }


def f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _model(c: float, seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    return CalibratedClassifierCV(LogisticRegression(C=c, max_iter=5000, random_state=seed),
                                  method="sigmoid", cv=CALIBRATION_FOLDS)


def _out_of_fold(x: np.ndarray, y: np.ndarray, c: float, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        oof[test] = _model(c, seed).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return oof


def fit_cascade(embeddings: np.ndarray, labels: Sequence[int], *, policy: str, policy_version: int,
                settings: Settings, meta: dict[str, Any] | None = None) -> Cascade:
    """Fit the classifier and choose its thresholds (see the module docstring)."""
    cfg = settings.cascade
    y = np.asarray(labels, dtype=np.int64)
    if set(np.unique(y)) - {0, 1}:
        raise CascadeError(f"{policy} v{policy_version}: the teacher's labels must be 0/1, got {sorted(set(y.tolist()))}")
    counts = {k: int((y == k).sum()) for k in (0, 1)}
    if min(counts.values()) < max(MIN_PER_CLASS, cfg.folds):
        raise CascadeError(f"{policy} v{policy_version}: {counts[0]} items labelled 0 and {counts[1]} labelled 1; "
                           f"a cascade needs at least {max(MIN_PER_CLASS, cfg.folds)} of each")
    started = time.perf_counter()
    best = None
    for c in C_GRID:
        oof = _out_of_fold(embeddings, y, c, cfg.folds, cfg.seed)
        low, high, figures = choose_thresholds(oof, y, cfg.min_agreement, cfg.bound_confidence)
        if best is None or figures["decided"] > best[3]["decided"]:
            best = (c, low, high, figures)
    c, low, high, figures = best
    final = _model(c, cfg.seed).fit(embeddings, y)
    info = dict(meta or {})
    info.update(training_size=int(len(y)), positives=counts[1], c=c, folds=cfg.folds,
                min_agreement=cfg.min_agreement, bound_confidence=cfg.bound_confidence,
                heldout=figures, fit_s=round(time.perf_counter() - started, 2),
                trained_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return Cascade(policy=policy, policy_version=int(policy_version), members=members_from_sklearn(final),
                   low=float(low), high=float(high), meta=info)


def training_hash(rows: Sequence[TrainingRow]) -> str:
    """sha256 over the sorted (text hash, label) pairs: the same training set, the same hash."""
    h = hashlib.sha256()
    for content_hash, label in sorted((r.content_hash, int(r.label)) for r in rows):
        h.update(f"{content_hash}\t{label}\n".encode())
    return h.hexdigest()


def train_cascade(rows: Sequence[TrainingRow], *, policy: str, policy_version: int, settings: Settings,
                  encoder: Encoder | None = None, source: str = "verdicts") -> Cascade:
    """Embed the rows' texts (one text once) and fit; the cascade's meta records size, hash and source."""
    by_hash: dict[str, TrainingRow] = {}
    for r in rows:  # a text labelled twice keeps its last label (callers put human decisions last)
        by_hash[r.content_hash] = r
    unique = list(by_hash.values())
    encoder = encoder or Encoder(settings)
    started = time.perf_counter()
    x = encoder.embed([r.text for r in unique])
    embed_s = time.perf_counter() - started
    sources: dict[str, int] = {}
    for r in unique:
        sources[r.source] = sources.get(r.source, 0) + 1
    return fit_cascade(x, [r.label for r in unique], policy=policy, policy_version=policy_version, settings=settings,
                       meta={"training_sha256": training_hash(unique), "source": source, "label_sources": sources,
                             "embed_s": round(embed_s, 2)})
