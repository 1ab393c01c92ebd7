"""ruff (run by `make test` before pytest) passes, and its import rule keeps Airflow, Ray and vLLM out
of the core's module level: checked, not remembered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_the_code_passes_ruff():
    out = ruff(".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path,banned", [
    ("plugins/safeguard_flow/labelling.py", True),
    ("plugins/safeguard_flow/warehouse/publish.py", True),
    ("plugins/safeguard_flow/engines/openai_http.py", True),
    ("plugins/safeguard_flow/engines/vllm_local.py", False),
    ("plugins/safeguard_flow/airflow/tasks.py", False),
    ("plugins/safeguard_flow/raylib/runner.py", False),
    ("dags/safeguard_nightly.py", False),
    ("ray_jobs/label_job.py", False),
    ("tests/ray/test_x.py", False),
])
def test_core_modules_may_not_import_airflow_ray_or_vllm_at_module_level(path, banned):
    code = "import ray\nfrom airflow.sdk import BaseHook\nimport vllm.sampling_params\n\n\ndef f():\n    import vllm\n" \
           "    return ray, BaseHook, vllm\n"
    out = ruff("--stdin-filename", path, "--select", "TID253", "-", stdin=code)
    flagged = {line.split("`")[1] for line in out.stdout.splitlines() if "TID253" in line}
    assert flagged == ({"ray", "airflow", "vllm"} if banned else set()), out.stdout
    assert out.stdout.count("TID253") == (3 if banned else 0)  # the import inside f() is fine
