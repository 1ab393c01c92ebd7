"""Per-model presets: what a model needs that the generic defaults do not give it.

A preset fills only the `model.*` fields the user did not set (pydantic's ``model_fields_set`` on the
model section): settings always win. `resolve(settings)` says, field by field, what is in force and
why (`safeguard-flow model info` prints it).

- gpt-oss-safeguard-20b / -120b: the model card's sampling (temperature 1.0, top_p 1.0), an output
  budget that grows with the policy's reasoning effort and a context that holds the largest budget,
  vLLM's own batching limits on GPU (max_num_seqs left to vLLM: 1024 on H100/H200), and the vLLM
  gpt-oss recipe's memory layout: one GPU each (20b: 24+ GB, 120b: one 80 GB H100/H200, weights
  ~61 GB, so gpu_memory_utilization 0.95 leaves ~13 GB of KV cache), async scheduling.
- gpt-oss-tiny: the random-weight stand-in (`model prepare gpt-oss-tiny`): the same sampling and
  harmony path, budgets sized for a 2-core CPU.
- the small local chat models: today's values (the ModelSettings defaults).

Harmony (the gpt-oss prompt format) is detected from the checkpoint's ``config.json``
(``model_type: gpt_oss``) when the folder is at hand, the name only as a fallback, and
``model.prompt_format`` overrides both. This module imports no vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from safeguard_flow.settings import ModelSettings, Settings

HARMONY_MODEL_TYPES = frozenset({"gpt_oss"})
EFFORTS = ("low", "medium", "high")
VLLM_DEFAULT = None  # a preset value meaning "leave this engine argument to vLLM"


@dataclass(frozen=True)
class Preset:
    key: str
    description: str
    harmony: bool
    names: tuple[str, ...]  # lower-case substrings of a model name/path that select this preset
    values: Mapping[str, Any] = field(default_factory=dict)  # model.* field -> value, any device
    gpu: Mapping[str, Any] = field(default_factory=dict)  # model.* field -> value, on GPU only
    cpu: Mapping[str, Any] = field(default_factory=dict)  # model.* field -> value, on CPU only
    output_budget: Mapping[str, int] | None = None  # reasoning effort -> max_tokens (model.max_tokens unset)
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra vLLM args on GPU (engine_kwargs wins)
    retry_factor: int = 4  # a reasoning model cut off by its budget is retried once with budget x this


_GPT_OSS_SAMPLING = {"temperature": 1.0, "top_p": 1.0}

PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset(
            key="gpt-oss-safeguard-20b",
            description="openai/gpt-oss-safeguard-20b: one 24+ GB GPU (H100/A100 class for throughput)",
            harmony=True,
            names=("gpt-oss-safeguard-20b", "gpt-oss-20b"),
            values={**_GPT_OSS_SAMPLING, "max_model_len": 32_768},
            gpu={"max_num_seqs": VLLM_DEFAULT, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9},
            output_budget={"low": 2_048, "medium": 4_096, "high": 8_192},
            engine_kwargs={"async_scheduling": True},
        ),
        Preset(
            key="gpt-oss-safeguard-120b",
            description="openai/gpt-oss-safeguard-120b: one 80 GB H100/H200 (or a tensor-parallel group)",
            harmony=True,
            names=("gpt-oss-safeguard-120b", "gpt-oss-120b"),
            values={**_GPT_OSS_SAMPLING, "max_model_len": 32_768},
            gpu={"max_num_seqs": VLLM_DEFAULT, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.95},
            output_budget={"low": 2_048, "medium": 4_096, "high": 8_192},
            engine_kwargs={"async_scheduling": True},
        ),
        Preset(
            key="gpt-oss-tiny",
            description="random-weight gpt-oss (2 layers, 4 experts) built offline: the harmony path on a CPU",
            harmony=True,
            names=("gpt-oss-tiny",),
            values={**_GPT_OSS_SAMPLING, "max_model_len": 4_096, "max_num_seqs": 16, "kv_cache_gib": 1},
            output_budget={"low": 384, "medium": 512, "high": 768},
            retry_factor=2,
        ),
        Preset(
            key="small-local",
            description="small local chat model (Qwen2.5 0.5B/1.5B from GGUF): the generic defaults",
            harmony=False,
            names=("qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct"),
        ),
    )
}

# The model.* fields a preset may fill, in the order `model info` shows them.
PRESET_FIELDS = ("temperature", "top_p", "max_tokens", "max_model_len", "max_num_seqs", "tensor_parallel_size",
                 "gpu_memory_utilization", "kv_cache_gib")


@dataclass
class ResolvedModel:
    """The model settings in force: each value and where it came from."""

    name: str
    preset: Preset | None
    harmony: bool
    harmony_reason: str
    values: dict[str, Any]
    sources: dict[str, str]
    output_budget: dict[str, int] | None
    engine_kwargs: dict[str, Any]
    config: dict[str, Any] | None  # the checkpoint's config.json, when it was found
    on_cpu: bool = False  # resolved for vLLM's CPU platform

    def max_tokens_for(self, effort: str | None) -> int:
        """Output budget for one request: model.max_tokens if set, else the preset's per-effort budget."""
        if self.output_budget and self.sources.get("max_tokens", "").startswith("preset"):
            return self.output_budget.get(effort or "medium", self.values["max_tokens"])
        return self.values["max_tokens"]

    @property
    def retry_factor(self) -> int:
        return self.preset.retry_factor if self.preset else 4

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "preset": self.preset.key if self.preset else None,
            "harmony": self.harmony,
            "harmony_reason": self.harmony_reason,
            "settings": {k: {"value": self.values[k], "from": self.sources[k]} for k in self.values},
            "output_budget_by_effort": (
                {e: self.max_tokens_for(e) for e in EFFORTS} if self.output_budget else None),
            "engine_kwargs_from_preset": self.engine_kwargs,
        }


def find_preset(name: str, config: Mapping[str, Any] | None = None) -> Preset | None:
    """The preset for a model name (key, hub id or path), else one matching the checkpoint's config."""
    lowered = name.lower()
    base = Path(lowered.rstrip("/")).name
    for preset in PRESETS.values():
        if base == preset.key or any(n in base or n in lowered for n in preset.names):
            return preset
    if config and config.get("model_type") in HARMONY_MODEL_TYPES:
        # A model-store path without the name in it: tell the sizes apart by their architecture.
        layers = config.get("num_hidden_layers")
        if layers == 36:
            return PRESETS["gpt-oss-safeguard-120b"]
        if layers == 24:
            return PRESETS["gpt-oss-safeguard-20b"]
        if (config.get("hidden_size") or 0) <= 512:
            return PRESETS["gpt-oss-tiny"]
        return PRESETS["gpt-oss-safeguard-20b"]
    return None


def checkpoint_config(settings: Settings, model_path: str | None = None) -> dict[str, Any] | None:
    """config.json of the model folder when it is on this machine (never prepares or downloads)."""
    candidates = []
    if model_path:
        candidates.append(Path(model_path))
    name = settings.model.name
    candidates.append(settings.model_cache_dir / name)
    candidates.append(Path(name).expanduser())
    for folder in candidates:
        try:
            return json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
    return None


def detect_harmony(settings: Settings, config: Mapping[str, Any] | None) -> tuple[bool, str]:
    m = settings.model
    if m.prompt_format != "auto":
        return m.prompt_format == "harmony", f"model.prompt_format={m.prompt_format}"
    if config is not None and config.get("model_type"):
        kind = config["model_type"]
        return kind in HARMONY_MODEL_TYPES, f"config.json model_type={kind}"
    if "gpt-oss" in m.name.lower():
        return True, "name contains gpt-oss (no config.json found)"
    return False, "no config.json found and the name is not a gpt-oss model"


def resolve(settings: Settings, *, on_cpu: bool | None = None, model_path: str | None = None) -> ResolvedModel:
    """Merge defaults < preset < settings for the model section. `on_cpu` None: ask the platform."""
    m = settings.model
    config = checkpoint_config(settings, model_path)
    harmony, reason = detect_harmony(settings, config)
    preset = find_preset(m.name, config)
    if on_cpu is None:
        on_cpu = _platform_is_cpu()
    preset_values: dict[str, Any] = {}
    if preset is not None:
        preset_values = {**preset.values, **(preset.cpu if on_cpu else preset.gpu)}
        if preset.output_budget:
            preset_values["max_tokens"] = preset.output_budget["medium"]
    explicit = m.model_fields_set
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in PRESET_FIELDS:
        if name in explicit:
            values[name], sources[name] = getattr(m, name), "setting"
        elif name in preset_values:
            values[name], sources[name] = preset_values[name], f"preset {preset.key}"
        else:
            values[name], sources[name] = getattr(m, name), "default"
    engine_kwargs = dict(preset.engine_kwargs) if (preset and not on_cpu) else {}
    return ResolvedModel(name=m.name, preset=preset, harmony=harmony, harmony_reason=reason, values=values,
                         sources=sources, output_budget=dict(preset.output_budget) if preset and preset.output_budget
                         else None, engine_kwargs=engine_kwargs, config=config, on_cpu=on_cpu)


def _platform_is_cpu() -> bool:
    """vLLM's own answer when it is installed; without vLLM (an HTTP client), assume no local GPU."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return True
    return bool(current_platform.is_cpu())


assert set(PRESET_FIELDS) <= set(ModelSettings.model_fields)
