"""Constants and helpers shared by the Airflow tests (imported by name: not from conftest)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"

# Ports from the airflow helper's range 18200-18299.
STACK_PORT = int(os.environ.get("SAFEGUARD_TEST_AF_STACK_PORT", "18210"))
RAY_PORT = int(os.environ.get("SAFEGUARD_TEST_AF_RAY_PORT", "18240"))  # + offsets 1..7, workers +10..+59
RAY_DASHBOARD_PORT = int(os.environ.get("SAFEGUARD_TEST_AF_RAY_DASHBOARD_PORT", "18248"))


def pipeline_env(settings, vllm_url: str, head, label_mode: str = "job", **extra: str) -> dict[str, str]:
    """Environment of an Airflow process running the DAGs against `settings`' warehouse: the warehouse
    and Ray as Airflow connections, the engine as the shared vLLM server."""
    import json

    from safeguard_flow.warehouse.sample_data import POSTS_SOURCE

    host, port = head.dashboard_url.rsplit(":", 1)
    env = {
        "AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT": json.dumps({"conn_type": "safeguard_warehouse", "extra": {"url": settings.warehouse_url}}),
        "AIRFLOW_CONN_SAFEGUARD_RAY_DEFAULT": json.dumps({"conn_type": "safeguard_ray", "host": host, "port": int(port)}),
        "SAFEGUARD_HOME": settings.home,
        "SAFEGUARD_POLICIES_DIR": settings.policies_dir,
        "SAFEGUARD_SOURCES": json.dumps([POSTS_SOURCE]),
        "SAFEGUARD_ENGINE__KIND": "openai",
        "SAFEGUARD_ENGINE__BASE_URL": vllm_url,
        "SAFEGUARD_ENGINE__CONCURRENCY": "4",
        "SAFEGUARD_RAY__ADDRESS": head.gcs_address,
        "SAFEGUARD_RAY__LABEL_MODE": label_mode,
        "SAFEGUARD_RAY__NUM_CPUS_PER_REPLICA": "0.25",
        "SAFEGUARD_RAY__POLL_INTERVAL_S": "0.5",
        # The 0.5B stand-in is not a policy classifier (it calls most posts spam): these tests are about
        # the pipeline, so the positive-rate bound that stops such a model in production is opened.
        "SAFEGUARD_QUALITY__MAX_POSITIVE_RATE": "1.0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.update(extra)
    return env
