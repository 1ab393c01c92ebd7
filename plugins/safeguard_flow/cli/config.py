"""`config show`: the settings in force and where each came from."""

from __future__ import annotations

import argparse
import json
import sys

from safeguard_flow.cli.common import settings_from


def register(sub) -> None:
    cfg = sub.add_parser("config", help="the settings in force").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="every setting, its value (secrets masked) and where it came from")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--airflow-connection", metavar="CONN_ID", nargs="?", const="safeguard_warehouse_default",
                   help="also apply this Airflow warehouse connection, as tasks do (default id: %(const)s)")
    p.set_defaults(func=cmd_config_show)


def cmd_config_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safeguard_flow import settings as settings_mod
    from safeguard_flow.console import table
    from safeguard_flow.redact import mask_url

    settings = settings_from(args)
    if args.airflow_connection:
        settings = _with_warehouse_connection(settings, args.airflow_connection)
    rows = settings_mod.describe(settings)
    if args.json:
        print(json.dumps([{"setting": k, "value": v, "source": o} for k, v, o in rows], indent=2, default=str))
    else:
        print(table(["setting", "value", "source"], [[k, json.dumps(v) if not isinstance(v, str) else v, o]
                                                    for k, v, o in rows]))
        print(f"in force: home {settings.home_path}, warehouse {mask_url(settings.warehouse_url)}")
    in_use = {o.removeprefix("yaml ") for _, _, o in rows if o.startswith("yaml ")}
    local = Path("safeguard.yaml").resolve()
    if local.is_file() and str(local) not in in_use:
        print(f"note: {local} is not read (name it with --config or SAFEGUARD_CONFIG)", file=sys.stderr)
    return 0


def _with_warehouse_connection(settings, conn_id: str):
    """The settings as an Airflow task sees them: the warehouse connection's fields applied."""
    try:
        from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook
    except ImportError as exc:
        raise SystemExit(f"--airflow-connection needs Airflow (pip install 'safeguard-flow[airflow]'): {exc}") from None

    return SafeguardWarehouseHook(conn_id, settings=settings).settings
