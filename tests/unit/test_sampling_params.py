"""The sampling params of every output format, for harmony (gpt-oss) and chat models, pinned.

These are vLLM's real SamplingParams / StructuredOutputsParams (no engine is started). The harmony
case is the regression guard for issue 12: a choice / JSON grammar over the whole completion forces
a gpt-oss model to answer `1<|return|>` with no harmony header, and every verdict comes back empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeguard_flow.models import presets as model_presets
from safeguard_flow.domain import prompts
from safeguard_flow.engines.vllm_local import sampling_params
from safeguard_flow.engines.vllm_args import engine_args
from safeguard_flow.domain.policies import OutputFormat, load_policy_set

POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"

POLICIES = {p.output_format: p.with_version(1) for p in load_policy_set(POLICIES_DIR)}
STOP = sorted(prompts.harmony_stop_tokens())  # <|return|>, <|call|>
TOK = prompts.harmony_token_ids()


def _params(settings_factory, name, fmt, **model):
    settings = settings_factory(model={"name": name, **model})
    resolved = model_presets.resolve(settings, on_cpu=True)
    return sampling_params(settings, POLICIES[fmt], harmony=resolved.harmony, resolved=resolved), resolved


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_harmony_constrains_only_the_final_channel(settings_factory, fmt):
    params, resolved = _params(settings_factory, "openai/gpt-oss-safeguard-20b", fmt)
    so = params.structured_outputs
    # A structural tag and nothing else: no grammar over the whole completion.
    assert (so.choice, so.json, so.regex, so.grammar, so.json_object) == (None, None, None, None, None)
    tag = json.loads(so.structural_tag)
    assert tag == prompts.harmony_structural_tag(POLICIES[fmt])
    analysis, channel, final, *rest = tag["format"]["elements"]
    # 1. an optional free-text analysis message, closed by <|end|> and followed by the next header
    assert analysis["type"] == "optional"
    a = analysis["content"]["elements"]
    assert a[0] == {"type": "token", "token": TOK["<|channel|>"]} and a[1] == {"type": "const_string", "value": "analysis"}
    assert a[2]["begin"] == {"type": "token", "token": TOK["<|message|>"]} and a[2]["content"]["type"] == "any_text"
    assert a[2]["end"] == {"type": "token", "token": TOK["<|end|>"]}
    assert "<|end|>" in a[2]["content"]["excludes"] and "<|reserved_" in a[2]["content"]["excludes"]
    assert a[3:] == [{"type": "token", "token": TOK["<|start|>"]}, {"type": "const_string", "value": "assistant"}]
    # 2. the final channel holding the answer
    assert channel == {"type": "token", "token": TOK["<|channel|>"]} and final["value"] == "final"
    answer = rest[-1]
    if fmt is OutputFormat.BINARY:
        assert rest[0] == {"type": "token", "token": TOK["<|message|>"]}
        assert answer == {"type": "or", "elements": [{"type": "const_string", "value": "0"},
                                                     {"type": "const_string", "value": "1"}]}
    else:
        assert rest[0] == {"type": "token", "token": TOK["<|message|>"]}
        assert answer == {"type": "grammar", "grammar": prompts.compact_json_grammar(POLICIES[fmt])}
        from xgrammar import Grammar
        from xgrammar.testing import _is_grammar_accept_string as accepts

        grammar = Grammar.from_ebnf(answer["grammar"])
        rationale = ',"rationale":"cites rule 2"' if fmt is OutputFormat.JSON_RATIONALE else ""
        assert accepts(grammar, '{"violation":1,"policy_category":"bulk ads"' + rationale + "}")
        assert not accepts(grammar, '{"violation": 1, "policy_category": null' + rationale + "}")  # no free whitespace
        assert not accepts(grammar, '{"violation":2,"policy_category":null' + rationale + "}")
        # No control-token text inside strings: xgrammar would read the <|end|> token as those characters.
        assert not accepts(grammar, '{"violation":1,"policy_category":"x<|end|>"' + rationale + "}")
    # Harmony stop tokens, special tokens kept for the channel split, the model card's sampling.
    assert sorted(params.stop_token_ids) == STOP and params.skip_special_tokens is False
    # No per-request seed on CPU: a seeded request split by chunked prefill kills vLLM's CPU sampler (issue 18).
    assert (params.temperature, params.top_p, params.seed) == (1.0, 1.0, None)
    assert params.max_tokens == resolved.max_tokens_for(POLICIES[fmt].reasoning_effort.value) == 2048  # effort low


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_chat_model_constrains_the_whole_reply(settings_factory, fmt):
    params, resolved = _params(settings_factory, "qwen2.5-0.5b-instruct", fmt)
    so = params.structured_outputs
    assert so.structural_tag is None
    if fmt is OutputFormat.BINARY:
        assert so.choice == ["0", "1"] and so.json is None
    else:
        assert so.choice is None and so.json == prompts.json_schema(POLICIES[fmt]) and so.disable_any_whitespace
    assert not params.stop_token_ids and params.skip_special_tokens is True
    # The small local models keep today's values: greedy, 128 tokens.
    assert (params.temperature, params.top_p, params.max_tokens, params.seed) == (0.0, 1.0, 128, None)


def test_a_per_request_seed_on_gpu_only_unless_set(settings_factory):
    """vLLM's CPU sampler cannot rewind a seeded generator (chunked prefill): the engine-level seed
    (vllm_args) keeps CPU runs reproducible; on GPU each request carries seed 0; model.request_seed wins."""
    for on_cpu, request_seed, expected in [(True, None, None), (False, None, 0), (True, True, 0), (False, False, None)]:
        settings = settings_factory(model={"name": "openai/gpt-oss-safeguard-20b", "request_seed": request_seed})
        resolved = model_presets.resolve(settings, on_cpu=on_cpu)
        params = sampling_params(settings, POLICIES[OutputFormat.BINARY], harmony=True, resolved=resolved)
        assert params.seed == expected, (on_cpu, request_seed)
    assert engine_args(settings_factory(), on_cpu=True)["seed"] == 0


def test_settings_override_the_preset(settings_factory):
    params, resolved = _params(settings_factory, "openai/gpt-oss-safeguard-20b", OutputFormat.JSON,
                               temperature=0.0, max_tokens=99)
    assert (params.temperature, params.top_p, params.max_tokens) == (0.0, 1.0, 99)
    assert resolved.sources["temperature"] == "setting" and resolved.sources["top_p"] == "preset gpt-oss-safeguard-20b"


def test_structured_outputs_off(settings_factory):
    for name in ("openai/gpt-oss-safeguard-20b", "qwen2.5-0.5b-instruct"):
        params, _ = _params(settings_factory, name, OutputFormat.JSON, structured_outputs=False)
        assert params.structured_outputs is None


def test_the_structural_tag_compiles_in_xgrammar():
    import xgrammar as xgr

    for policy in POLICIES.values():
        xgr.Grammar.from_structural_tag(json.dumps(prompts.harmony_structural_tag(policy)))
