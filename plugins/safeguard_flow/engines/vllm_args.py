"""vLLM engine arguments, built in one place for the in-process engine and the Serve replicas.

`engine_args(settings)` returns the keyword arguments for `vllm.LLM(model=..., **args)` and for
Ray Serve LLM's `engine_kwargs` (AsyncEngineArgs): everything except the model path, which each
caller resolves itself. vLLM is imported only to ask the platform when `on_cpu` is not given.
"""

from __future__ import annotations

from typing import Any

from safeguard_flow import prompts
from safeguard_flow.settings import Settings

# The prefix cache reuses whole blocks only; 32-token blocks (CPU default 128) keep more of each
# policy prefix cached: 15k instead of 25k prompt tokens to compute in the bench. The Serve replicas
# need it too: without it labelling through Serve ran at 0.46 of the in-process engine.
CPU_BLOCK_SIZE = 32


def _platform_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_args(settings: Settings, *, on_cpu: bool | None = None) -> dict[str, Any]:
    """kwargs for vllm.LLM / AsyncEngineArgs (without `model`). `on_cpu` None: ask vLLM's platform;
    a driver that builds arguments for replicas elsewhere passes what the replicas run on."""
    if on_cpu is None:
        on_cpu = _platform_is_cpu()
    m = settings.model
    kwargs: dict[str, Any] = {
        "max_model_len": m.max_model_len,
        "dtype": m.dtype,
        "max_num_seqs": m.max_num_seqs,
        "tensor_parallel_size": m.tensor_parallel_size,
        "enable_prefix_caching": True,
        "seed": 0,
    }
    if on_cpu:
        # torch.compile adds minutes to start-up on CPU and buys little for short classification outputs.
        kwargs["enforce_eager"] = True
        kwargs["block_size"] = CPU_BLOCK_SIZE
    else:
        kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
    if m.structured_outputs:
        so_config: dict[str, Any] = {"backend": "xgrammar", "disable_any_whitespace": True}
        if prompts.is_harmony_model(m.name, m.prompt_format):
            # Constrain only the final channel; the analysis channel stays free text.
            so_config["reasoning_parser"] = "openai_gptoss"
        kwargs["structured_outputs_config"] = so_config
    kwargs.update(m.engine_kwargs)
    return kwargs
