"""Typed settings, in one place, with one precedence.

Each setting is resolved from these sources, later ones winning:

1. the defaults declared below;
2. a YAML file, only when one is named: ``--config PATH`` (CLI, Ray jobs) or ``SAFEGUARD_CONFIG``.
   No file is picked up implicitly: a ``safeguard.yaml`` in the working directory is ignored unless
   named, so a process means the same wherever it starts (`config show` notes an unused one).
   Relative paths inside the file (``home``, ``policies_dir``, ``model.cache_dir``, a relative
   ``sqlite:///file.db`` URL) are relative to the file's folder, not to the working directory;
3. environment variables ``SAFEGUARD_<SECTION>__<FIELD>`` (``SAFEGUARD_WAREHOUSE__URL``,
   ``SAFEGUARD_RAY__NUM_REPLICAS=4``; top-level fields: ``SAFEGUARD_HOME``). A value is parsed by
   the field's type (pydantic-settings): ``SAFEGUARD_WAREHOUSE__DB_SCHEMA=no`` is the string "no",
   ``SAFEGUARD_MODEL__DTYPE=16`` the string "16"; lists and dicts are JSON
   (``SAFEGUARD_SOURCES='[{"table": "posts"}]'``). Relative paths are relative to the working dir;
4. keyword overrides of :func:`load_settings` (code and tests);
5. an Airflow connection, for the fields it owns (:data:`CONNECTION_FIELDS`: the warehouse URL,
   table prefix and schema of ``safeguard_warehouse_default``), applied by the hook through
   :func:`apply_connection`.

Nothing else reads ``SAFEGUARD_*`` or another raw variable to change a typed setting.
``safeguard-flow config show`` prints the settings in force and where each value came from;
secrets never print (``repr``, ``config show``, hooks and the UI go through ``redact.mask_value``).
Errors name the setting to fix, in the dotted and the environment form the user would edit.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from safeguard_flow.redact import mask_value

ENV_PREFIX = "SAFEGUARD_"
# A plain SQL identifier: any table, schema or column name taken from settings or flags must be one.
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __repr_args__(self):  # repr() and str() never show a secret
        for name, value in super().__repr_args__():
            yield name, mask_value(str(name), value)


def _identifier(value: str | None, what: str) -> str | None:
    if value is not None and not IDENT_RE.match(value):
        raise ValueError(f"{what} {value!r} is not a plain SQL identifier (letters, digits, '_')")
    return value


class SourceFilter(_Section):
    """A structured row filter: ``column op value``. Never raw SQL."""

    column: str
    op: Literal["=", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null"] = "="
    value: Any = None

    _check_column = field_validator("column")(lambda cls, v: _identifier(v, "column"))

    @field_validator("value")
    @classmethod
    def _scalar_value(cls, value: Any, info) -> Any:
        # Caught here, naming the setting, not as a raw driver error at the first extract.
        op = info.data.get("op", "=")
        if op in ("in", "not in"):
            if not isinstance(value, list) or not all(_is_scalar(v) and v is not None for v in value):
                raise ValueError(f"op {op!r} needs a list of plain values (text, numbers, dates), got {value!r}")
        elif op not in ("is null", "is not null") and not _is_scalar(value):
            raise ValueError(f"must be a plain value (text, number, date) for op {op!r}, "
                             f"got a {type(value).__name__}: {value!r}")
        return value


def _is_scalar(value: Any) -> bool:
    import datetime as _dt

    return value is None or isinstance(value, (str, int, float, bool, _dt.date, _dt.datetime))


class SourceSettings(_Section):
    """One warehouse table holding content to label."""

    name: str = "default"
    # The database holding the table (SQLAlchemy URL); empty: the warehouse's (warehouse.url). Content
    # and verdicts may live apart: read from MySQL, write verdicts to PostgreSQL or Snowflake.
    url: str = ""
    table: str
    id_column: str = "id"
    text_column: str = "text"
    updated_at_column: str | None = None
    db_schema: str | None = None
    filters: list[SourceFilter] = Field(default_factory=list)
    # Rows whose updated_at no interval ever selects (NULL, unparseable, in the future) are always
    # counted and reported per run; with this on, every interval run also labels them (once per text).
    sweep_untimed: bool = False

    @field_validator("table", "id_column", "text_column", "updated_at_column", "db_schema")
    @classmethod
    def _ident(cls, v: str | None, info) -> str | None:
        return _identifier(v, info.field_name)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not 1 <= len(v) <= 64:  # the `source` column of the verdict tables is 64 characters
            raise ValueError(f"source name must be 1 to 64 characters, got {len(v)}: {v[:70]!r}")
        return v


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
    # vLLM CPU only: the cores its compute threads run on (VLLM_CPU_OMP_THREADS_BIND). "all": every
    # core the engine's process may use (vLLM's auto binding, no core kept back); "auto": vLLM's default,
    # which keeps one core per rank for its scheduler (half the compute on a 2-core machine); or vLLM's
    # own list syntax ("0-3", "0-3|4-7").
    cpu_threads_bind: str = "all"
    max_num_seqs: int = Field(default=64, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_content_chars: int = Field(default=20_000, ge=1)  # longer content is cut (and flagged)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # A seed on each request (None: on GPU only; on vLLM's CPU sampler it crashes with chunked prefill).
    request_seed: bool | None = None
    # Nucleus sampling; gpt-oss presets use the model card's 1.0 (see model_presets.py).
    top_p: float = Field(default=1.0, gt=0, le=1)

    @field_validator("cpu_threads_bind")
    @classmethod
    def _check_bind(cls, v: str) -> str:
        v = v.strip()
        if v not in ("all", "auto") and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*(\|\d+(-\d+)?(,\d+(-\d+)?)*)*", v):
            raise ValueError(f"{v!r} is not 'all', 'auto' or a core list such as '0-3' or '0-3|4-7'")
        return v


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
    # Ray's token auth for a cluster we start (the local head, an in-process Ray): "token" unless the
    # RAY_AUTH_MODE variable says otherwise (tests and `make` set "disabled"); for a cluster we only
    # connect to, what the connection's token needs (see airflow/ray_hook.check_auth).
    auth_mode: Literal["disabled", "token"] = Field(
        default_factory=lambda: "disabled" if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" else "token")
    num_replicas: int = Field(default=1, ge=1)
    num_cpus_per_replica: float = Field(default=1.0, ge=0)
    num_gpus_per_replica: float = Field(default=0.0, ge=0)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    job_timeout_s: float = Field(default=6 * 3600, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)
    max_restarts: int = Field(default=3, ge=-1)  # restarts of a dead replica (-1: forever)
    # Policy affinity: split the run's policies into one share per replica (balanced by policy length),
    # so a replica's KV cache holds only its share's policy prefixes; each chunk then passes every
    # share's replicas in turn and the last stages it. Off: every replica labels every policy of the
    # chunks it gets (chunks go round robin). It pays when the policy prefixes of a run outgrow one
    # replica's KV cache (many or long policies); BENCHMARKS.md has the figures.
    policy_affinity: bool = False
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
    # Custom Ray resources each label replica requests, e.g. {"sg_replica": 1} with `ray start
    # --resources '{"sg_replica": 1}'` on each node to place one replica per node.
    resources_per_replica: dict[str, float] = Field(default_factory=dict)
    # Back-pressure. A replica runs up to serve_max_ongoing_requests at once (0: model.max_num_seqs,
    # what its engine batches, on GPU; on CPU at most serve_target_ongoing_requests);
    # serve_max_queued_requests more wait in Serve's HTTP proxy (-1: unbounded); beyond that the proxy
    # answers a 503 at once with Retry-After: serve_retry_after_s, which clients retry. Size the two so
    # that what a replica admits finishes within the clients' timeout: on a CPU replica a batch of
    # max_num_seqs takes longer than most clients wait. serve_request_timeout_s > 0 also ends any
    # request still unanswered after that long with a retryable 408.
    serve_max_ongoing_requests: int = Field(default=0, ge=0)
    serve_max_queued_requests: int = Field(default=16, ge=-1)
    serve_retry_after_s: float = Field(default=1.0, ge=0)
    serve_request_timeout_s: float = Field(default=0.0, ge=0)
    # The host in the advertised base URL; empty: serve_host, or this node's IP when serve_host is a
    # wildcard (0.0.0.0 / ::), which clients cannot connect to.
    serve_advertise_host: str = ""
    # Bearer keys the Serve app accepts (a secret: masked when shown, never in a job's document).
    # Empty: the app refuses to bind anything but loopback. Clients send one as engine.api_key.
    serve_api_keys: list[str] = Field(default_factory=list)
    # Largest request body the Serve app reads (413 beyond): token-id prompts of max_model_len fit.
    serve_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _serve_bounds(self) -> RaySettings:
        if self.serve_min_replicas > self.serve_max_replicas:
            raise ValueError("serve_min_replicas is greater than serve_max_replicas")
        if self.serve_max_queued_requests == 0:  # Ray Serve refuses a queue of 0
            raise ValueError("serve_max_queued_requests must be -1 (unbounded) or at least 1")
        return self


class QualitySettings(_Section):
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    min_positive_rate: float = Field(default=0.0, ge=0, le=1)
    # A model that calls most content positive is broken, not busy (the 0.5B stand-in labels 97% as spam).
    max_positive_rate: float = Field(default=0.8, ge=0, le=1)
    # Input errors (NULL, empty, undecodable content, repeated ids) say nothing about the model: they are
    # counted apart and bounded here, off (None) by default, so content cannot hold a run hostage.
    max_input_error_rate: float | None = Field(default=None, ge=0, le=1)
    # Positive-rate checks (fixed bounds and drift) need this many labelled verdicts of a policy version
    # in the run: a five-item interval with three spam posts says nothing about the model.
    min_sample: int = Field(default=20, ge=1)
    # Drift: a policy version's positive rate in the run may differ from its trailing rate (its last
    # drift_window published labelled verdicts, when there are at least drift_min_history) by at most
    # this much, absolute. None: off.
    drift_tolerance: float | None = Field(default=0.25, gt=0, le=1)
    drift_window: int = Field(default=10_000, ge=1)
    drift_min_history: int = Field(default=100, ge=1)

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


class ReviewSettings(_Section):
    """Human review: which published verdicts go to the review queue (safeguard_flow.review.routing)."""

    enabled: bool = True  # nightly and relabel runs route what they publish
    confidence_below: float = Field(default=0.7, ge=0, le=1)  # an ok verdict with confidence under this is doubtful
    audit_rate: float = Field(default=0.02, ge=0, le=1)  # uniform random audit sample per policy version
    # The audit rate of the doubtful stratum (confidence under confidence_below, or none); None: audit_rate.
    # Oversampling it is fine: every audit item keeps its sampling probability and estimates weight by it.
    audit_rate_doubtful: float | None = Field(default=None, ge=0, le=1)
    route_flips: bool = True  # a verdict whose label differs from the previous version's
    lease_seconds: int = Field(default=600, ge=10, le=86_400)  # one reviewer holds an item this long
    seed: str = ""  # salt of the audit draw (a draw is a hash of the item: the same item, the same draw)


class DeadlineSettings(_Section):
    """How long each step may take (the Airflow task's execution_timeout, the CLI's label step too) and
    how a run that stopped without saying so is told apart from one still being worked on."""

    extract_s: float = Field(default=2 * 3600, gt=0)
    label_s: float = Field(default=6 * 3600, gt=0)  # the whole label step (the Ray job's own limit is ray.job_timeout_s)
    validate_s: float = Field(default=3600, gt=0)
    publish_s: float = Field(default=3600, gt=0)
    # A working step writes a heartbeat to its run this often; a run in extracting/labelling whose last
    # heartbeat is older than stale_after_s is failed, with the reason, by the next attempt at it.
    heartbeat_s: float = Field(default=30.0, gt=0)
    stale_after_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> DeadlineSettings:
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError("stale_after_s must be more than twice heartbeat_s (a live job would look dead)")
        return self

    def for_step(self, step: str) -> float:
        """The deadline of `step` (extract, label, validate, publish) in seconds."""
        return float(getattr(self, f"{step}_s"))


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


class CascadeSettings(_Section):
    """The cascade (engines/cascade.py): a small classifier per policy version that decides the clear
    items before the model; `safeguard-flow cascade train` makes one."""

    enabled: bool = True  # use a policy version's trained cascade in label jobs (none trained: no effect)
    min_agreement: float = Field(default=0.98, gt=0.5, le=1)  # lower bound of agreement with the teacher on decided items
    bound_confidence: float = Field(default=0.95, gt=0.5, lt=1)  # one-sided level of that lower bound
    audit_rate: float = Field(default=0.05, ge=0, le=1)  # decided items still sent to the model, to measure agreement
    min_audit: int = Field(default=20, ge=1)  # audited items before audit agreement may switch the cascade off
    folds: int = Field(default=5, ge=2, le=20)  # cross-fitting folds that choose the thresholds
    batch_size: int = Field(default=64, ge=1)  # texts per encoder batch
    max_chars: int = Field(default=2000, ge=1)  # the encoder reads 256 tokens; longer text is cut first
    seed: int = 0


class RetentionSettings(_Section):
    """How long what a run leaves behind is kept (`safeguard-flow retention`, the nightly DAG's retention
    task; `publish` clears a run's text copies itself when text_days is 0). Days; None keeps forever.
    Run rows, their per-version gate rows and published verdicts are never purged."""

    # The copies of the content in a published run's work list (an erasure at the source must not live
    # on here): 0 = as soon as the run is published.
    text_days: int | None = Field(default=0, ge=0)
    # A published run's work list, chunks and staged verdicts (published verdicts are in the verdict table).
    staging_days: int | None = Field(default=7, ge=0)
    analysis_days: int | None = Field(default=30, ge=0)  # the model's analysis channel (warehouse.store_analysis)
    eval_predictions_days: int | None = Field(default=180, ge=0)  # per-row eval predictions (scores stay)
    reports_days: int | None = Field(default=90, ge=0)  # <home>/reports/<run_id>/ validation reports
    logs_days: int | None = Field(default=14, ge=0)  # <home>/logs/*.log (the CLI's and the demo's per-run logs)
    # The local Ray head's log (<home>/ray/head-<port>.log, appended to): copied to .1 (older ones shifted,
    # log_backups kept) and emptied when bigger than this.
    log_max_mb: float = Field(default=50.0, gt=0)
    log_backups: int = Field(default=3, ge=0)


class Settings(BaseSettings):
    # Environment names and parsing for pydantic-settings; `Settings(...)` itself reads no source
    # (see settings_customise_sources): load_settings() assembles them in the documented order.
    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter="__", case_sensitive=False)

    home: str = ""  # empty: ./.safeguard (run state, the embedded SQLite warehouse, reports)
    policies_dir: str = "policies"
    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    sources: list[SourceSettings] = Field(default_factory=list)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    policy_gate: PolicyGateSettings = Field(default_factory=PolicyGateSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    cascade: CascadeSettings = Field(default_factory=CascadeSettings)

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

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)

    def __repr_args__(self):  # repr() and str() never show a secret
        for name, value in super().__repr_args__():
            yield name, mask_value(str(name), value)

    def __eq__(self, other: object) -> bool:  # the same values are the same settings, whatever their origin
        if not isinstance(other, Settings):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def origin(self, dotted: str) -> str:
        """Where the value of setting `dotted` (e.g. ``warehouse.url``) came from: ``default``,
        ``yaml PATH``, ``env SAFEGUARD_...``, ``override`` or ``connection ID``."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            found = self._origins.get(".".join(parts[:i]))
            if found:
                return found
        return "default"

    def source(self, name: str) -> SourceSettings:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise SettingsError(f"sources: no source named {name!r} (known: {known})")


# ---- loading: one precedence (see the module docstring) -----------------------------------------

# The fields an Airflow connection owns; the hook passes their values to apply_connection().
CONNECTION_FIELDS: dict[str, frozenset[str]] = {"warehouse": frozenset({"url", "table_prefix", "db_schema"})}

# Settings holding a filesystem path: relative values in a YAML file are relative to the file.
_PATH_FIELDS = (("home",), ("policies_dir",), ("model", "cache_dir"))


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (default: os.environ)."""

    def __init__(self, environ: dict[str, str]):
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self):
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _leaves(data: dict[str, Any], model: type[BaseModel] = None, prefix: tuple[str, ...] = ()):
    """(path, value) of every setting in `data`, stopping at fields that are not sections (a dict
    field such as ray.runtime_env is one setting)."""
    model = model or Settings
    for key, value in data.items():
        field = model.model_fields.get(key)
        sub = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _leaves(value, sub, (*prefix, key))
        else:
            yield (*prefix, key), value


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(path).upper()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the settings file: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: must be a mapping of settings")
    return _relative_to(data, path.parent)


def _relative_to(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Make the file's relative paths (and a relative SQLite URL) relative to its folder."""
    for path in _PATH_FIELDS:
        node = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(path[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and not value.startswith("~"):
            node[path[-1]] = str(folder / value)
    warehouse = data.get("warehouse")
    if isinstance(warehouse, dict) and isinstance(warehouse.get("url"), str):
        warehouse["url"] = _sqlite_relative_to(warehouse["url"], folder)
    return data


def _sqlite_relative_to(url: str, folder: Path) -> str:
    if not url.startswith("sqlite"):
        return url
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except Exception:  # invalid URLs are reported where they are used (warehouse.db)
        return url
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:") or Path(db).is_absolute():
        return url
    return parsed.set(database=str(folder / db)).render_as_string(hide_password=False)


def load_settings(config_file: str | Path | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """The settings in force: defaults < YAML (`config_file`, else SAFEGUARD_CONFIG) < environment
    (`environ`, default os.environ) < `overrides` (nested dicts merge). Raises SettingsError."""
    environ = dict(os.environ if environ is None else environ)
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            given = "--config" if config_file else f"{ENV_PREFIX}CONFIG"
            raise SettingsError(f"{given}: config file {path} does not exist")
        layers.append((f"yaml {path.resolve()}", _read_yaml(path)))
    try:
        env = _Environ(environ)()
    except Exception as exc:  # a list/dict variable that is not JSON
        raise SettingsError(f"{ENV_PREFIX}* environment: {exc}") from None
    layers += [("env", env), ("override", overrides)]

    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, layer in layers:
        data = _merge(data, layer)
        for leaf, _ in _leaves(layer):
            dotted = ".".join(leaf)
            origins = {k: v for k, v in origins.items() if not k.startswith(dotted + ".")}
            origins[dotted] = f"env {_env_name(leaf)}" if name == "env" else name
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path)) from None
    settings._origins = origins
    return settings


def apply_connection(settings: Settings, conn_id: str, section: str, values: dict[str, Any]) -> Settings:
    """`settings` with the fields an Airflow connection owns taken from it (they win over every
    other source); their origin reads ``connection <conn_id>``."""
    owned = CONNECTION_FIELDS.get(section, frozenset())
    unknown = sorted(set(values) - owned)
    if unknown:
        raise SettingsError(f"connection {conn_id!r}: {unknown} are not {section} settings a connection "
                            f"sets (it sets: {', '.join(sorted(owned))})")
    data = settings.model_dump()
    data[section] = {**data[section], **values}
    try:
        merged = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, None, where=f"connection {conn_id!r}")) from None
    merged._origins = {**settings._origins, **{f"{section}.{k}": f"connection {conn_id}" for k in values}}
    return merged


def describe(settings: Settings) -> list[tuple[str, Any, str]]:
    """(setting, value as it may be shown, origin) for every setting, secrets masked."""
    rows = []

    def walk(model: BaseModel, prefix: tuple[str, ...]) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            path = (*prefix, name)
            if isinstance(value, BaseModel):
                walk(value, path)
                continue
            if isinstance(value, list) and value and isinstance(value[0], BaseModel):
                value = [v.model_dump() for v in value]
            rows.append((".".join(path), mask_value(name, value), settings.origin(".".join(path))))

    walk(settings, ())
    return rows


def _describe(exc: ValidationError, path: Path | str | None, where: str | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if p not in ("function-after", "function-before")]
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        # A list entry (sources.0.table) has no variable of its own: the list is one JSON value.
        head = []
        for p in loc:
            if isinstance(p, int):
                break
            head.append(str(p))
        env = _env_name(tuple(head)) + (" as a JSON list" if len(head) < len(loc) else "")
        hint = f"in {where}" if where else f"in {path} or {env}" if path else f"set {env}"
        lines.append(f"setting {dotted} ({hint}): {err['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
