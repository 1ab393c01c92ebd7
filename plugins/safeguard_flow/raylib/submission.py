"""What a label job submission consists of: the entrypoint and its runtime_env (no Airflow here)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from safeguard_flow.raylib.local_head import auth_env
from safeguard_flow.raylib.settings_env import settings_to_env, worker_env
from safeguard_flow.settings import Settings, SettingsError

LABEL_JOB_SCRIPT = "ray_jobs/label_job.py"
# Kept out of the uploaded working_dir: the venv, VCS data, local state and caches.
WORKING_DIR_EXCLUDES = [
    ".venv/", ".git/", ".safeguard/", ".pytest_cache/", "__pycache__/", "*.pyc", "*.egg-info/",
    "artifacts/", "build/", "data/", "tests/", "bench/", "*.db", "*.db-wal", "*.db-shm",
]
RUN_ID_METADATA = "safeguard_run_id"


def repo_root(start: str | Path | None = None) -> Path:
    """The folder holding ray_jobs/label_job.py: `start`, the working directory, or the source checkout."""
    # This file is <repo>/plugins/safeguard_flow/raylib/submission.py in a source checkout.
    candidates = [Path(start)] if start else [Path.cwd(), Path(__file__).resolve().parents[3]]
    for folder in candidates:
        if (folder / LABEL_JOB_SCRIPT).is_file():
            return folder.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise SettingsError(f"working_dir: no {LABEL_JOB_SCRIPT} under {where}; pass working_dir= the project folder")


def label_job_entrypoint(run_id: str, replicas: int | None = None) -> str:
    cmd = ["python", LABEL_JOB_SCRIPT, "--run-id", run_id]
    if replicas is not None:
        cmd += ["--replicas", str(replicas)]
    return shlex.join(cmd)


def merge_runtime_env(*envs: dict[str, Any] | None) -> dict[str, Any]:
    """Later envs win per key; env_vars merge per variable."""
    merged: dict[str, Any] = {}
    env_vars: dict[str, str] = {}
    for env in envs:
        if not env:
            continue
        for key, value in env.items():
            if key == "env_vars":
                env_vars.update({k: str(v) for k, v in (value or {}).items()})
            else:
                merged[key] = value
    if env_vars:
        merged["env_vars"] = env_vars
    return merged


def label_job_runtime_env(
    settings: Settings,
    *,
    working_dir: str | Path | None = None,
    local: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """runtime_env of a label job: the project as working_dir, the settings as SAFEGUARD_* variables.

    On the local head the submitter's vLLM/HF tuning variables travel too (same machine); on a real
    cluster the nodes' own environment applies. `settings.ray.runtime_env` and `extra` (from the
    connection and the operator) are merged on top.
    """
    base: dict[str, Any] = {
        "working_dir": str(repo_root(working_dir)),
        "excludes": list(WORKING_DIR_EXCLUDES),
        "env_vars": {**(worker_env() if local else {}), **auth_env(settings), **settings_to_env(settings)},
    }
    return merge_runtime_env(base, settings.ray.runtime_env, extra)
