"""The Snowflake emulator venv: fakesnow + snowflake-sqlalchemy, beside (not in) the project venv.
(Not named dev/snowflake.py: the round-trip script runs from dev/, where that would shadow the `snowflake` package.)

The Snowflake driver cannot live in the project venv (dev/snowflake-requirements.txt says why), so,
as dev/superset.py does for Superset, it gets a venv of its own, built once under
~/.cache/safeguard-flow/snowflake-venv-<hash of the requirements> (SAFEGUARD_SNOWFLAKE_VENV overrides
the folder): the pinned requirements only. The code under test is the working tree's, put on
PYTHONPATH when the round trip runs, so every checkout (a fresh CI clone too) shares one venv.
Changing the requirements file builds a new venv.

    python dev/snowflake_venv.py venv                    # build the venv (if missing); prints the seconds it took
    python dev/snowflake_venv.py roundtrip [WORKDIR]     # the fakesnow round trip (dev/snowflake_roundtrip.py), JSON

Snowflake itself is never contacted: fakesnow patches snowflake.connector to run on a local DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "dev" / "snowflake-requirements.txt"
ROUNDTRIP = REPO / "dev" / "snowflake_roundtrip.py"
DATASET = Path("/work/shared/datasets/openai-moderation-2022/samples-1200.jsonl")  # used when present


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]


def venv_dir() -> Path:
    env = os.environ.get("SAFEGUARD_SNOWFLAKE_VENV")
    return Path(env) if env else Path.home() / ".cache" / "safeguard-flow" / f"snowflake-venv-{_requirements_hash()}"


def ensure_venv(log=print) -> tuple[Path, float]:
    """The Snowflake venv (built when missing or unfinished); returns (its folder, seconds spent building)."""
    venv = venv_dir()
    stamp = venv / ".sg-installed"
    want = _requirements_hash()
    if stamp.exists() and stamp.read_text() == want:
        return venv, 0.0
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)  # half-built (or from an older layout): start clean
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the Snowflake venv in {venv} from {REQUIREMENTS.name}; about a minute, once")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(want)
    return venv, round(time.monotonic() - started, 1)


def roundtrip(workdir: Path, venv: Path | None = None, timeout: float = 600) -> dict:
    """Run dev/snowflake_roundtrip.py in the venv; its JSON result (RuntimeError with its output on failure)."""
    venv = venv or ensure_venv()[0]
    args = [str(venv / "bin" / "python"), str(ROUNDTRIP), str(workdir)] + ([str(DATASET)] if DATASET.is_file() else [])
    # The warehouse settings come from the script alone, never from this shell's SAFEGUARD_* variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEGUARD_")}
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                         env={**env, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
                              "PYTHONPATH": str(REPO / "plugins")})
    if res.returncode != 0:
        raise RuntimeError(f"snowflake round trip failed (exit {res.returncode}):\n{(res.stdout + res.stderr)[-6000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "venv"
    if cmd == "venv":
        path, seconds = ensure_venv()
        print(f"{path} (built in {seconds}s)" if seconds else f"{path} (already built)")
    elif cmd == "roundtrip":
        work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="sg-snowflake-"))
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(roundtrip(work), indent=2, default=str, ensure_ascii=False))
    else:
        sys.exit(__doc__)
