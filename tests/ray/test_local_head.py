"""The local Ray head from the CLI: concurrent starts share one head, it serves loopback, `ray stop` ends it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

PORT = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000")) + 500  # its ports: PORT .. PORT+65


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "safeguard_flow.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_concurrent_starts_share_one_loopback_head_and_ray_stop_ends_it(tmp_path):
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEGUARD_")}
    env.update(SAFEGUARD_HOME=str(tmp_path / "home"), SAFEGUARD_RAY__LOCAL_PORT=str(PORT),
               SAFEGUARD_RAY__LOCAL_DASHBOARD_PORT=str(PORT + 65), SAFEGUARD_RAY__LOCAL_NUM_CPUS="1")
    starts = [_cli(env, "ray", "start") for _ in range(3)]  # a backfill: three tasks at once
    outputs = [p.communicate(timeout=240)[0] for p in starts]
    try:
        assert [p.returncode for p in starts] == [0, 0, 0], outputs
        pids = {re.search(r"pid (\d+)", out).group(1) for out in outputs}
        assert len(pids) == 1, f"more than one head started: {outputs}"
        head_pid = int(pids.pop())
        assert psutil.pid_exists(head_pid)

        listening = [c for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == PORT + 65]
        assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening  # Jobs API: loopback
        # Every server of the head (GCS, raylet, object manager, agents, workers) listens on loopback only.
        # The dashboard answers before every agent listens: wait for the head's servers to come up.
        head = psutil.Process(head_pid)
        deadline = time.monotonic() + 60
        while True:
            pids = {head_pid, *(p.pid for p in head.children(recursive=True))}
            servers = [c for c in psutil.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN and c.pid in pids]
            if len(servers) >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(servers) >= 5, servers
        assert {c.laddr.ip for c in servers} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, \
            sorted({(c.laddr.ip, c.laddr.port) for c in servers})
    finally:
        stop = _cli(env, "ray", "stop")
        out = stop.communicate(timeout=120)[0]
    assert stop.returncode == 0 and "stopped the local Ray head" in out, out
    assert not psutil.pid_exists(head_pid) or psutil.Process(head_pid).status() == psutil.STATUS_ZOMBIE
    again = _cli(env, "ray", "stop")
    assert "no local Ray head of ours" in again.communicate(timeout=60)[0]
