"""Warehouse credentials for a submitted job, kept out of the Jobs API.

Everything in a job's entrypoint and runtime_env is public: the dashboard's unauthenticated
`GET /api/jobs/` returns it and every node's `runtime_env_agent.log` prints it. So the settings
document that travels there has its secrets taken out (`split_secrets`), and the secrets go into the
cluster's own key-value store (GCS) under a random one-off name, through the dashboard's package
upload endpoint (`PUT /api/packages/gcs/<name>`, the same authenticated call `ray job submit` uses to
ship a working_dir). The job gets only that name, reads the secrets once after `ray.init` and deletes
them. Why this and not a file or the nodes' environment:

- it works for any cluster the submitter reaches through the dashboard (a file written by the
  submitter exists only on a local head; a node-side secret needs per-cluster setup);
- the dashboard logs only the name, neither the runtime_env agent nor `GET /api/jobs/` ever sees the
  content, and the dashboard's package `GET` answers only whether a name exists;
- it is short-lived: the upload is pinned with Ray's temporary reference (10 min by default,
  RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S), after which GCS deletes an unread secret; the job
  deletes it as soon as it has read it. Ray waits up to 15 min (RAY_JOB_START_TIMEOUT_SECONDS) for a
  job to start, so the submitter pins the upload again while it runs (`_keep_pinned`; each pin's answer is
  checked), and the local head we start keeps temporary references longer than its start timeout
  (other clusters: set RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S above RAY_JOB_START_TIMEOUT_SECONDS).
Replicas get their settings as Ray task arguments from the driver (object store, not logged).

What counts as a secret is redact's one rule (`redact.mask_value` hides it): URL passwords and
credential query parameters in any setting, ODBC/DSN passwords, api keys (engine.api_key,
ray.serve_api_keys), secret-named entries of model.engine_kwargs and of ray.runtime_env.env_vars.
The job's own runtime_env loses its secret-named variables too (`split_env_secrets`); the job puts
them back into its environment and its settings (`apply_env`), so replicas export them
(`export_env`).
"""

from __future__ import annotations

import json
import os
import secrets as _random
from typing import Any

from safeguard_flow.redact import mask_value
from safeguard_flow.settings import Settings, SettingsError

# The first bytes of an upload may be echoed in a Ray error message: keep them harmless.
_HEADER = "safeguard-flow job secrets"
_PREFIX = "_sg_secret_"
# Secret keys are the setting's path, JSON-encoded (a dict key may hold a '.'): '["engine","api_key"]'.
ENV_KEY = "env"  # secrets of the job's runtime_env: '["env","HF_TOKEN"]'
# Pin the upload until Ray stops waiting for the job to start (RAY_JOB_START_TIMEOUT_SECONDS, 900 s).
JOB_START_TIMEOUT_S = 900.0


def _key(path: list[Any]) -> str:
    return json.dumps(path)


def _path(key: str) -> list[Any]:
    return json.loads(key) if key.startswith("[") else key.split(".")


def dotted(key: str) -> str:
    """A secret's key as a reader writes the setting: warehouse.url, ray.runtime_env.env_vars.HF_TOKEN."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in _path(key)).replace(".[", "[")


def split_secrets(settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings as a JSON-able dict with secrets masked, {setting path: secret value})."""
    # Only what was set travels: model presets fill the unset model fields on the Ray side too.
    data = settings.model_dump(mode="json", exclude_unset=True)
    found: dict[str, str] = {}

    def walk(node: Any, name: str, path: list[Any]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, str(k), [*path, k]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, name, [*path, i]) for i, v in enumerate(node)]
        shown = mask_value(name, node)
        if isinstance(node, str) and shown != node:
            found[_key(path)] = node
        return shown

    return walk(data, "", []), found


def split_env_secrets(runtime_env: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(runtime_env without its secret variables, {'["env",NAME]': value}): the Jobs API shows a job's
    runtime_env to anyone who can reach the dashboard."""
    env_vars = dict(runtime_env.get("env_vars") or {})
    from safeguard_flow.raylib.shipping.settings_env import SETTINGS_DOC_ENV

    secret = {k: str(v) for k, v in env_vars.items() if k != SETTINGS_DOC_ENV and mask_value(k, str(v)) != str(v)}
    if not secret:
        return runtime_env, {}
    kept = {**runtime_env, "env_vars": {k: v for k, v in env_vars.items() if k not in secret}}
    return kept, {_key([ENV_KEY, k]): v for k, v in secret.items()}


def apply_secrets(data: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """Put secret values back into a settings dict (by path); runtime_env secrets are left to apply_env."""
    for key, value in values.items():
        *parents, leaf = _path(key)
        if parents[:1] == [ENV_KEY]:
            continue
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return data


def env_secrets(values: dict[str, str]) -> dict[str, str]:
    """The job's runtime_env variables among its secrets."""
    out = {}
    for key, value in values.items():
        path = _path(key)
        if len(path) == 2 and path[0] == ENV_KEY:
            out[str(path[1])] = value
    return out


def apply_env(settings: Settings, values: dict[str, str]) -> Settings:
    """Inside the job: its secret variables into this process's environment and into
    settings.ray.runtime_env (which replicas receive as arguments and `export_env`)."""
    env = env_secrets(values)
    if not env:
        return settings
    os.environ.update(env)
    runtime_env = dict(settings.ray.runtime_env)
    runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **env}
    settings.ray.runtime_env = runtime_env
    return settings


def export_env(settings: Settings) -> None:
    """In a replica: the secret variables of settings.ray.runtime_env (kept out of the job's
    runtime_env) into this process's environment, where the engine's libraries look (HF_TOKEN)."""
    for name, value in (settings.ray.runtime_env.get("env_vars") or {}).items():
        if mask_value(str(name), str(value)) != str(value):
            os.environ.setdefault(str(name), str(value))


def new_secret_uri() -> str:
    return f"gcs://{_PREFIX}{_random.token_hex(16)}.zip"


def encode(values: dict[str, str]) -> bytes:
    return json.dumps({"kind": _HEADER, "secrets": values}).encode()


def upload(client: Any, values: dict[str, str], *, pin_s: float = JOB_START_TIMEOUT_S) -> str:
    """Store `values` in the cluster's GCS through the dashboard (`client`: a JobSubmissionClient).

    Returns the one-off URI the job reads them from. The upload is then pinned (`pin`) so that an
    unread secret is deleted by the cluster itself, but not before Ray gives up starting the job.
    """
    uri = new_secret_uri()
    name = uri.removeprefix("gcs://")
    resp = client._do_request("PUT", f"/api/packages/gcs/{name}", data=encode(values))
    if resp.status_code != 200:
        raise SettingsError(f"could not hand the job its warehouse credentials through the Ray dashboard "
                            f"(HTTP {resp.status_code}); check the Ray connection's auth token")
    pin(client, uri)
    if pin_s > PIN_S:
        _keep_pinned(client, uri, pin_s)
    return uri


# RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S on the cluster (Ray's default; the local head sets more).
PIN_S = 600.0


def pin(client: Any, uri: str) -> None:
    """Add one temporary reference (the dashboard's package GET); raises unless the cluster took it and
    the secret is there."""
    name = uri.removeprefix("gcs://")
    resp = client._do_request("GET", f"/api/packages/gcs/{name}")
    if resp.status_code != 200:
        raise SettingsError(f"the Ray dashboard did not pin the job's credentials {uri} (HTTP {resp.status_code}: "
                            f"{resp.text[:200]}); without a pin the cluster keeps them forever or loses them")


def _keep_pinned(client: Any, uri: str, pin_s: float) -> None:
    """Pin again before the previous reference expires until `pin_s` has passed, from a daemon thread
    that stops as soon as the job has read (deleted) the secret."""
    import threading
    import time

    def run() -> None:
        deadline = time.monotonic() + pin_s
        while time.monotonic() + PIN_S < deadline + 60:
            time.sleep(PIN_S / 2)
            try:
                pin(client, uri)
            except SettingsError:
                return  # read and deleted by the job (404), or the dashboard is gone
            except Exception:  # noqa: BLE001 - a network blip: the next round tries again
                continue

    threading.Thread(target=run, name="sg-secret-pin", daemon=True).start()


def fetch(uri: str, *, delete: bool = True) -> dict[str, str]:
    """Inside the job (after ray.init): read the secrets stored under `uri`, then delete them."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

    if not uri.startswith(f"gcs://{_PREFIX}"):
        raise SettingsError(f"--secrets: {uri!r} is not a safeguard-flow secret name")
    raw = _internal_kv_get(uri)
    if raw is None:
        raise SettingsError(
            f"the job's credentials ({uri}) are gone: they expire unread after the cluster's "
            "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S (600 s by default; pinned again while the "
            "submitter runs) or were read by an earlier try; submit the job again")
    if delete:
        _internal_kv_del(uri)
    doc = json.loads(raw)
    if doc.get("kind") != _HEADER:
        raise SettingsError(f"{uri}: not a safeguard-flow secret")
    return {str(k): str(v) for k, v in doc["secrets"].items()}
