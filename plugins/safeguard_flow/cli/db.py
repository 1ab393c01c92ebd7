"""`db upgrade|current|grant-bi`: the warehouse schema, and a read-only role for BI tools."""

from __future__ import annotations

import argparse

from safeguard_flow.cli.common import settings_from


def register(sub) -> None:
    db = sub.add_parser("db", help="warehouse schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)
    grant = db.add_parser("grant-bi", help="let a role read the BI views and nothing else (PostgreSQL, MySQL)")
    grant.add_argument("role", help="an existing PostgreSQL role, or MySQL account (user, user@host) or role")
    grant.set_defaults(func=cmd_db_grant_bi)


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


def cmd_db_grant_bi(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from safeguard_flow.warehouse.bi_role import BiRoleError, grant_bi
    from safeguard_flow.warehouse.db import make_engine

    settings = settings_from(args)
    engine = make_engine(settings)
    try:
        grant = grant_bi(engine, settings, args.role)
    except BiRoleError as exc:
        print(f"db grant-bi: {exc}")
        return 2
    except sa.exc.DBAPIError as exc:
        print(f"db grant-bi: the database refused: {exc.orig} (run it as the role that ran `db upgrade`)")
        return 2
    finally:
        engine.dispose()
    print(f"{grant.role} may SELECT from: {', '.join(grant.views)}")
    if grant.revoked_tables:
        print(f"and has no privilege on the {len(grant.revoked_tables)} safeguard table(s) behind them")
    if grant.session_settings:
        print(f"its sessions default to: {', '.join(grant.session_settings)}")
    for warning in grant.warnings:
        print(f"warning: {warning}")
    print("run it again after `db upgrade` (a recreated view loses its grants)")
    return 0
