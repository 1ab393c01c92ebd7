"""Ray Serve app: vLLM replicas behind an OpenAI-compatible /v1/chat/completions, with autoscaling.

Deploy on a running cluster (as a Ray job, or from any machine that can reach the cluster):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/serve_app.py
    python ray_jobs/serve_app.py --address 127.0.0.1:6380          # deploy and return
    python ray_jobs/serve_app.py --delete                          # remove the app

or with Serve's own CLI / config files:  serve run ray_jobs.serve_app:app

Then label through it with engine.kind=openai and engine.base_url set to the URL this prints: the
proxy binds ray.serve_host:ray.serve_port, and the URL names a host clients can reach
(ray.serve_advertise_host, else serve_host, else this node's IP when serve_host is 0.0.0.0).
Replica range: ray.serve_min_replicas .. ray.serve_max_replicas (SAFEGUARD_RAY__SERVE_MAX_REPLICAS=4);
each replica reserves ray.num_cpus_per_replica (CPU) or its GPUs, runs up to model.max_num_seqs
requests and queues ray.serve_max_queued_requests more; beyond that clients get a retryable 503.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def app(args: dict[str, Any] | None = None):
    """Application builder for `serve run ray_jobs.serve_app:app [config=path.yaml]`."""
    from safeguard_flow.raylib.serve.app import build_app
    from safeguard_flow.settings import load_settings

    return build_app(load_settings((args or {}).get("config")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="settings YAML (default: $SAFEGUARD_CONFIG; no file is read implicitly)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: ray.address, or the job's cluster)")
    parser.add_argument("--delete", action="store_true", help="remove the app instead of deploying it")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    from safeguard_flow.raylib.serve import app as serve
    from safeguard_flow.settings import load_settings

    settings = load_settings(args.config)
    # Serve apps outlive this process: connect to the cluster, deploy, disconnect.
    ray.init(address=args.address or settings.ray.address or "auto", namespace="serve", log_to_driver=False)
    try:
        if args.delete:
            serve.shutdown(delete_only=True)
            print(f"deleted Serve app {serve.APP_NAME}")
        else:
            url = serve.deploy(settings)
            print(f"Serve app {serve.APP_NAME} ready: OpenAI-compatible endpoint {url} (model {serve.served_model_id(settings)})")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
