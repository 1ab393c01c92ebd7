"""The online path: vLLM replicas behind an OpenAI-compatible endpoint with Ray Serve LLM.

`build_app(settings)` makes the Serve application (LLMConfig + build_openai_app) with an autoscaling
replica range from the settings; `deploy(settings)` runs it on the current Ray cluster with its HTTP
proxy on `ray.serve_host:ray.serve_port` and returns the base URL our OpenAIEngine (engine.kind =
openai, engine.base_url = that URL) labels through. On CPU each replica is one CPU bundle and the
ingress takes no CPU, which fits a 2-core machine; on GPU each replica takes one GPU or a
tensor-parallel group.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from safeguard_flow.raylib.settings_env import resolve_paths, worker_env
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "safeguard-llm"


def served_model_id(settings: Settings) -> str:
    """The model name clients send (`model` in the request): the configured name, not a local path."""
    return settings.model.name


def model_source(settings: Settings) -> str:
    from safeguard_flow.local_model import resolve_model

    return resolve_model(settings)


def engine_kwargs(settings: Settings) -> dict[str, Any]:
    """vLLM engine arguments of a Serve replica, from the same settings as the batch engine."""
    m = settings.model
    kwargs: dict[str, Any] = {
        "max_model_len": m.max_model_len,
        "max_num_seqs": m.max_num_seqs,
        "dtype": m.dtype,
        "tensor_parallel_size": m.tensor_parallel_size,
    }
    if settings.ray.num_gpus_per_replica > 0:
        kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
    else:
        # As in VLLMEngine: torch.compile adds minutes to a CPU replica's start-up for little gain.
        kwargs["enforce_eager"] = True
    if m.structured_outputs:
        # Same backend as the batch engine, so JSON answers are constrained identically online.
        kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    kwargs.update(m.engine_kwargs)
    return kwargs


def llm_config(settings: Settings):
    from ray.serve.llm import LLMConfig

    from safeguard_flow.engines.vllm_args import engine_args

    settings = resolve_paths(settings)
    r = settings.ray
    gpus = r.num_gpus_per_replica > 0
    tp = settings.model.tensor_parallel_size
    bundle = {"GPU": 1, "CPU": 1} if gpus else {"CPU": r.num_cpus_per_replica or 1.0}
    env = {**worker_env(), "VLLM_CPU_KVCACHE_SPACE": str(settings.model.kv_cache_gib)} if not gpus else worker_env()
    return LLMConfig(
        model_loading_config={"model_id": served_model_id(settings), "model_source": model_source(settings)},
        engine_kwargs=engine_args(settings, on_cpu=not gpus),
        placement_group_config={"bundles": [dict(bundle) for _ in range(tp if gpus else 1)]},
        deployment_config={
            "autoscaling_config": {
                "min_replicas": r.serve_min_replicas,
                "initial_replicas": max(r.serve_min_replicas, 1),
                "max_replicas": r.serve_max_replicas,
                "target_ongoing_requests": r.serve_target_ongoing_requests,
            },
            "max_ongoing_requests": max(settings.model.max_num_seqs, r.serve_target_ongoing_requests),
        },
        runtime_env={"env_vars": env},
    )


def build_app(settings: Settings):
    from ray.serve.llm import build_openai_app

    return build_openai_app({
        "llm_configs": [llm_config(settings)],
        # The router only forwards requests: no CPU of its own, so the replicas get the cores.
        "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}},
    })


def base_url(settings: Settings) -> str:
    return f"http://{settings.ray.serve_host}:{settings.ray.serve_port}/v1"


def deploy(settings: Settings, timeout_s: float = 600.0) -> str:
    """Run the app on the connected Ray cluster and wait until it answers; returns the /v1 base URL."""
    from ray import serve

    serve.start(http_options={"host": settings.ray.serve_host, "port": settings.ray.serve_port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    url = base_url(settings)
    wait_ready(url, served_model_id(settings), timeout_s)
    log.info("Serve app %s ready at %s (model %s)", APP_NAME, url, served_model_id(settings))
    return url


def wait_ready(url: str, model_id: str, timeout_s: float) -> None:
    """Until /v1/models lists the model (the replicas have loaded it)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/models", timeout=5)
            if resp.status_code == 200 and any(m.get("id") == model_id for m in resp.json().get("data", [])):
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise TimeoutError(f"the Serve app at {url} did not list model {model_id!r} within {timeout_s:.0f}s ({last})")


def shutdown(delete_only: bool = False) -> None:
    """Remove the app (and, unless delete_only, Serve itself) from the connected cluster."""
    from ray import serve

    serve.delete(APP_NAME)
    if not delete_only:
        serve.shutdown()
