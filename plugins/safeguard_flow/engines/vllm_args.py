"""vLLM engine arguments, built in one place for the in-process engine, the batch job and the Serve app.

`engine_args(settings)` returns the keyword arguments for `vllm.LLM(model=..., **args)` /
`AsyncEngineArgs(model=..., **args)` / Ray Serve LLM's `engine_kwargs`: everything except the model
path (each caller knows where its weights are). Values come from the settings merged with the
model's preset (model_presets.resolve: settings win), then `model.engine_kwargs` on top.

This module imports no vLLM unless it has to ask which platform it runs on (`on_cpu=None`).
"""

from __future__ import annotations

from typing import Any

from safeguard_flow.models import presets as model_presets
from safeguard_flow.settings import Settings

GIB = 1024**3
# The prefix cache reuses whole blocks only; 32-token blocks (CPU default 128) keep more of each
# policy prefix cached: 15k instead of 25k prompt tokens to compute in the bench. The same value on
# the Serve replicas: without it, labelling through Serve ran at 0.46 of the in-process engine.
CPU_BLOCK_SIZE = 32


def engine_args(settings: Settings, *, on_cpu: bool | None = None, model_path: str | None = None) -> dict[str, Any]:
    """kwargs for vllm.LLM / AsyncEngineArgs (without `model`). `on_cpu` None: ask vLLM's platform;
    a driver that builds arguments for replicas on other machines passes what the replicas run on."""
    if on_cpu is None:
        on_cpu = model_presets._platform_is_cpu()
    resolved = model_presets.resolve(settings, on_cpu=on_cpu, model_path=model_path)
    v = resolved.values
    m = settings.model
    kwargs: dict[str, Any] = {
        "max_model_len": v["max_model_len"],
        "dtype": m.dtype,
        "tensor_parallel_size": v["tensor_parallel_size"],
        "enable_prefix_caching": True,
        "seed": 0,
    }
    if v["max_num_seqs"] is not model_presets.VLLM_DEFAULT:
        kwargs["max_num_seqs"] = v["max_num_seqs"]
    if on_cpu:
        # torch.compile adds minutes to start-up on CPU and buys little for short classification outputs.
        kwargs["enforce_eager"] = True
        kwargs["block_size"] = CPU_BLOCK_SIZE
        # The engine's own KV cache size. vLLM's CPU platform lets a VLLM_CPU_KVCACHE_SPACE in the
        # environment override this, so the in-process engine sets that variable from the same setting.
        kwargs["kv_cache_memory_bytes"] = int(v["kv_cache_gib"]) * GIB
    else:
        kwargs["gpu_memory_utilization"] = v["gpu_memory_utilization"]
        kwargs.update(resolved.engine_kwargs)
    if m.structured_outputs:
        # xgrammar for choice, JSON schema and (harmony) structural tags alike. No reasoning parser:
        # the harmony structural tag covers the analysis channel itself, so the grammar must apply from
        # the first token (vLLM's gpt-oss reasoning parser would say "reasoning ended" there anyway).
        kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    kwargs.update(m.engine_kwargs)
    return kwargs


def cpu_thread_env(settings: Settings) -> dict[str, str]:
    """The variables that place a CPU engine's compute threads (model.cpu_threads_bind), read by the
    engine-core process vLLM spawns wherever the engine starts. "all" is vLLM's own auto binding
    (the cores the process may use, one thread per physical core) with no core kept back for the
    scheduler."""
    bind = settings.model.cpu_threads_bind
    if bind == "all":
        return {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {"VLLM_CPU_OMP_THREADS_BIND": bind}
