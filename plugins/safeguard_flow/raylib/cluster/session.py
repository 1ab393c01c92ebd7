"""Connect this process to Ray: the configured cluster, the job's cluster, or a local in-process one."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from safeguard_flow.raylib.cluster.local_head import local_cluster_env, prepare_driver
from safeguard_flow.raylib.shipping.settings_env import worker_env
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)


@contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """Use Ray inside the block; shut it down afterwards only if we started it here.

    Address order: an already initialised Ray (tests, notebooks) > the job's own cluster (inside a
    submitted job Ray sets RAY_ADDRESS) > ``ray.address`` > a new local Ray inside this process.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    address = (os.environ.get("RAY_ADDRESS") if in_job else None) or settings.ray.address or None
    common: dict = dict(log_to_driver=True, configure_logging=False)
    if not in_job:
        # Replicas need the driver's vLLM/HF tuning. A submitted job already has its runtime_env
        # (and Ray refuses to merge the same variables twice).
        common["runtime_env"] = {"env_vars": worker_env()}
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        if not in_job:  # a job's driver has its cluster's environment already
            prepare_driver(address)
        ray.init(address=address, **common)
    else:
        log.info("starting a local Ray in this process")
        for key, value in local_cluster_env(settings).items():
            os.environ.setdefault(key, value)  # a cluster we start: say its auth mode (an explicit env wins)
        prepare_driver(None)  # on loopback, like a local head
        ray.init(
            num_cpus=settings.ray.local_num_cpus or os.cpu_count() or 1,
            object_store_memory=settings.ray.local_object_store_mb * 1024 * 1024,
            include_dashboard=False,
            **common,
        )
    try:
        yield
    finally:
        ray.shutdown()
