"""Engine fixtures: one real in-process vLLM engine per session (the small local model on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeguard_flow.testing.folder_scope import release_when_leaving


@pytest.fixture(scope="session")
def engine_settings(model_settings, prepared_model):
    """The small model with a short context and a 1 GiB KV cache: enough for tests, quick to start."""
    model = model_settings.model.model_copy(update={"max_model_len": 2048, "kv_cache_gib": 1, "max_tokens": 64,
                                                    "max_num_seqs": 16})
    return model_settings.model_copy(update={"model": model})


@pytest.fixture(scope="session")
def vllm_engine(engine_settings):
    from safeguard_flow.engines import build_engine

    engine = build_engine(engine_settings)
    close = release_when_leaving(Path(__file__).parent, engine.close)  # gigabytes: not kept for other folders
    yield engine
    close()
