"""The relabel flow's eval step (policy_change.evaluate_version) with the real local vLLM engine: a
new shadow version and the promoted one are evaluated on the policy's eval dataset from settings,
stored, and not evaluated twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from safeguard_flow.warehouse.sample_data import SAMPLE, copy_policies, demo_settings

pytestmark = pytest.mark.slow


def test_new_and_promoted_versions_are_evaluated_once(tmp_path, vllm_engine, monkeypatch):
    from safeguard_flow.policy_quality.datasets import dataset_key
    from safeguard_flow.domain.policies import load_policy
    from safeguard_flow.policy_quality.policy_change import evaluate_version
    from safeguard_flow.warehouse import db, evals, policy_store, schema

    for key in [k for k in os.environ if k.startswith("SAFEGUARD_TEST_")]:
        monkeypatch.delenv(key)
    rows = [json.loads(line) for line in Path(SAMPLE).read_text().splitlines()[:6]]
    dataset = tmp_path / "self-harm-eval.csv"  # a CSV this time, with its own column names
    dataset.write_text("post,body,gold_sh\n" + "".join(
        f"{r['id']},\"{r['text'][:300].replace(chr(34), chr(39))}\",{r.get('SH', '')}\n" for r in rows))
    policies = copy_policies(tmp_path / "policies", ["self-harm"])
    base = demo_settings(tmp_path, policies)
    settings = base.model_copy(update={
        "model": base.model.model_copy(update={"max_model_len": 2048, "kv_cache_gib": 1, "max_tokens": 48}),
        "evals": base.evals.model_copy(update={"bootstrap_samples": 50, "policies": {"self-harm": {
            "dataset": str(dataset), "label_column": "gold_sh", "id_column": "post", "text_column": "body"}}})})
    settings = type(settings).model_validate(settings.model_dump())
    schema.upgrade(settings)
    sql_engine = db.make_engine(settings)
    path = policies / "self-harm.md"
    policy_store.publish_policies(sql_engine, settings, [load_policy(path)], author="test")
    path.write_text(path.read_text() + "\nQuotes of song lyrics are SAFE.\n")
    (v2,) = policy_store.publish_policies(sql_engine, settings, [load_policy(path)], author="test", shadow=True)
    assert v2.shadow and v2.version == 2

    llm = vllm_engine  # the session's engine (the small model, as these settings name)
    try:
        done = evaluate_version(sql_engine, settings, "self-harm", 2, llm=llm)
        assert sorted(e["version"] for e in done) == [1, 2]  # the promoted v1 had no eval there yet
        assert all(Path(e["report"]).is_file() for e in done)
        for e in done:
            stored = evals.get_eval(sql_engine, settings, e["eval_id"])
            assert stored["dataset"] == dataset_key(str(dataset))
            assert stored["rows_scored"] == sum(1 for r in rows if r.get("SH") in (0, 1))
            assert stored["policy_refs"]["self-harm"]["version"] == e["version"]
        assert evaluate_version(sql_engine, settings, "self-harm", 2, llm=llm) == []  # evaluated already
    finally:
        sql_engine.dispose()
    assert evaluate_version(sql_engine, settings, "spam", 1) == []  # no eval dataset configured: skipped
