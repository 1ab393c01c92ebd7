"""The test suite's own layout: tests/ is a package whose folders do not shadow the real `airflow` and
`ray`, and each folder's heavy fixtures (vLLM engine / server, Ray head) end when the run leaves it
(the suite's peak memory depends on it: three live vLLM workers once reached 20 GB)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_test_folders_do_not_shadow_the_real_packages():
    for name in ("airflow", "ray"):
        origin = Path(importlib.util.find_spec(name).origin).resolve()
        assert ROOT / "tests" not in origin.parents, f"`import {name}` resolves to the test folder {origin}"
        assert "site-packages" in origin.parts
        ours = importlib.util.find_spec(f"tests.{name}")
        assert Path(ours.origin).resolve() == ROOT / "tests" / name / "__init__.py"
    from tests.ray.label_helpers import make_run  # helpers import by package name

    assert callable(make_run)


def test_each_folders_heavy_fixtures_end_when_the_run_leaves_it():
    """pytest's own setup plan (nothing runs): every package-scoped fixture is torn down before the
    first test of another folder; the one session-wide server is set up once."""
    files = ["tests/engines", "tests/airflow", "tests/pipeline", "tests/ray", "tests/unit/test_verdicts.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "--setup-plan", "-q", "-p", "no:cacheprovider", *files],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    live: dict[str, str] = {}  # package fixture -> the folder it was set up for
    folder = None
    seen = set()
    for line in out.stdout.splitlines():
        if m := re.match(r"\s*SETUP\s+P (\w+)", line):
            live[m.group(1)] = None
        elif m := re.match(r"\s*TEARDOWN\s+P (\w+)", line):
            seen.add(m.group(1))
            live.pop(m.group(1))
        elif m := re.match(r"\s*(tests/\w+)/\S+::", line):
            folder = m.group(1)
            for name, owner in live.items():
                live[name] = owner or folder
                assert live[name] == folder, f"{name} (set up for {live[name]}) is still alive in {folder}"
    assert {"af_ray_head", "jobs_ray_head", "ray_head", "ray_driver"} <= seen
    assert not live
    # The small model's engine and OpenAI server are the session's: each started once.
    for name in ("vllm_engine", "vllm_server"):
        assert len(re.findall(rf"^\s*SETUP\s+S {name}\b", out.stdout, re.M)) == 1, name
