"""`review route|export|import|estimates|queue`: the human review queue from the command line."""

from __future__ import annotations

import argparse
import sys

from safeguard_flow.cli.common import open_warehouse, settings_from


def register(sub) -> None:
    rv = sub.add_parser("review", help="human review: route, export, import, estimates").add_subparsers(
        dest="review_command", required=True)
    p = rv.add_parser("route", help="route a published run's verdicts to the review queue (settings review.*)")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_route)
    p = rv.add_parser("export", help="queue items as JSONL (decided: an eval dataset), Label Studio tasks or Argilla records")
    p.add_argument("--format", required=True, choices=["jsonl", "labelstudio", "argilla"])
    p.add_argument("--output", help="file to write (default: stdout)")
    p.add_argument("--policy", help="only this policy")
    p.add_argument("--status", choices=["open", "decided", "all"],
                   help="which items (default: decided for jsonl, open for labelstudio/argilla)")
    p.set_defaults(func=cmd_export)
    p = rv.add_parser("import", help="decisions from a Label Studio JSON export or Argilla records with responses")
    p.add_argument("file")
    p.set_defaults(func=cmd_import)
    p = rv.add_parser("estimates", help="agreement, and precision/recall/prevalence from the audit sample (95%% CI)")
    p.add_argument("--refresh", action="store_true", help="recompute every policy version first")
    p.set_defaults(func=cmd_estimates)
    p = rv.add_parser("queue", help="open, leased and decided items per policy")
    p.set_defaults(func=cmd_queue)


def cmd_route(args: argparse.Namespace) -> int:
    from safeguard_flow.review.queue import route_run

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        r = route_run(sql_engine, settings, args.run_id)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["by_reason"].items())) or "none"
    print(f"run {r['run_id']}: {r['verdicts']} verdict(s), {r['routed']} routed ({reasons}); "
          f"{r['added']} added to the queue, {r['reopened']} reopened, {r['already_queued']} already queued")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from safeguard_flow.review.queue import export_items

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                n = export_items(sql_engine, settings, args.format, out, args.policy, args.status)
            print(f"wrote {n} {args.format} row(s) to {args.output}", file=sys.stderr)
        else:
            export_items(sql_engine, settings, args.format, sys.stdout, args.policy, args.status)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from safeguard_flow.review.queue import import_decisions

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        r = import_decisions(sql_engine, settings, args.file)
    for problem in r["problems"]:
        print(f"skipped: {problem}", file=sys.stderr)
    print(f"imported {r['decisions']} decision(s) from {args.file}; {len(r['problems'])} row(s) skipped")
    return 1 if r["problems"] and not r["decisions"] else 0


def cmd_estimates(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.review.queue import refresh_estimates
    from safeguard_flow.warehouse import review_store

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        if args.refresh:
            refresh_estimates(sql_engine, settings)
        rows = review_store.read_estimates(sql_engine, settings)

    def ci(r, m):
        return "" if r[m] is None else f"{r[m]:.3f} [{r[m + '_low']:.3f}, {r[m + '_high']:.3f}]"

    print(table(["policy", "version", "decisions", "agreement", "audit decided/items", "precision (95% CI)",
                 "recall (95% CI)", "prevalence (95% CI)"],
                [[r["policy"], r["policy_version"], r["decisions"],
                  "" if r["agreement"] is None else f"{r['agreement']:.3f}", f"{r['audit_decided']}/{r['audit_items']}",
                  ci(r, "precision"), ci(r, "recall"), ci(r, "prevalence")] for r in rows]))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.warehouse import review_store

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        rows = review_store.queue_summary(sql_engine, settings)
    print(table(["policy", "open", "leased now", "decided"], [[r["policy"], r["open"], r["leased"], r["decided"]]
                                                               for r in rows]))
    return 0
