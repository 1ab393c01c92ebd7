"""Carry settings into Ray processes that do not share our working directory.

A Ray job runs on another machine (or at least another cwd) and replicas run in worker processes
started by the raylet, so relative paths (the embedded SQLite warehouse under `home`, the model cache)
would point somewhere else there. We resolve them first, then pass settings either as objects (to
replicas) or as one JSON document (to a submitted job, in its runtime_env), with secrets taken out
(see job_secrets).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safeguard_flow.redact import is_secret_name
from safeguard_flow.settings import Settings, SettingsError

# Environment of the driver that replicas need too (vLLM CPU tuning, offline model hub, tokenizers).
WORKER_ENV_PREFIXES = ("VLLM_", "OMP_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "KMP_", "LD_PRELOAD")
# The runtime_env variable holding a job's settings document. Deliberately not SAFEGUARD_*: it is
# not a setting of its own, and the settings loader must not read it as one.
SETTINGS_DOC_ENV = "SGFLOW_JOB_SETTINGS"
_DOC_KIND = "safeguard-flow settings"


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


def settings_document(settings: Settings) -> tuple[str, dict[str, str]]:
    """(the job's settings as one JSON document without secrets, the secrets taken out of it)."""
    from safeguard_flow.raylib.shipping.job_secrets import split_secrets

    public, secrets = split_secrets(resolve_paths(settings))
    doc = {"kind": _DOC_KIND, "settings": public, "secret_fields": sorted(secrets)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")), secrets


def settings_from_document(doc: str, secrets: dict[str, str] | None = None) -> Settings:
    """Rebuild the settings a submitter sent (`settings_document`), with the secrets put back."""
    from safeguard_flow.raylib.shipping.job_secrets import apply_secrets, dotted

    try:
        parsed = json.loads(doc)
    except ValueError as exc:
        raise SettingsError(f"{SETTINGS_DOC_ENV}: not a JSON document: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("kind") != _DOC_KIND:
        raise SettingsError(f"{SETTINGS_DOC_ENV}: not a safeguard-flow settings document")
    missing = sorted(dotted(k) for k in set(parsed.get("secret_fields") or []) - set(secrets or {}))
    if missing:
        raise SettingsError(f"the job's settings need secret(s) {missing} but the job was given none "
                            "(submit it with --secrets, as RayLabelJobOperator does)")
    data = apply_secrets(parsed["settings"], secrets or {})
    try:
        return Settings.model_validate(data)
    except ValueError as exc:
        raise SettingsError(f"{SETTINGS_DOC_ENV}: {exc}") from None


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's engine tuning variables for replicas on the same machine: never a credential that
    shares a prefix (HF_TOKEN, VLLM_API_KEY)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(WORKER_ENV_PREFIXES) and not is_secret_name(k)}

