"""Typed settings, in one place.

Sources, later ones winning: defaults below < a YAML file (``SAFEGUARD_CONFIG``, else
``./safeguard.yaml`` if present) < environment variables ``SAFEGUARD_<SECTION>__<FIELD>``
(for example ``SAFEGUARD_WAREHOUSE__URL`` or ``SAFEGUARD_RAY__NUM_REPLICAS=4``).

Errors name the setting to fix, in the same dotted/env form the user would edit.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "SAFEGUARD_"
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _identifier(value: str | None, what: str) -> str | None:
    if value is not None and not _IDENT_RE.match(value):
        raise ValueError(f"{what} {value!r} is not a plain SQL identifier (letters, digits, '_')")
    return value


class SourceFilter(_Section):
    """A structured row filter: ``column op value``. Never raw SQL."""

    column: str
    op: Literal["=", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null"] = "="
    value: Any = None

    _check_column = field_validator("column")(lambda cls, v: _identifier(v, "column"))


class SourceSettings(_Section):
    """One warehouse table holding content to label."""

    name: str = "default"
    table: str
    id_column: str = "id"
    text_column: str = "text"
    updated_at_column: str | None = None
    db_schema: str | None = None
    filters: list[SourceFilter] = Field(default_factory=list)

    @field_validator("table", "id_column", "text_column", "updated_at_column", "db_schema")
    @classmethod
    def _ident(cls, v: str | None, info) -> str | None:
        return _identifier(v, info.field_name)


class WarehouseSettings(_Section):
    url: str = ""  # empty: sqlite file under `home`
    table_prefix: str = "sg_"
    db_schema: str | None = None
    chunk_size: int = Field(default=500, ge=1, le=100_000)
    store_analysis: bool = False  # keep the model's chain of thought (audit table); off by default

    @field_validator("table_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,20}$", v):
            raise ValueError(f"table_prefix {v!r} must be letters, digits and '_' (max 21 chars)")
        return v

    _check_schema = field_validator("db_schema")(lambda cls, v: _identifier(v, "db_schema"))


class ModelSettings(_Section):
    # A local model key known to `safeguard-flow model prepare`, a local HF folder, or a model id
    # the engine can reach (for example openai/gpt-oss-safeguard-20b on a cluster with a model store).
    name: str = "qwen2.5-0.5b-instruct"
    # "auto": gpt-oss models use the harmony format, everything else its own chat template.
    prompt_format: Literal["auto", "harmony", "chat"] = "auto"
    cache_dir: str = ""  # empty: ~/.cache/safeguard-flow/models
    max_model_len: int = Field(default=4096, ge=256)
    max_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    structured_outputs: bool = True
    dtype: str = "auto"
    kv_cache_gib: int = Field(default=2, ge=1)  # vLLM CPU only (VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int = Field(default=64, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_content_chars: int = Field(default=20_000, ge=1)  # longer content is cut (and flagged)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class EngineSettings(_Section):
    kind: Literal["vllm", "openai"] = "vllm"
    base_url: str = ""  # for kind=openai, e.g. http://127.0.0.1:8000/v1
    api_key: str = "EMPTY"
    concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)


class RaySettings(_Section):
    address: str = ""  # empty: a local Ray started in-process (or by the hook) on 127.0.0.1
    dashboard_url: str = ""  # for job submission, e.g. http://head:8265
    auth_mode: Literal["disabled", "token"] = "disabled"
    num_replicas: int = Field(default=1, ge=1)
    num_cpus_per_replica: float = Field(default=1.0, ge=0)
    num_gpus_per_replica: float = Field(default=0.0, ge=0)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    job_timeout_s: float = Field(default=6 * 3600, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)
    max_restarts: int = Field(default=3, ge=-1)  # restarts of a dead replica (-1: forever)
    # How the Airflow label task runs the Ray label job: "job" submits it to the cluster (Jobs API,
    # deferrable operator); "in_process" runs raylib.run_label_job inside the Airflow worker (local/dev).
    label_mode: Literal["job", "in_process"] = "job"
    # The local head the Ray hook starts when no cluster is configured (GCS port; its other ports follow it).
    local_port: int = Field(default=6380, ge=1024, le=65000)
    local_dashboard_port: int = Field(default=8265, ge=1024, le=65535)
    local_num_cpus: int | None = Field(default=None, ge=1)  # None: os.cpu_count()
    local_object_store_mb: int = Field(default=512, ge=64)
    # The Ray Serve app (ray_jobs/serve_app.py): OpenAI-compatible endpoint with autoscaling replicas.
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8000, ge=1, le=65535)
    serve_min_replicas: int = Field(default=1, ge=0)
    serve_max_replicas: int = Field(default=1, ge=1)
    serve_target_ongoing_requests: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _serve_bounds(self) -> RaySettings:
        if self.serve_min_replicas > self.serve_max_replicas:
            raise ValueError("serve_min_replicas is greater than serve_max_replicas")
        return self


class QualitySettings(_Section):
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    min_positive_rate: float = Field(default=0.0, ge=0, le=1)
    max_positive_rate: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> QualitySettings:
        if self.min_positive_rate > self.max_positive_rate:
            raise ValueError("min_positive_rate is greater than max_positive_rate")
        return self


class PolicyGateSettings(_Section):
    """When `policies promote` (and the relabel flow's auto-promotion) may make a shadow version current."""

    max_f1_drop: float = Field(default=0.02, ge=0, le=1)  # eval F1 of the candidate vs the promoted version
    max_flip_rate: float = Field(default=0.10, ge=0, le=1)  # 0->1 and 1->0 flips / content both labelled
    auto_promote: bool = False  # the relabel flow promotes a shadow version itself when the gate passes
    require_eval: bool = True  # refuse when the policy has an eval dataset but a version has no eval on it


class EvalDatasetSettings(_Section):
    """A labelled dataset for one policy: a JSONL/CSV file or a warehouse table."""

    dataset: str
    label_column: str
    id_column: str = "id"
    text_column: str = "text"
    limit: int | None = Field(default=None, ge=1)


class EvalSettings(_Section):
    policies: dict[str, EvalDatasetSettings] = Field(default_factory=dict)  # by policy name
    bootstrap_samples: int = Field(default=1000, ge=10)  # resamples of rows for the F1 intervals
    seed: int = 0
    output_dir: str = ""  # reports of the relabel flow (evals, diffs); empty: <home>/reports


class Settings(_Section):
    home: str = ""  # empty: ./.safeguard (run state, the embedded SQLite warehouse, reports)
    policies_dir: str = "policies"
    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    sources: list[SourceSettings] = Field(default_factory=list)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    policy_gate: PolicyGateSettings = Field(default_factory=PolicyGateSettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)

    @property
    def home_path(self) -> Path:
        return Path(self.home or ".safeguard").expanduser().resolve()

    @property
    def warehouse_url(self) -> str:
        if self.warehouse.url:
            return self.warehouse.url
        return f"sqlite:///{self.home_path / 'warehouse.db'}"

    @property
    def model_cache_dir(self) -> Path:
        return Path(self.model.cache_dir or "~/.cache/safeguard-flow/models").expanduser()

    def source(self, name: str) -> SourceSettings:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise SettingsError(f"sources: no source named {name!r} (known: {known})")


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """SAFEGUARD_A__B=v -> {"a": {"b": v}}; values are parsed as YAML scalars/lists/maps."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float, bool)) and path[-1] in {"url", "base_url", "api_key", "name", "home"}:
            value = raw  # keep strings that happen to look numeric
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{key}: conflicts with another SAFEGUARD_ variable")
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_settings(config_file: str | Path | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"{ENV_PREFIX}CONFIG: config file {path} does not exist")
    elif Path("safeguard.yaml").is_file():
        path = Path("safeguard.yaml")
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: must be a mapping of settings")
    data = _merge(_merge(data, _env_overrides(environ)), overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path)) from None


def _describe(exc: ValidationError, path: Path | str | None) -> str:
    lines = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in err["loc"] if not isinstance(p, int)).upper()
        where = f" (in {path} or {env})" if path else f" (set {env})"
        lines.append(f"setting {dotted}{where}: {err['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
