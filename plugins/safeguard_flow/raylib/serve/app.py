"""The online path: vLLM replicas behind an OpenAI-compatible endpoint with Ray Serve LLM.

`build_app(settings)` makes the Serve application (LLMConfig + build_openai_app) with an autoscaling
replica range from the settings; `deploy(settings)` runs it on the current Ray cluster with its HTTP
proxy on `ray.serve_host:ray.serve_port` and returns the base URL our OpenAIEngine (engine.kind =
openai, engine.base_url = that URL) labels through. A replica runs the same vLLM engine arguments
as the in-process engine (engines/vllm_args.py). On CPU each replica reserves ray.num_cpus_per_replica
and the ingress takes no CPU, so two 1-CPU replicas fit on a 2-core machine; on GPU each replica takes
one GPU per tensor-parallel rank. What a replica admits is bounded (ray.serve_max_ongoing_requests
running, ray.serve_max_queued_requests waiting): overload gets a 503 with Retry-After rather
than requests that wait until their client gives up.

The ingress is ours (ingress.py): a bearer key from ray.serve_api_keys on every request, a body limit
(ray.serve_max_body_bytes, 413 beyond), no CORS, and only /v1/models plus the one generation route
OpenAIEngine uses for this model. Without keys the app only binds loopback.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from safeguard_flow.raylib.shipping.settings_env import resolve_paths, worker_env
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "safeguard-llm"


def served_model_id(settings: Settings) -> str:
    """The model name clients send (`model` in the request): the configured name, not a local path."""
    return settings.model.name


def model_source(settings: Settings) -> str:
    from safeguard_flow.models.local import resolve_model

    return resolve_model(settings)


def engine_kwargs(settings: Settings) -> dict[str, Any]:
    """vLLM arguments of a Serve replica: the in-process engine's (one builder, so the CPU block size
    and prefix caching match), plus the server's usage reporting of prefix-cache hits."""
    from safeguard_flow.engines.vllm_args import engine_args

    kwargs = engine_args(settings, on_cpu=settings.ray.num_gpus_per_replica <= 0)
    # A frontend argument (not AsyncEngineArgs): usage.prompt_tokens_details.cached_tokens in answers.
    kwargs.setdefault("enable_prompt_tokens_details", True)
    return kwargs


def placement_bundles(settings: Settings) -> list[dict[str, float]]:
    """What one replica reserves: ray.num_cpus_per_replica CPUs on CPU, one GPU (and one CPU) per
    tensor-parallel rank on GPU. The replica actor itself asks for nothing (llm_config gives it
    0 CPUs), so Serve's merge of the actor into the first bundle adds no CPU."""
    r = settings.ray
    if r.num_gpus_per_replica > 0:
        ranks = max(settings.model.tensor_parallel_size, math.ceil(r.num_gpus_per_replica))
        return [{"GPU": 1.0, "CPU": 1.0} for _ in range(ranks)]
    return [{"CPU": float(r.num_cpus_per_replica or 1.0)}]


def max_ongoing(settings: Settings) -> int:
    """Requests one replica runs at once: ray.serve_max_ongoing_requests if set. Else, on GPU, what its
    engine batches (model.max_num_seqs, never below the autoscaling target); on CPU the autoscaling
    target (ray.serve_target_ongoing_requests) when that is smaller: a CPU engine gains little past
    it (10.5 vs 12.6 req/s at 16 vs 64 in flight, 2 cores) while a batch of 64 keeps each request
    for seconds, so admitting 64 made a burst's admitted requests outlast a 10 s client timeout."""
    r = settings.ray
    if r.serve_max_ongoing_requests:
        return r.serve_max_ongoing_requests
    if r.num_gpus_per_replica <= 0:
        return min(settings.model.max_num_seqs, r.serve_target_ongoing_requests)
    return max(settings.model.max_num_seqs, r.serve_target_ongoing_requests)


def _refusal(settings: Settings) -> dict[str, Any]:
    """What Serve answers past a bound: a 503 saying when to retry (ray.serve_retry_after_s)."""
    return {"status_code": 503, "retry_after_s": settings.ray.serve_retry_after_s}


def replica_limits(settings: Settings) -> dict[str, Any]:
    """Serve's per-replica concurrency and queue bounds. A replica runs max_ongoing(settings) requests;
    up to ray.serve_max_queued_requests more wait, and the rest get a 503 at once that says when to
    retry (Retry-After: ray.serve_retry_after_s; the openai SDK under our engine honours it)."""
    r = settings.ray
    limits: dict[str, Any] = {"max_ongoing_requests": max_ongoing(settings), "backpressure_config": _refusal(settings)}
    if r.serve_max_queued_requests >= 0:
        limits["max_queued_requests"] = r.serve_max_queued_requests
    return limits


def http_options(settings: Settings) -> dict[str, Any]:
    """The proxy: bound on ray.serve_host:ray.serve_port; with ray.serve_request_timeout_s Serve ends a
    request unanswered by then with a retryable 408, before a client with a longer timeout gives up."""
    r = settings.ray
    options: dict[str, Any] = {"host": r.serve_host, "port": r.serve_port}
    if r.serve_request_timeout_s > 0:
        options["request_timeout_s"] = r.serve_request_timeout_s
    return options


def llm_config(settings: Settings):
    from ray.serve.llm import LLMConfig


    settings = resolve_paths(settings)
    r = settings.ray
    gpus = r.num_gpus_per_replica > 0
    env = worker_env()
    if not gpus:
        from safeguard_flow.engines.vllm_args import cpu_thread_env

        env.update({"VLLM_CPU_KVCACHE_SPACE": str(settings.model.kv_cache_gib),
                    **cpu_thread_env(settings)})
    return LLMConfig(
        model_loading_config={"model_id": served_model_id(settings), "model_source": model_source(settings)},
        engine_kwargs=engine_kwargs(settings),
        placement_group_config={"bundles": placement_bundles(settings)},
        deployment_config={
            "autoscaling_config": {
                "min_replicas": r.serve_min_replicas,
                "initial_replicas": max(r.serve_min_replicas, 1),
                "max_replicas": r.serve_max_replicas,
                "target_ongoing_requests": r.serve_target_ongoing_requests,
            },
            # Serve adds the replica actor's resources (default 1 CPU) to the first bundle: ask for none,
            # so a replica reserves exactly its bundles (two 1-CPU replicas fit on 2 cores).
            "ray_actor_options": {"num_cpus": 0},
            **replica_limits(settings),
        },
        runtime_env={"env_vars": env},
    )


def build_app(settings: Settings):
    """Ray Serve LLM's OpenAI app as build_openai_app assembles it (one LLMServer deployment per model
    behind an ingress), with our ingress and its narrowed FastAPI app (needs this package on the
    cluster, as the label job does)."""
    from ray import serve
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment

    from safeguard_flow.models import presets as model_presets
    from safeguard_flow.raylib.serve.ingress import SafeguardIngress, key_hash, make_ingress_app, routes_for

    config = llm_config(settings)
    options = maybe_apply_llm_deployment_config_defaults(SafeguardIngress.get_deployment_options([config]),
                                                         ingress_options(settings))
    app = make_ingress_app([key_hash(k) for k in settings.ray.serve_api_keys], settings.ray.serve_max_body_bytes)
    harmony = model_presets.resolve(settings, on_cpu=False).harmony  # as OpenAIEngine decides
    ingress = make_fastapi_ingress(SafeguardIngress, endpoint_map=routes_for(harmony), app=app)
    return serve.deployment(ingress, **options).bind(
        llm_deployments={config.model_id: build_llm_deployment(config)},
        model_cards={config.model_id: to_model_metadata(config.model_id, config)},
        lora_paths={},
    )


def ingress_options(settings: Settings) -> dict[str, Any]:
    """The ingress only forwards requests: no CPU of its own, so the replicas get the cores. It runs
    at most what the replicas run (max_replicas x max_ongoing) and the rest wait in the HTTP proxy,
    up to ray.serve_max_queued_requests; past that the proxy itself answers 503 + Retry-After. So an
    overload is refused before the ingress parses a body or a replica's event loop (shared with
    vLLM's output processing) sees it: with the bound on the replicas only, 200 burst requests on 2
    cores all went through the ingress and refusals took up to 17 s; now 2.8 s at p99. The bound is
    soft under a burst: Serve 2.60's router checks the queue length, then awaits before it counts the
    request as queued (router.py, wrap_request_assignment), so requests that arrive together can all
    pass the check; ray.serve_request_timeout_s turns those that then wait too long into 408s."""
    r = settings.ray
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    if r.serve_max_queued_requests >= 0:
        options.update(max_ongoing_requests=r.serve_max_replicas * max_ongoing(settings),
                       max_queued_requests=r.serve_max_queued_requests,
                       backpressure_config=_refusal(settings))
    return options


_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def advertised_host(settings: Settings) -> str:
    """The host clients should use: ray.serve_advertise_host, else serve_host unless it is a wildcard
    bind address, else this node's IP (Serve runs an HTTP proxy on every node)."""
    r = settings.ray
    if r.serve_advertise_host:
        return r.serve_advertise_host
    if r.serve_host not in _WILDCARD_HOSTS:
        return r.serve_host
    import ray

    return ray.util.get_node_ip_address()


def base_url(settings: Settings) -> str:
    host = advertised_host(settings)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{settings.ray.serve_port}/v1"


def deploy(settings: Settings, timeout_s: float = 600.0) -> str:
    """Run the app on the connected Ray cluster and wait until it answers; returns the /v1 base URL
    clients should use (bound on ray.serve_host, advertised as `advertised_host`)."""
    from ray import serve

    check_exposure(settings)
    serve.start(http_options=http_options(settings))
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    url = base_url(settings)
    wait_ready(url, served_model_id(settings), timeout_s, api_key=client_key(settings))
    log.info("Serve app %s ready at %s (bound on %s, model %s)", APP_NAME, url, settings.ray.serve_host,
             served_model_id(settings))
    return url


def check_exposure(settings: Settings) -> None:
    """An app without keys is open to whoever reaches it: only on loopback."""
    from safeguard_flow.settings import SettingsError

    r = settings.ray
    if not r.serve_api_keys and r.serve_host not in ("127.0.0.1", "localhost", "::1"):
        raise SettingsError(f"ray.serve_host={r.serve_host!r} is reachable from other machines but "
                            "ray.serve_api_keys (SAFEGUARD_RAY__SERVE_API_KEYS) is empty: set at least one key "
                            "(clients send it as engine.api_key), or bind 127.0.0.1")


def client_key(settings: Settings) -> str | None:
    """The key a client of this app sends: engine.api_key when the app accepts it, else the first key."""
    keys = settings.ray.serve_api_keys
    if not keys:
        return None
    return settings.engine.api_key if settings.engine.api_key in keys else keys[0]


def wait_ready(url: str, model_id: str, timeout_s: float, api_key: str | None = None) -> None:
    """Until /v1/models lists the model (the replicas have loaded it)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/models", timeout=5, headers=headers)
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
