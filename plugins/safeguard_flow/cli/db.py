"""`db upgrade|current`: the warehouse schema."""

from __future__ import annotations

import argparse

from safeguard_flow.cli.common import settings_from


def register(sub) -> None:
    db = sub.add_parser("db", help="warehouse schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from safeguard_flow.warehouse import schema

    settings = settings_from(args)
    schema.upgrade(settings)
    print(f"warehouse at revision {schema.current(settings)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from safeguard_flow.warehouse import schema

    print(schema.current(settings_from(args)) or "empty (run `safeguard-flow db upgrade`)")
    return 0
