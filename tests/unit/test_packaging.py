"""The wheel, as a cluster image or an Airflow worker installs it: every module and the sql/ folder, and
no scaffolding (dev/, tests/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build_wheel(out: Path) -> Path:
    # From a clean copy: setuptools reuses a checkout's build/ folder, which can hide a broken config.
    src = out / "src"
    for folder in ("plugins", "sql"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("safeguard_flow-*.whl")
    return wheel


def test_wheel_ships_every_module_and_the_sql_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())

    package = ROOT / "plugins" / "safeguard_flow"
    modules = {f"safeguard_flow/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert not modules - names, f"modules missing from the wheel (add the package to pyproject): {modules - names}"
    # Product only: the dev harness and test helpers stay in the repository.
    scaffolding = sorted(n for n in names if n.split("/")[0] in {"dev", "tests"} or "/testing/" in n
                         or n.endswith(("local_stack.py", "conftest.py")))
    assert not scaffolding, f"scaffolding shipped in the wheel: {scaffolding}"
    sql = {f"safeguard_flow/sql/{p.relative_to(ROOT / 'sql').as_posix()}" for p in (ROOT / "sql").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts}
    assert not sql - names, f"sql files missing from the wheel: {sql - names}"
    templates = {f"safeguard_flow/templates/{p.name}" for p in (package / "templates").glob("*.html")}
    assert templates and not templates - names, f"templates missing from the wheel: {templates - names}"

    # Installed from the wheel (no checkout around it), the schema code finds the packaged sql/.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "SAFEGUARD_SQL_DIR"} | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                          "from safeguard_flow.warehouse.schema import sql_dir; print(sql_dir())", str(site)],
                         check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert Path(out.stdout.strip()) == site / "safeguard_flow" / "sql"
