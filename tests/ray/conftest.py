"""One real local Ray head per test session (ports 18101.. / dashboard 18165), shared by the Ray tests."""

from __future__ import annotations

import pytest

from tests.ray.label_helpers import RAY_TEST_DASHBOARD_PORT, RAY_TEST_PORT


@pytest.fixture(scope="package")
def ray_settings(tmp_path_factory):
    """Settings of the session's Ray head (its state file lives under this `home`)."""
    from safeguard_flow.settings import load_settings

    home = tmp_path_factory.mktemp("ray-home")
    return load_settings(environ={}, home=str(home), ray={
        "local_port": RAY_TEST_PORT, "local_dashboard_port": RAY_TEST_DASHBOARD_PORT,
        "local_num_cpus": 2, "auth_mode": "disabled", "poll_interval_s": 0.5,
    })


@pytest.fixture(scope="package")
def ray_head(ray_settings):
    """A real `ray start --head` on 127.0.0.1, started once and stopped when the run leaves tests/ray."""
    from safeguard_flow.raylib.cluster import local_head

    head = local_head.start_head(ray_settings)

    def stop() -> None:
        local_head.stop_recorded_head(ray_settings)
        local_head.stop_head(head, remove_temp_dir=True)

    yield head
    stop()


@pytest.fixture
def ray_conn_env(ray_head, monkeypatch):
    """An Airflow connection (from the environment) pointing at the session's head; returns its id."""
    import json

    conn = {"conn_type": "safeguard_ray", "host": "127.0.0.1", "port": RAY_TEST_DASHBOARD_PORT,
            "extra": {"runtime_env": {"env_vars": {"SG_FROM_CONNECTION": "yes"}}}}
    monkeypatch.setenv("AIRFLOW_CONN_SAFEGUARD_RAY_TEST", json.dumps(conn))
    return "safeguard_ray_test"


@pytest.fixture(scope="package")
def ray_driver(ray_head):
    """This test process as a driver on the session's head (run_label_job and Serve reuse it)."""
    import ray

    from safeguard_flow.raylib.cluster.local_head import prepare_driver
    from safeguard_flow.raylib.shipping.settings_env import worker_env

    prepare_driver(ray_head.gcs_address)  # a loopback head: Ray's single-machine mode here too
    ray.init(address=ray_head.gcs_address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    yield
    ray.shutdown()  # torn down before the head it depends on
