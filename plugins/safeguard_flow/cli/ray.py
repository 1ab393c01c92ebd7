"""`ray start|stop`: the local Ray head (started by tasks when no cluster is configured)."""

from __future__ import annotations

import argparse

from safeguard_flow.cli.common import settings_from


def register(sub) -> None:
    ray = sub.add_parser("ray", help="the local Ray head (started by tasks when no cluster is configured)")
    ray = ray.add_subparsers(dest="ray_command", required=True)
    ray.add_parser("start", help="start the local Ray head (or show the running one)").set_defaults(func=cmd_ray_start)
    ray.add_parser("stop", help="stop the local Ray head this project started").set_defaults(func=cmd_ray_stop)


def cmd_ray_start(args: argparse.Namespace) -> int:
    from safeguard_flow.raylib.cluster import local_head

    head = local_head.ensure_head(settings_from(args))
    print(f"local Ray head running: dashboard {head.dashboard_url}, GCS {head.gcs_address}, pid {head.pid}, "
          f"log {head.log_file}")
    print(f"it listens on loopback only: a driver of your own needs {local_head.SINGLE_MACHINE_ENV}=0 "
          f"before `ray.init(address=\"{head.gcs_address}\")`")
    if head.token_file:
        print(f"token auth is on: also RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={head.token_file} "
              "(the dashboard asks for the token in that file)")
    return 0


def cmd_ray_stop(args: argparse.Namespace) -> int:
    from safeguard_flow.raylib.cluster import local_head

    settings = settings_from(args)
    # Only the head recorded under this home and port (the one we started): never `ray stop`,
    # which would end every Ray process on the machine.
    if local_head.stop_recorded_head(settings):
        print(f"stopped the local Ray head on port {settings.ray.local_port}")
    else:
        print(f"no local Ray head of ours is running on port {settings.ray.local_port} (home {settings.home_path})")
    return 0
