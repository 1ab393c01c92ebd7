"""A label job with a trained cascade on a real local Ray head and the real local engine (vLLM's
OpenAI-compatible server, the small model on CPU): pairs the cascade decides never reach the engine
(its own request counter says so), the audit slice does, and the run's figures add up."""

from __future__ import annotations

import re
import urllib.request

import pytest
import sqlalchemy as sa

from tests.cascade.test_cascade import PLAIN, SPAMMY
from tests.ray.label_helpers import SOURCE, make_run

pytestmark = pytest.mark.slow


def _engine_requests(base_url: str) -> float:
    """Requests the vLLM server finished, from its own Prometheus counter."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_decided_pairs_never_reach_the_engine_and_the_figures_add_up(settings_factory, model_settings, vllm_server,
                                                                     cascade_ray_head, small_policies):
    from safeguard_flow.engines.cascade import Encoder
    from safeguard_flow.policy_quality.cascade_train import TrainingRow, train_cascade
    from safeguard_flow.raylib.batch.runner import run_label_job
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.warehouse import cascades, db
    from safeguard_flow.warehouse.schema import tables

    spam = [p for p in small_policies if p.name == "spam"]
    settings = settings_factory(
        sources=[SOURCE], warehouse={"chunk_size": 4},
        model={**model_settings.model.model_dump(), "max_model_len": 2048, "max_tokens": 48},
        engine={"kind": "openai", "base_url": vllm_server, "concurrency": 4, "timeout_s": 120.0},
        ray={"address": cascade_ray_head.gcs_address, "num_replicas": 1, "num_cpus_per_replica": 1.0, "max_restarts": 0},
        # 160 training texts per label: a 95% bound is reachable (98% needs about 150 agreeing per side)
        cascade={"audit_rate": 0.3, "seed": 7, "min_agreement": 0.95},
    )
    texts = [t.format(n=100 + n) for n in range(2) for t in SPAMMY + PLAIN] + [
        "Is this a good deal? My cousin sells phones.", "Check out my new blog post about gardening"]
    run_id = make_run(settings, spam, texts)

    # A cascade for spam v1 trained on rows of our own making (none of the run's texts).
    train = [ContentItem.from_raw(f"t{n}-{k}", t.format(n=n)) for n in range(40) for k, t in enumerate(SPAMMY + PLAIN)]
    rows = [TrainingRow(it.content_hash, it.text, int(k % 8 < 4), "file") for k, it in enumerate(train)]
    cascade = train_cascade(rows, policy="spam", policy_version=1, settings=settings, encoder=Encoder(settings))
    wh = db.make_engine(settings)
    cascades.save(wh, settings, cascade)

    before = _engine_requests(vllm_server)
    summary = run_label_job(settings, run_id)
    sent = _engine_requests(vllm_server) - before

    s = tables(settings).verdict_staging
    with wh.connect() as conn:
        staged = conn.execute(sa.select(s.c.content_id, s.c.decided_by, s.c.extra, s.c.confidence, s.c.label,
                                        s.c.prompt_tokens).where(s.c.run_id == run_id)).all()
    figures = cascades.run_figures(wh, settings, run_id)[("spam", 1)]
    wh.dispose()

    by_cascade = [r for r in staged if r.decided_by == "cascade"]
    audited = [r for r in staged if r.decided_by == "model" and (r.extra or {}).get("cascade")]
    assert len(staged) == len(texts)  # one verdict per (item, policy)
    assert by_cascade and audited, "the cascade decided nothing, or nothing was audited"
    for r in by_cascade:
        assert r.prompt_tokens == 0 and 0.5 <= r.confidence <= 1 and r.label in (0, 1)
    for r in audited:
        assert set(r.extra["cascade"]) >= {"label", "probability"}
    # the engine saw exactly the pairs the cascade left to it and the audit slice, nothing it decided
    assert sent == len(texts) - len(by_cascade) == summary.requests
    assert figures["decided"] == len(by_cascade) + len(audited)
    assert figures["audited"] == len(audited) and figures["calls_avoided"] == len(by_cascade)
    assert figures["items"] == len(texts) and 0 <= figures["audit_agree"] <= figures["audited"]
    assert figures["cascade_s"] > 0 and figures["model_s"] > 0
    assert summary.cascade["spam v1"]["calls_avoided"] == len(by_cascade)
