"""`safeguard-flow cascade train|show|predict`: the cheap classifier in front of the model (engines/cascade.py)."""

from __future__ import annotations

import json
import sys

from safeguard_flow.cli.common import open_warehouse, settings_from


def register(sub) -> None:
    group = sub.add_parser("cascade", help="train, show and try the cascade that decides clear items before the model")
    cmd = group.add_subparsers(dest="cascade_command", required=True)
    p = cmd.add_parser("train", help="train a policy version's cascade from its verdicts (human decisions win) or a labelled file")
    p.add_argument("--policy", required=True)
    p.add_argument("--version", type=int, help="policy version (default: the active one)")
    p.add_argument("--dataset", help="a labelled .jsonl/.csv file (or warehouse table) instead of the verdicts")
    p.add_argument("--label", help="the dataset's gold column for this policy (or POLICY=COLUMN)")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.set_defaults(func=train)
    p = cmd.add_parser("show", help="a policy's cascades: thresholds and held-out figures; recent runs")
    p.add_argument("policy")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=show)
    p = cmd.add_parser("predict", help="run a policy's cascade on a file: one JSON line per row (id, decided, label, probability)")
    p.add_argument("--policy", required=True)
    p.add_argument("--version", type=int, help="policy version (default: the active one)")
    p.add_argument("--input", required=True, help=".jsonl/.csv file")
    p.add_argument("--output", required=True, help="JSONL output ('-' for stdout)")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.set_defaults(func=predict)


def _version(sql_engine, settings, policy: str, version: int | None) -> int:
    from safeguard_flow.warehouse import policy_store

    return version if version is not None else int(policy_store.get_policies(sql_engine, settings, [(policy, None)])[0].version)


def train(args) -> int:
    from safeguard_flow.engines.cascade import CascadeError
    from safeguard_flow.policy_quality import cascade_train
    from safeguard_flow.policy_quality.datasets import read_dataset
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.warehouse import cascades

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        version = _version(sql_engine, settings, args.policy, args.version)
        if args.dataset:
            if not args.label:
                raise ValueError("--dataset needs --label COLUMN (the gold column for this policy)")
            column = args.label.split("=", 1)[1] if "=" in args.label else args.label
            rows = []
            for r in read_dataset(settings, args.dataset, {args.policy: column}, args.id_column, args.text_column):
                gold = r.gold[args.policy]
                item = ContentItem.from_raw(r.content_id, r.text)
                if gold is not None and item.problem is None:
                    rows.append(cascade_train.TrainingRow(item.content_hash, item.text, gold, "file"))
            source = f"file:{args.dataset}#{column}"
        else:
            rows = cascades.training_rows(sql_engine, settings, args.policy, version)
            source = "verdicts"
        try:
            cascade = cascade_train.train_cascade(rows, policy=args.policy, policy_version=version, settings=settings,
                                                  source=source)
        except CascadeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cascade_id = cascades.save(sql_engine, settings, cascade, actor=_actor())
    h = cascade.meta["heldout"]
    print(f"cascade {cascade_id} for {args.policy} v{version}: {cascade.meta['training_size']} training texts "
          f"({cascade.meta['positives']} positive, from {source}), thresholds {cascade.low:.3f} / {cascade.high:.3f}")
    print(f"held-out (cross-fitted): decides {h['share_decided']:.1%} of items, agreement "
          f"{'-' if h['agreement'] is None else format(h['agreement'], '.3f')} (lower bound {h['agreement_low']:.3f}), "
          f"F1 cascade alone {h['f1_cascade_alone']:.3f}, cascade + teacher {h['f1_cascade_teacher']:.3f}")
    return 0


def _actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in a container: still record the cascade
        return ""


def show(args) -> int:
    from safeguard_flow.warehouse import cascades

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        rows = cascades.listing(sql_engine, settings, args.policy)
        recent = cascades.recent_runs(sql_engine, settings, args.policy)
    if args.json:
        print(json.dumps({"cascades": rows, "runs": recent}, default=str, indent=2))
        return 0
    if not rows:
        print(f"no cascade for {args.policy}: safeguard-flow cascade train --policy {args.policy}")
        return 1
    print(f"{'id':>4} {'version':>7} {'trained on':>10} {'low':>6} {'high':>6} {'decided':>8} {'agree':>6} {'bound':>6}  source")
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        print(f"{r['id']:>4} {r['policy_version']:>7} {r['training_size']:>10} {r['low']:>6.3f} {r['high']:>6.3f} "
              f"{(r['share_decided'] or 0):>8.1%} {agree:>6} {(r['agreement_low'] or 0):>6.3f}  {r['source']}")
    if recent:
        print("\nrecent runs: pairs, decided by the cascade, model calls avoided, audit agreement, stage vs model seconds")
        for r in recent:
            audit = f"{r['audit_agree']}/{r['audited']}" if r["audited"] else "none"
            print(f"  {r['run_id']} v{r['policy_version']}: {r['items']} pairs, {r['decided']} decided, "
                  f"{r['calls_avoided']} calls avoided, audit {audit}, {r['cascade_s']:.1f}s vs {r['model_s']:.1f}s"
                  + (" (switched off by its audit)" if r["chunks_off"] else ""))
    return 0


def predict(args) -> int:
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.engines.cascade import Encoder
    from safeguard_flow.policy_quality.datasets import file_rows
    from safeguard_flow.warehouse import cascades

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        version = _version(sql_engine, settings, args.policy, args.version)
        cascade = cascades.for_version(sql_engine, settings, args.policy, version)
    if cascade is None:
        print(f"error: no cascade trained for {args.policy} v{version} (safeguard-flow cascade train)", file=sys.stderr)
        return 2
    raw = file_rows(args.input, flag="--input")
    items = [ContentItem.from_raw(r.get(args.id_column, n), r.get(args.text_column)) for n, r in enumerate(raw, start=1)]
    good = [i for i, it in enumerate(items) if it.problem is None]
    probs = cascade.probabilities(Encoder(settings).embed([items[i].text for i in good])) if good else []
    decisions = dict(zip(good, cascade.decide(probs)))
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for i, item in enumerate(items):
            d = decisions.get(i)
            line = {"id": item.content_id, "decided": bool(d and d.decided),
                    "probability": None if d is None else round(d.probability, 6)}
            if d is not None and d.decided:
                line["label"] = d.label
            if item.problem is not None:
                line["error"] = item.problem
            out.write(json.dumps(line) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    decided = sum(1 for d in decisions.values() if d.decided)
    print(f"{len(items)} rows, {decided} decided by the cascade ({args.policy} v{version}, cascade {cascade.id})",
          file=sys.stderr)
    return 0
