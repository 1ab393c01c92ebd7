"""`safeguard-flow`: label files, prepare the local model, manage the warehouse schema and policies."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from safeguard_flow.cli import cascade, config, db, evals, label, model, policies, ray, retention, review, run

# In the order the README presents them (`--help` lists them so).
GROUPS = (policies, label, evals, cascade, run, review, retention, config, model, db, ray)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard-flow", description=__doc__)
    parser.add_argument("--config", help="settings YAML file (default: $SAFEGUARD_CONFIG; no file is read implicitly)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from safeguard_flow.domain.policies import PolicyError
    from safeguard_flow.settings import SettingsError
    from safeguard_flow.warehouse.errors import WarehouseError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PolicyError, SettingsError, FileNotFoundError, ValueError, WarehouseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
