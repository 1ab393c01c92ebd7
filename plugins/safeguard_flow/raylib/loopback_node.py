"""A Ray node that listens on loopback only: the local head (and the test's second node) run this.

`ray start --node-ip-address 127.0.0.1` does not give that: Ray 2.60's CLI swaps a loopback node
address for the machine's routable one (`services.resolve_ip_for_localhost`), and its servers then
bind that address or all interfaces (GCS, raylet, agents, the Ray Client server). Ray's Node honours
127.0.0.1 when it is handed one, so this entry point builds the node the way `ray start --block`
does, without the swap: every server of the node binds loopback. Run by path (it imports only
Ray, so a node whose environment lacks this package can run it; local_head.node_command):

    python -P .../loopback_node.py '{"gcs_server_port": 6380, ...}'                  # a head
    python -P .../loopback_node.py --address 127.0.0.1:6380 '{...}'                  # a node

with RayParams fields as JSON. It blocks; SIGTERM drains and stops every process of the node (the
Node's own handler), and if one of them dies unexpectedly the rest are stopped and it exits 1.

It uses Ray's private Node/RayParams (the same calls `ray start` makes): checked against Ray 2.60.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

LOOPBACK = "127.0.0.1"
_EXPECTED_EXIT = {0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loopback_node.py")
    parser.add_argument("--address", default="", help="GCS address of the head to join (none: start a head)")
    parser.add_argument("params", help="RayParams fields as a JSON object")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # what `ray start --disable-usage-stats` sets

    import ray._private.node
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._private.parameter import RayParams

    fields = json.loads(args.params)
    params = RayParams(node_ip_address=LOOPBACK, node_name=LOOPBACK, **fields)
    head = not args.address
    if not head:
        params.gcs_address = args.address
    ensure_token_if_auth_enabled(params._system_config, create_token_if_missing=False)
    node = ray._private.node.Node(params, head=head, shutdown_at_exit=True, spawn_reaper=True)
    print(f"Ray {'head' if head else 'node'} up on {LOOPBACK} (GCS {node.gcs_address})", flush=True)
    while True:
        time.sleep(1)
        dead = [(kind, p) for kind, p in node.dead_processes() if p.returncode not in _EXPECTED_EXIT]
        if dead:
            print("Ray processes exited unexpectedly: "
                  + ", ".join(f"{kind} (code {p.returncode})" for kind, p in dead), flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=False)
            return 1


if __name__ == "__main__":
    sys.exit(main())
