"""The Ray Serve app for real: Serve LLM with the small model on the CPU, labelled through by our
OpenAIEngine (engine.kind=openai), then shut down."""

from __future__ import annotations

import time

import httpx
import pytest
from tests.ray.label_helpers import RAY_TEST_SERVE_PORT

from safeguard_flow.sample_data import sample_texts

pytestmark = pytest.mark.slow


def test_serve_app_labels_20_items_through_the_openai_engine(settings_factory, model_settings, prepared_model,
                                                            small_policies, ray_settings, ray_head, ray_driver):
    from safeguard_flow.content import ContentItem
    from safeguard_flow.engines import build_engine
    from safeguard_flow.labelling import LabelStats, label_items
    from safeguard_flow.raylib import serve

    settings = settings_factory(
        model={**model_settings.model.model_dump(), "max_model_len": 2048, "max_tokens": 48},
        ray={**ray_settings.ray.model_dump(), "serve_port": RAY_TEST_SERVE_PORT, "serve_min_replicas": 1,
             "serve_max_replicas": 2, "serve_target_ongoing_requests": 32},
        engine={"kind": "openai", "base_url": f"http://127.0.0.1:{RAY_TEST_SERVE_PORT}/v1", "concurrency": 8,
                "timeout_s": 300},
    )
    started = time.monotonic()
    url = serve.deploy(settings, timeout_s=480)
    deployed = time.monotonic()
    try:
        assert url == settings.engine.base_url
        # The app runs with the autoscaling range from the settings.
        apps = httpx.get(f"{ray_head.dashboard_url}/api/serve/applications/", timeout=30).json()["applications"]
        deployments = apps[serve.APP_NAME]["deployments"]
        llm = next(d for name, d in deployments.items() if name.startswith("LLMServer"))
        autoscaling = llm["deployment_config"]["autoscaling_config"]
        assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 2)
        assert all(r["state"] == "RUNNING" for r in llm["replicas"])

        engine = build_engine(settings)
        items = [ContentItem.from_raw(f"s{i:02d}", t, "posts") for i, t in enumerate(sample_texts(20))]
        policies = [p for p in small_policies if p.name == "spam"]  # one policy keeps the CPU test short
        stats = LabelStats()
        try:
            verdicts = label_items(engine, items, policies, stats=stats)
        finally:
            engine.close()
        print(f"serve app: deploy {deployed - started:.0f}s, 20 items labelled in {time.monotonic() - deployed:.0f}s")
        assert len(verdicts) == 20 * len(policies)
        assert not [v for v in verdicts if v.parse_status == "engine_error"]
        assert sum(v.label is not None for v in verdicts) >= 0.8 * len(verdicts)  # constrained answers parse
        assert stats.prompt_tokens > 0 and stats.completion_tokens > 0
    finally:
        serve.shutdown()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/models", timeout=5).raise_for_status()
