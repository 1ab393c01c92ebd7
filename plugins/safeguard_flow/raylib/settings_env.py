"""Carry settings into Ray processes that do not share our working directory.

A Ray job runs in a copy of its working_dir and replicas run in worker processes started by the
raylet, so relative paths (the embedded SQLite warehouse under `home`, the model cache) would point
somewhere else there. We resolve them first, then pass settings either as objects (to replicas) or
as SAFEGUARD_* variables (to a submitted job, which reads them with load_settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from safeguard_flow.settings import ENV_PREFIX, Settings

# Environment of the driver that replicas need too (vLLM CPU tuning, offline model hub, tokenizers).
WORKER_ENV_PREFIXES = ("VLLM_", "OMP_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "KMP_", "LD_PRELOAD")


def resolve_paths(settings: Settings) -> Settings:
    """The same settings with home, warehouse URL, model cache and policies dir made absolute."""
    # Only what was set stays set: model presets (model_presets.py) fill the model fields left unset.
    data = settings.model_dump(exclude_unset=True)
    data["home"] = str(settings.home_path)
    data.setdefault("warehouse", {})["url"] = settings.warehouse_url
    data.setdefault("model", {})["cache_dir"] = str(settings.model_cache_dir.resolve())
    policies = Path(settings.policies_dir).expanduser()
    if not policies.is_absolute() and policies.exists():
        data["policies_dir"] = str(policies.resolve())
    name = Path(settings.model.name).expanduser()
    if not name.is_absolute() and name.exists():  # a local model folder given relative to cwd
        data["model"]["name"] = str(name.resolve())
    return Settings.model_validate(data)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """SAFEGUARD_<SECTION>__<FIELD> variables that rebuild these settings (non-default values only)."""
    defaults = Settings().model_dump(mode="json")
    current = resolve_paths(settings).model_dump(mode="json")
    env: dict[str, str] = {}
    for key, value in current.items():
        if isinstance(value, dict):
            for field, sub in value.items():
                if sub != defaults[key].get(field):
                    env[f"{ENV_PREFIX}{key.upper()}__{field.upper()}"] = _dump(sub)
        elif value != defaults.get(key):
            env[f"{ENV_PREFIX}{key.upper()}"] = _dump(value)
    return env


def _dump(value: Any) -> str:
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
        # load_settings parses values as YAML: quote strings that would come back as something else
        return yaml.safe_dump(value, default_style="'", width=1 << 30).strip()
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip().removesuffix("\n...").strip()


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(WORKER_ENV_PREFIXES)}
