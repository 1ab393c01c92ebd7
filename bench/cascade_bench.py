"""The cascade on OpenAI's 2022 moderation set, gold labels as the teacher, on rows it never trained on.

The 1,200-row sample (read where it lies, never copied) is cut into --outer folds; for each fold a
cascade per moderation policy is trained (cascade_train.fit_cascade: cross-fitted thresholds, Clopper-
Pearson bound) on the other folds' rows and scores this fold's rows. Every row is so scored by a
cascade that never saw it. Printed per policy and pooled over (item, policy) pairs with a gold label:
share decided, agreement on decided (and its 95% lower bound), F1 of the cascade alone (at 0.5), F1 of
cascade + teacher (the teacher's label where the cascade does not decide; the teacher alone has F1 1
here, so the loss is exactly what the cascade decides wrongly), and seconds per item: the cascade
(embedding + classifier, measured) against the model (the local engine labelling --model-items rows
under one policy, measured; 0 skips it).

    .venv/bin/python bench/cascade_bench.py [--dataset PATH] [--outer 5] [--model-items 16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SET = ROOT.parent / "shared/datasets/openai-moderation-2022/samples-1200.jsonl"
# The Makefile's MODERATION_LABELS: policy -> the set's column.
LABELS = {"sexual": "S", "hate": "H", "violence": "V", "harassment": "HR", "self-harm": "SH",
          "sexual/minors": "S3", "hate/threatening": "H2", "violence/graphic": "V2"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(DEFAULT_SET))
    ap.add_argument("--outer", type=int, default=5, help="folds of rows: train on the others, score this one")
    ap.add_argument("--model-items", type=int, default=16, help="rows the local engine labels for its s/item (0: skip)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--quick", action="store_true", help="same as --model-items 0")
    args = ap.parse_args(argv)

    from sklearn.model_selection import KFold

    from safeguard_flow.engines.cascade import Encoder
    from safeguard_flow.policy_quality.cascade_train import decision_figures, fit_cascade
    from safeguard_flow.settings import load_settings

    path = Path(args.dataset)
    if not path.is_file():
        print(f"moderation set not found at {path} (--dataset)", file=sys.stderr)
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    settings = load_settings()
    texts = [r["prompt"] for r in rows]

    start = time.perf_counter()
    encoder = Encoder(settings)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    x = encoder.embed(texts)
    embed_s = time.perf_counter() - start

    probs = {p: np.full(len(rows), np.nan) for p in LABELS}
    lows = {p: np.full(len(rows), np.nan) for p in LABELS}
    highs = {p: np.full(len(rows), np.nan) for p in LABELS}
    classify_s = 0.0
    fit_s = 0.0
    for train, test in KFold(n_splits=args.outer, shuffle=True, random_state=0).split(x):
        for policy, col in LABELS.items():
            tr = [i for i in train if rows[i].get(col) in (0, 1)]
            t0 = time.perf_counter()
            cascade = fit_cascade(x[tr], [rows[i][col] for i in tr], policy=policy, policy_version=1, settings=settings)
            fit_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            probs[policy][test] = cascade.probabilities(x[test])
            classify_s += time.perf_counter() - t0
            lows[policy][test], highs[policy][test] = cascade.low, cascade.high

    conf = settings.cascade.bound_confidence
    table, pooled_p, pooled_y, pooled_lo, pooled_hi = {}, [], [], [], []
    for policy, col in LABELS.items():
        idx = np.array([i for i, r in enumerate(rows) if r.get(col) in (0, 1)])
        y = np.array([rows[i][col] for i in idx])
        p, lo, hi = probs[policy][idx], lows[policy][idx], highs[policy][idx]
        table[policy] = _figures(decision_figures, p, y, lo, hi, conf)
        pooled_p.append(p), pooled_y.append(y), pooled_lo.append(lo), pooled_hi.append(hi)
    pooled = _figures(decision_figures, np.concatenate(pooled_p), np.concatenate(pooled_y),
                      np.concatenate(pooled_lo), np.concatenate(pooled_hi), conf)
    cascade_s_item = (embed_s + classify_s / args.outer) / len(rows)  # each row is classified once per policy, embedded once
    model_items = 0 if args.quick else args.model_items
    model_s_item = _model_seconds(settings, rows, model_items) if model_items else None

    print(f"cascade on {path.name}: {len(rows)} rows, {args.outer}-fold (each row scored by cascades that never saw it), "
          f"min_agreement {settings.cascade.min_agreement} at {conf:.0%} one-sided bound")
    head = f"{'policy':<18}{'pairs':>6}{'decided':>9}{'agree':>8}{'bound':>8}{'wrong':>6}{'F1 casc':>9}{'F1 c+t':>8}"
    print(head)
    for name, f in [*table.items(), ("POOLED", pooled)]:
        agree = "-" if f["agreement"] is None else f"{f['agreement']:.3f}"
        print(f"{name:<18}{f['items']:>6}{f['share_decided']:>9.1%}{agree:>8}{f['agreement_low']:>8.3f}{f['wrong']:>6}"
              f"{f['f1_cascade_alone']:>9.3f}{f['f1_cascade_teacher']:>8.3f}")
    print(f"seconds per item: cascade {cascade_s_item:.4f} (embedding {embed_s:.1f}s for {len(rows)} rows, "
          f"encoder load {load_s:.1f}s, fitting {fit_s:.1f}s for {args.outer * len(LABELS)} cascades)"
          + (f"; model {model_s_item:.3f} per (item, policy) on the local engine ({settings.model.name}, "
             f"{model_items} items)" if model_s_item is not None else "; model not measured (--model-items 0)"))
    out = {"rows": len(rows), "outer_folds": args.outer, "per_policy": table, "pooled": pooled,
           "cascade_s_per_item": cascade_s_item, "model_s_per_item_policy": model_s_item,
           "embed_s": embed_s, "encoder_load_s": load_s, "fit_s": fit_s}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def _figures(decision_figures, p, y, lo, hi, conf):
    """decision_figures with per-row thresholds (each fold's cascade has its own)."""
    dec1 = p >= hi
    dec0 = (p <= lo) & ~dec1
    # map to a single pair of thresholds on a transformed score: 0 decided, 1 decided, 0.5 neither
    score = np.where(dec1, 1.0, np.where(dec0, 0.0, 0.5))
    f = decision_figures(score, y, 0.0, 1.0, conf)
    f["f1_cascade_alone"] = decision_figures(p, y, -1.0, 2.0, conf)["f1_cascade_alone"]
    return f


def _model_seconds(settings, rows, n: int) -> float | None:
    """Seconds per (item, policy) of the configured local engine on n moderation rows, one policy."""
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.engines import build_engine
    from safeguard_flow.labelling.loop import label_items

    policies = [p for p in load_policy_set(ROOT / "policies") if p.name == "violence"]
    items = [ContentItem.from_raw(r["id"], r["prompt"]) for r in rows[:n]]
    engine = build_engine(settings)
    try:
        label_items(engine, items[:2], policies)  # warm: the first batch pays compilation
        start = time.perf_counter()
        label_items(engine, items, policies)
        return (time.perf_counter() - start) / len(items)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
