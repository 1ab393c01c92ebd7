"""What a label job submission consists of: the entrypoint and its runtime_env (no Airflow here).

The job runs `python -m safeguard_flow.raylib.batch.job label ...` from the package itself, shipped as a
`py_modules` entry (the installed package folder, zipped by Ray and unpacked on every node), so a
cluster without safeguard-flow installed runs it. The submitter's working folder is never uploaded:
it may hold `airflow.cfg`, password files and logs that grow while Ray fingerprints them. Settings
travel as one JSON document without secrets (settings_env.SETTINGS_DOC_ENV); the secrets go through
job_secrets.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from safeguard_flow.raylib.shipping.settings_env import SETTINGS_DOC_ENV, settings_document, worker_env
from safeguard_flow.settings import Settings

JOB_MODULE = "safeguard_flow.raylib.batch.job"
# Kept out of the uploaded package: byte code and editor/test caches.
PACKAGE_EXCLUDES = ["__pycache__/", "*.pyc", ".pytest_cache/", "*.egg-info/"]
RUN_ID_METADATA = "safeguard_run_id"


def package_dir() -> Path:
    """The folder of the safeguard_flow package this process runs (what a job ships).

    safeguard_flow is a namespace package (no __init__.py), so its __path__ may list several
    folders; the one holding this module's code is the one we mean.
    """
    return Path(__file__).resolve().parents[2]


def label_job_entrypoint(run_id: str, replicas: int | None = None, secrets_uri: str | None = None) -> str:
    cmd = ["python", "-m", JOB_MODULE, "label", "--run-id", run_id]
    if replicas is not None:
        cmd += ["--replicas", str(replicas)]
    if secrets_uri:
        cmd += ["--secrets", secrets_uri]
    return shlex.join(cmd)


def merge_runtime_env(*envs: dict[str, Any] | None) -> dict[str, Any]:
    """Later envs win per key; env_vars merge per variable, py_modules are concatenated."""
    merged: dict[str, Any] = {}
    env_vars: dict[str, str] = {}
    py_modules: list[Any] = []
    for env in envs:
        if not env:
            continue
        for key, value in env.items():
            if key == "env_vars":
                env_vars.update({k: str(v) for k, v in (value or {}).items()})
            elif key == "py_modules":
                py_modules += [m for m in (value or []) if m not in py_modules]
            else:
                merged[key] = value
    if env_vars:
        merged["env_vars"] = env_vars
    if py_modules:
        merged["py_modules"] = py_modules
    return merged


def label_job_runtime_env(
    settings: Settings,
    *,
    local: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(runtime_env of a label job, the secrets to hand over with job_secrets.upload).

    The package as py_modules, the settings as one document. On the local head the submitter's
    vLLM/HF tuning variables travel too (same machine); on a real cluster the nodes' own environment
    applies. `settings.ray.runtime_env` and `extra` (from the connection and the operator) are merged
    on top; a `working_dir` there is the user's explicit choice. Secret-named variables (HF_TOKEN)
    leave the runtime_env for the secrets (the Jobs API shows a runtime_env to anyone).
    """
    doc, secrets = settings_document(settings)
    base: dict[str, Any] = {
        "py_modules": [str(package_dir())],
        "excludes": list(PACKAGE_EXCLUDES),
        "env_vars": {**(worker_env() if local else {}), SETTINGS_DOC_ENV: doc},
    }
    from safeguard_flow.raylib.shipping.job_secrets import split_env_secrets

    env, env_secrets = split_env_secrets(merge_runtime_env(base, settings.ray.runtime_env, extra))
    return env, {**secrets, **env_secrets}
