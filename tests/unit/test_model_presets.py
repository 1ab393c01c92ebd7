"""Per-model presets: what each model gets, settings always win, harmony from config.json, and the
vLLM engine arguments built from them in one place (engines/vllm_args.py)."""

from __future__ import annotations

import json

from safeguard_flow.models import presets as model_presets
from safeguard_flow.engines.vllm_args import GIB, cpu_thread_env, engine_args
from safeguard_flow.models.presets import resolve


def test_gpt_oss_safeguard_gets_the_model_card_and_the_recipe(settings_factory):
    for name, util in (("openai/gpt-oss-safeguard-20b", 0.9), ("openai/gpt-oss-safeguard-120b", 0.95)):
        r = resolve(settings_factory(model={"name": name}), on_cpu=False)
        assert r.harmony and r.preset.key == name.split("/")[1]
        assert (r.values["temperature"], r.values["top_p"]) == (1.0, 1.0)
        assert [r.max_tokens_for(e) for e in ("low", "medium", "high")] == [2048, 4096, 8192]
        assert r.values["max_model_len"] >= 8192 + 10_000  # the largest budget next to a long policy and post
        args = engine_args(settings_factory(model={"name": name}), on_cpu=False)
        assert "max_num_seqs" not in args  # vLLM's own batching limit (1024 on H100/H200)
        assert args["gpu_memory_utilization"] == util and args["tensor_parallel_size"] == 1
        assert args["async_scheduling"] is True and "block_size" not in args and "enforce_eager" not in args


def test_settings_win_over_every_preset_field(settings_factory):
    s = settings_factory(model={"name": "openai/gpt-oss-safeguard-120b", "temperature": 0.2, "max_tokens": 333,
                                "max_num_seqs": 8, "tensor_parallel_size": 2, "engine_kwargs": {"async_scheduling": False}})
    r = resolve(s, on_cpu=False)
    assert r.values["temperature"] == 0.2 and r.sources["temperature"] == "setting"
    assert [r.max_tokens_for(e) for e in ("low", "high")] == [333, 333]
    assert r.sources["top_p"] == "preset gpt-oss-safeguard-120b"
    args = engine_args(s, on_cpu=False)
    assert (args["max_num_seqs"], args["tensor_parallel_size"], args["async_scheduling"]) == (8, 2, False)


def test_a_setting_equal_to_the_default_still_counts_as_set(settings_factory):
    # model_fields_set, not "differs from the default": an explicit 0.0 keeps greedy decoding.
    r = resolve(settings_factory(model={"name": "openai/gpt-oss-safeguard-20b", "temperature": 0.0}), on_cpu=True)
    assert r.values["temperature"] == 0.0 and r.sources["temperature"] == "setting"


def test_small_local_models_keep_todays_values(settings_factory):
    s = settings_factory(model={"name": "qwen2.5-0.5b-instruct"})
    r = resolve(s, on_cpu=True)
    assert not r.harmony and r.preset.key == "small-local"
    assert {k: r.values[k] for k in ("temperature", "max_tokens", "max_model_len", "max_num_seqs")} == \
        {"temperature": 0.0, "max_tokens": 128, "max_model_len": 4096, "max_num_seqs": 64}
    args = engine_args(s, on_cpu=True)
    assert args == {"max_model_len": 4096, "dtype": "auto", "tensor_parallel_size": 1, "enable_prefix_caching": True,
                    "seed": 0, "max_num_seqs": 64, "enforce_eager": True, "block_size": 32,
                    "kv_cache_memory_bytes": 2 * GIB,
                    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


def test_kv_cache_setting_sizes_the_cpu_engine(settings_factory):
    args = engine_args(settings_factory(model={"kv_cache_gib": 3}), on_cpu=True)
    assert args["kv_cache_memory_bytes"] == 3 * GIB
    assert "kv_cache_memory_bytes" not in engine_args(settings_factory(), on_cpu=False)


def test_cpu_threads_bind_default_keeps_no_core_back(settings_factory):
    import pytest

    from safeguard_flow.settings import SettingsError

    # "all": vLLM's auto binding finds the engine's cores where it starts, with none kept back for its
    # scheduler (vLLM's own auto keeps one per rank: half of a 2-core machine).
    assert cpu_thread_env(settings_factory()) == {"VLLM_CPU_OMP_THREADS_BIND": "auto",
                                                  "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu_thread_env(settings_factory(model={"cpu_threads_bind": "auto"})) == {"VLLM_CPU_OMP_THREADS_BIND": "auto"}
    assert cpu_thread_env(settings_factory(model={"cpu_threads_bind": "0-3|4-7"})) == {"VLLM_CPU_OMP_THREADS_BIND": "0-3|4-7"}
    with pytest.raises(SettingsError, match="cpu_threads_bind"):
        settings_factory(model={"cpu_threads_bind": "cores 0 and 1"})


def test_harmony_comes_from_config_json_before_the_name(settings_factory, tmp_path):
    store = tmp_path / "model-store" / "policy-classifier-v3"  # a path without "gpt-oss" in it
    store.mkdir(parents=True)
    (store / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "num_hidden_layers": 36}))
    r = resolve(settings_factory(model={"name": str(store)}), on_cpu=False)
    assert r.harmony and r.harmony_reason == "config.json model_type=gpt_oss"
    assert r.preset.key == "gpt-oss-safeguard-120b"  # told apart by its architecture
    # A name that says gpt-oss but a checkpoint that is not: the checkpoint wins.
    odd = tmp_path / "gpt-oss-lookalike"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    r = resolve(settings_factory(model={"name": str(odd)}), on_cpu=True)
    assert not r.harmony and r.harmony_reason == "config.json model_type=qwen2"
    # No config.json at hand (a hub id served remotely): the name decides.
    r = resolve(settings_factory(model={"name": "openai/gpt-oss-safeguard-20b"}), on_cpu=True)
    assert r.harmony and "name" in r.harmony_reason
    r = resolve(settings_factory(model={"name": str(odd), "prompt_format": "harmony"}), on_cpu=True)
    assert r.harmony and r.harmony_reason == "model.prompt_format=harmony"


def test_model_info_says_where_each_value_came_from(settings_factory):
    info = resolve(settings_factory(model={"name": "gpt-oss-tiny", "max_model_len": 2048}), on_cpu=True).as_dict()
    assert info["preset"] == "gpt-oss-tiny"
    assert info["settings"]["max_model_len"] == {"value": 2048, "from": "setting"}
    assert info["settings"]["temperature"] == {"value": 1.0, "from": "preset gpt-oss-tiny"}
    assert info["output_budget_by_effort"] == {"low": 384, "medium": 512, "high": 768}
    assert model_presets.find_preset("/models/unknown-model") is None


def test_presets_survive_the_trip_to_a_ray_replica(settings_factory):
    from safeguard_flow.raylib.shipping.settings_env import resolve_paths

    shipped = resolve_paths(settings_factory(model={"name": "openai/gpt-oss-safeguard-20b", "max_tokens": 700}))
    r = resolve(shipped, on_cpu=False)
    assert r.sources["temperature"] == "preset gpt-oss-safeguard-20b" and r.values["temperature"] == 1.0
    assert r.values["max_tokens"] == 700 and r.sources["max_tokens"] == "setting"
