"""`eval` a labelled dataset (metrics, report, eval tables) and `evals list` the stored ones."""

from __future__ import annotations

import argparse

from safeguard_flow.cli.common import open_warehouse, settings_from


def register(sub) -> None:
    p = sub.add_parser("eval", help="label a labelled dataset and score it (metrics.json, report.html, eval table)")
    p.add_argument("--policies", required=True, help="directory of policy .md files")
    p.add_argument("--dataset", required=True, help=".jsonl/.csv file, or a table of the configured warehouse")
    p.add_argument("--label", action="append", metavar="POLICY=COLUMN",
                   help="gold 0/1 column of a policy (repeatable; default: settings evals.policies.*.label_column)")
    p.add_argument("--output", required=True, help="folder for verdicts.jsonl, metrics.json, report.html")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.add_argument("--chunk-size", type=int, default=64, help="rows per engine batch")
    p.set_defaults(func=cmd_eval)
    evals_cmd = sub.add_parser("evals", help="stored evals").add_subparsers(dest="evals_command", required=True)
    p = evals_cmd.add_parser("list", help="evals in the warehouse, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_evals_list)


def cmd_eval(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.policy_quality.eval import run_eval
    from safeguard_flow.policy_quality.datasets import parse_label_map

    settings = settings_from(args)
    result = run_eval(settings, args.policies, args.dataset, args.output, label_flags=parse_label_map(args.label),
                      limit=args.limit, id_column=args.id_column, text_column=args.text_column,
                      chunk_size=args.chunk_size)
    m = result.metrics
    print(table(["policy", "version", "tp", "fp", "fn", "tn", "errors", "skipped", "precision", "recall", "F1", "F1 95% CI"],
                [[name, m["policy_versions"][name]["version"] or "unpublished", p["tp"], p["fp"], p["fn"], p["tn"],
                  p["errors"], p["skipped"], p["precision"], p["recall"], p["f1"],
                  f"[{p['f1_ci'][0]:.2f}, {p['f1_ci'][1]:.2f}]"] for name, p in sorted(m["policies"].items())]))
    print(f"rows scored {m['rows_scored']:,}   multi-policy accuracy {m['multi_policy_accuracy']:.3f}   "
          f"model {m['model']} ({m['engine']})   {m['seconds']:.1f} s")
    print(f"eval {result.eval_id}: {result.output_dir / 'metrics.json'}, report {result.report}")
    return 0


def cmd_evals_list(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.warehouse import evals

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        rows = evals.list_evals(sql_engine, settings, limit=args.limit)
    out = []
    for e in rows:
        m = e["metrics"]
        for name, p in sorted(m["policies"].items()):
            ref = e["policy_refs"].get(name, {})
            out.append([e["id"], f"{e['created_at']:%Y-%m-%d %H:%M}", e["dataset"][-40:], e["model"][-30:], e["engine"],
                        name, ref.get("version") or "unpublished", e["rows_scored"], p["f1"], m["multi_policy_accuracy"]])
    print(table(["eval", "created", "dataset", "model", "engine", "policy", "version", "rows", "F1", "multi acc"], out)
          if out else "no evals yet (run `safeguard-flow eval`)")
    return 0
