"""A label job on a two-node Ray cluster on this machine: a head and a second node started as separate
`ray start` processes, each with its own ports and a custom resource that fits one replica. Every Ray
process of that cluster runs without the package (its environment hides the venv's editable install
and this checkout), so the job and both replicas can only import safeguard_flow from the runtime env.
The replicas label through the session's vLLM server (the HTTP engine): what is under test is where Ray
places them and what it ships to them; the replica's own in-process engine is test_label_job.py's."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.ray.label_helpers import HIDE_PACKAGE, SOURCE, assert_complete_once, make_run

from safeguard_flow.warehouse.sample_data import sample_texts

pytestmark = pytest.mark.slow

BASE = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000")) + 300  # head 300.., second node 400..
NODE_RESOURCE = "sg_label_slot"


def _node_command(head_gcs: str, base: int, temp_dir: str) -> list[str]:
    return [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
        "--address", head_gcs, "--node-ip-address", "127.0.0.1",
        "--num-cpus", "2", "--resources", json.dumps({NODE_RESOURCE: 1}),
        "--object-store-memory", str(256 * 1024 * 1024),
        "--dashboard-agent-listen-port", str(base + 2), "--dashboard-agent-grpc-port", str(base + 3),
        "--runtime-env-agent-port", str(base + 4), "--metrics-export-port", str(base + 5),
        "--node-manager-port", str(base + 6), "--object-manager-port", str(base + 7),
        "--min-worker-port", str(base + 10), "--max-worker-port", str(base + 59),
        "--temp-dir", temp_dir, "--disable-usage-stats",
    ]


@pytest.fixture
def two_node_cluster(settings_factory, tmp_path, monkeypatch):
    """(head, settings of the cluster's local head) with a second node joined; both stopped afterwards."""
    import signal

    from safeguard_flow.raylib.cluster import local_head

    hide = tmp_path / "hide-package"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PACKAGE)
    monkeypatch.setenv("PYTHONPATH", str(hide))  # what the cluster's processes inherit
    settings = settings_factory(ray={"local_port": BASE, "local_dashboard_port": BASE + 65, "local_num_cpus": 2,
                                     "local_object_store_mb": 256, "auth_mode": "disabled"})
    # A head another node joins: Ray's usual addresses, not a loopback-only local head.
    head = local_head.start_head(settings, resources={NODE_RESOURCE: 1}, loopback=False)
    log = open(tmp_path / "node2.log", "ab")
    node = subprocess.Popen(_node_command(head.gcs_address, BASE + 100, head.temp_dir), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **local_head.local_cluster_env(settings, loopback=False)})
    try:
        _wait_for_nodes(head.dashboard_url, 2, node, tmp_path / "node2.log")
        yield head, settings
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(40)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        local_head.stop_head(head, remove_temp_dir=True)


def _wait_for_nodes(dashboard_url: str, n: int, node: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert node.poll() is None, f"the second node exited: {log.read_text()[-2000:]}"
        alive = [x for x in list_nodes(address=dashboard_url, raise_on_missing_output=False) if x.state == "ALIVE"]
        if len(alive) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the second node did not join within {timeout}s: {log.read_text()[-2000:]}")


def test_a_label_job_runs_one_replica_per_node_with_the_code_from_the_runtime_env(
        two_node_cluster, settings_factory, model_settings, vllm_server, small_policies, tmp_path):
    from ray.util.state import list_actors

    from safeguard_flow.airflow.ray_operator import RayLabelJobOperator

    head, _ = two_node_cluster
    policies = [p for p in small_policies if p.name == "spam"]
    settings = settings_factory(
        sources=[SOURCE], warehouse={"chunk_size": 3},
        model={**model_settings.model.model_dump(), "max_model_len": 2048, "max_tokens": 48},
        engine={"kind": "openai", "base_url": vllm_server, "concurrency": 2},
        ray={"dashboard_url": head.dashboard_url, "num_replicas": 2, "num_cpus_per_replica": 1.0,
             "resources_per_replica": {NODE_RESOURCE: 1}, "poll_interval_s": 1.0},
    )
    texts = sample_texts(12)
    run_id = make_run(settings, policies, texts)

    op = RayLabelJobOperator(task_id="label", run_id=run_id, settings=settings, ray_conn_id=None,
                             warehouse_conn_id=None, deferrable=False, poll_interval=1.0, job_timeout=900,
                             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    summary = op.execute({})
    logs = op.hook.get_job_logs(op.job_id)

    # One replica on each node (the custom resource fits one per node), each labelling real chunks.
    assert summary["replicas"] == 2 and len(summary["replica_pids"]) == 2, summary
    actors = [a for a in list_actors(address=head.dashboard_url, detail=True, raise_on_missing_output=False, limit=100)
              if "ChunkLabeller" in (a.class_name or "") + (a.repr_name or "")]
    nodes = {a.node_id for a in actors if a.pid in summary["replica_pids"]}
    assert len(nodes) == 2, f"replicas on nodes {nodes} (actors {[(a.pid, a.node_id) for a in actors]})"

    # The package came from the runtime env on the driver (and the replicas could not import it otherwise).
    resources = (Path(head.temp_dir) / "session_latest" / "runtime_resources").resolve()
    line = next(x for x in logs.splitlines() if "safeguard_flow from [" in x)
    paths = ast.literal_eval(line.split("safeguard_flow from ", 1)[1].strip())  # the list the job printed
    assert paths and all(p.startswith(str(resources)) for p in paths), line

    # Every item labelled exactly once.
    assert summary["items"] == len(texts) and summary["chunks_left"] == 0
    assert_complete_once(settings, run_id, len(texts), policies)
