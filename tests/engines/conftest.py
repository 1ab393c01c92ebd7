"""Engine fixtures: one real in-process vLLM engine for this folder (the small local model on CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine_settings(model_settings, prepared_model):
    """The small model with a short context and a 1 GiB KV cache: enough for tests, quick to start."""
    model = model_settings.model.model_copy(update={"max_model_len": 2048, "kv_cache_gib": 1, "max_tokens": 64,
                                                    "max_num_seqs": 16})
    return model_settings.model_copy(update={"model": model})


@pytest.fixture(scope="package")
def vllm_engine(engine_settings):
    """Gigabytes: package scope frees it when the run leaves tests/engines."""
    from safeguard_flow.engines import build_engine

    engine = build_engine(engine_settings)
    yield engine
    engine.close()
