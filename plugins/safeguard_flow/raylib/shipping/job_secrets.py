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
  deletes it as soon as it has read it.
Replicas get their settings as Ray task arguments from the driver (object store, not logged).
"""

from __future__ import annotations

import json
import secrets as _random
from typing import Any

from safeguard_flow.redact import mask_value
from safeguard_flow.settings import Settings, SettingsError

# The first bytes of an upload may be echoed in a Ray error message: keep them harmless.
_HEADER = "safeguard-flow job secrets"
_PREFIX = "_sg_secret_"
# The settings that can hold a secret; redact.mask_value decides whether they do (a URL's password or
# credential query parameter, an api_key other than EMPTY) and what the public document shows instead.
_SECRET_FIELDS = (("warehouse", "url"), ("engine", "api_key"))


def split_secrets(settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings as a JSON-able dict with secrets masked, {dotted field: secret value})."""
    # Only what was set travels: model presets fill the unset model fields on the Ray side too.
    data = settings.model_dump(mode="json", exclude_unset=True)
    found: dict[str, str] = {}
    for section, field in _SECRET_FIELDS:
        value = data.get(section, {}).get(field)
        shown = mask_value(field, value)
        if value is not None and shown != value:
            found[f"{section}.{field}"] = value
            data[section][field] = shown
    return data, found


def apply_secrets(data: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """Put secret values back into a settings dict (by dotted field)."""
    for dotted, value in values.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return data


def new_secret_uri() -> str:
    return f"gcs://{_PREFIX}{_random.token_hex(16)}.zip"


def encode(values: dict[str, str]) -> bytes:
    return json.dumps({"kind": _HEADER, "secrets": values}).encode()


def upload(client: Any, values: dict[str, str]) -> str:
    """Store `values` in the cluster's GCS through the dashboard (`client`: a JobSubmissionClient).

    Returns the one-off URI the job reads them from. The upload is then pinned for Ray's temporary
    reference time, so an unread secret is deleted by the cluster itself.
    """
    uri = new_secret_uri()
    name = uri.removeprefix("gcs://")
    resp = client._do_request("PUT", f"/api/packages/gcs/{name}", data=encode(values))
    if resp.status_code != 200:
        raise SettingsError(f"could not hand the job its warehouse credentials through the Ray dashboard "
                            f"(HTTP {resp.status_code}); check the Ray connection's auth token")
    client._do_request("GET", f"/api/packages/gcs/{name}")  # adds the temporary (expiring) reference
    return uri


def fetch(uri: str, *, delete: bool = True) -> dict[str, str]:
    """Inside the job (after ray.init): read the secrets stored under `uri`, then delete them."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

    if not uri.startswith(f"gcs://{_PREFIX}"):
        raise SettingsError(f"--secrets: {uri!r} is not a safeguard-flow secret name")
    raw = _internal_kv_get(uri)
    if raw is None:
        raise SettingsError(
            f"the job's warehouse credentials ({uri}) are gone: they expire unread after "
            "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S (600 s) or were read by an earlier "
            "try; submit the job again")
    if delete:
        _internal_kv_del(uri)
    doc = json.loads(raw)
    if doc.get("kind") != _HEADER:
        raise SettingsError(f"{uri}: not a safeguard-flow secret")
    return {str(k): str(v) for k, v in doc["secrets"].items()}
