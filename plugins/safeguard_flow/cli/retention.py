"""`safeguard-flow retention`: purge what runs leave behind, as `retention.*` says (warehouse/retention.py)."""

from __future__ import annotations

import argparse
import json

from safeguard_flow.cli.common import open_warehouse, settings_from


def register(sub) -> None:
    p = sub.add_parser("retention", help="purge text copies, staging, analysis, eval predictions, old reports "
                                         "and logs past retention.* days (runs show keeps answering)")
    p.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_retention)


def cmd_retention(args: argparse.Namespace) -> int:
    from safeguard_flow.warehouse.retention import apply_retention

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        report = apply_retention(sql_engine, settings, dry_run=args.dry_run)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0
