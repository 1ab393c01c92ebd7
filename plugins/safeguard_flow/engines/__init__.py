"""Engines behind one small protocol (engines.base.Engine). build_engine picks one from settings.

The adapters are imported lazily so that importing this package never pulls in vLLM or httpx.
"""

from __future__ import annotations

from safeguard_flow.engines.base import Completion, Engine, EngineError, LabelRequest
from safeguard_flow.settings import Settings

__all__ = ["Completion", "Engine", "EngineError", "LabelRequest", "build_engine"]


def build_engine(settings: Settings) -> Engine:
    """engine.kind vllm -> VLLMEngine (in-process), openai -> OpenAIEngine (HTTP)."""
    kind = settings.engine.kind
    if kind == "vllm":
        from safeguard_flow.engines.vllm_local import VLLMEngine

        return VLLMEngine(settings)
    if kind == "openai":
        from safeguard_flow.engines.openai_http import OpenAIEngine

        return OpenAIEngine(settings)
    raise EngineError(f"engine.kind {kind!r} is not supported (set SAFEGUARD_ENGINE__KIND to vllm or openai)")
