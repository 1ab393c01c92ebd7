"""The harmony (gpt-oss) branch of VLLMEngine: prompt token ids, stop tokens, length check, and the
split of completion tokens into final/analysis.

This drives the adapter's own methods without a loaded vllm.LLM (the model-independent parts,
SamplingParams, StructuredOutputsParams and TokensPrompt, are vLLM's real classes); the harmony path
runs end to end through vLLM's GptOss model with gpt-oss-tiny in test_gpt_oss_tiny.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from safeguard_flow.models import presets as model_presets
from safeguard_flow.domain import prompts
from safeguard_flow.engines.base import LabelRequest
from safeguard_flow.engines.vllm_local import VLLMEngine


def _harmony_engine(settings_factory, max_model_len=4096):
    settings = settings_factory(model={"name": "openai/gpt-oss-safeguard-20b", "max_model_len": max_model_len})
    engine = object.__new__(VLLMEngine)  # no vllm.LLM: only the request/response mapping is exercised
    engine.settings, engine.model_name, engine.harmony = settings, settings.model.name, True
    engine.resolved = model_presets.resolve(settings, on_cpu=True)
    engine._max_model_len = max_model_len
    return engine


def test_harmony_prompt_and_params(settings_factory, small_policies):
    engine = _harmony_engine(settings_factory)
    policy = next(p for p in small_policies if p.name == "spam")
    prep = engine._prepare(0, LabelRequest(0, policy, "buy now"))
    assert prep.error is None
    assert prep.prompt["prompt_token_ids"] == prompts.harmony_prompt_tokens(policy, "buy now")
    assert prep.prompt_tokens == len(prep.prompt["prompt_token_ids"])
    assert set(prep.params.stop_token_ids) == set(prompts.harmony_stop_tokens())
    assert prep.params.skip_special_tokens is False
    assert prep.params.structured_outputs.choice is None  # the final channel only, never the whole completion
    assert json.loads(prep.params.structured_outputs.structural_tag) == prompts.harmony_structural_tag(policy)
    assert prep.params.max_tokens == 2048  # the 20b preset's budget for reasoning effort low
    harm = next(p for p in small_policies if p.name == "self-harm")
    tag = json.loads(engine._prepare(1, LabelRequest(1, harm, "x")).params.structured_outputs.structural_tag)
    answer = tag["format"]["elements"][-1]  # a compact JSON grammar for the final channel (no free whitespace)
    assert answer["type"] == "grammar" and "violation" in answer["grammar"]


def test_harmony_prompt_too_long_is_a_request_error(settings_factory, small_policies):
    engine = _harmony_engine(settings_factory, max_model_len=256)
    prep = engine._prepare(0, LabelRequest(0, small_policies[0], "hello"))
    assert prep.error and "longer than model.max_model_len=256" in prep.error


def test_harmony_completion_split(settings_factory):
    engine = _harmony_engine(settings_factory)
    enc = prompts._harmony_encoding()
    tokens = enc.encode("<|channel|>analysis<|message|>an ad for pills<|end|><|start|>assistant<|channel|>final"
                        "<|message|>1<|return|>", allowed_special="all")
    out = SimpleNamespace(prompt_token_ids=[1] * 700, num_cached_tokens=640,
                          outputs=[SimpleNamespace(token_ids=tokens, text="ignored", finish_reason="stop")])
    c = engine._to_completion(out)
    assert (c.text, c.analysis, c.finish_reason) == ("1", "an ad for pills", "stop")
    assert (c.prompt_tokens, c.completion_tokens, c.cached_prompt_tokens) == (700, len(tokens), 640)
