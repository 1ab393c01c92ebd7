"""A throwaway local Airflow (API server, scheduler, DAG processor, triggerer) for tests and demos.

Everything lives in one folder (``AIRFLOW_HOME``): SQLite metadata DB, logs, config via environment.
Auth is the simple auth manager with every user an admin; the API server listens on 127.0.0.1 only.
Each component runs in its own process group so :meth:`stop` ends exactly what was started here.

    with LocalAirflow(home, port=18210, dags_folder="dags", env=safeguard_env) as af:
        af.wait_for_dags(["safeguard_nightly"])
        af.cli("backfill", "create", "--dag-id", "safeguard_nightly", "--from-date", ..., "--to-date", ...)
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

_REPO_ROOT = Path(__file__).resolve().parents[1]

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Four processes and the task workers share one SQLite file: wait for the write lock instead of
# failing after SQLite's default 5 s (a busy laptop or CI box easily holds it longer).
SQLITE_CONNECT_ARGS = {"timeout": 60}
_TERMINAL = {"success", "failed"}
_MIGRATED: Path | None = None  # a freshly migrated metadata DB (init_db), for this process's later stacks


class LocalAirflowError(RuntimeError):
    """A component did not start or a wait timed out; the message names the log to read."""


class LocalAirflow:
    def __init__(
        self,
        home: str | Path,
        port: int,
        dags_folder: str | Path,
        env: Mapping[str, str] | None = None,
        components: Sequence[str] = COMPONENTS,
        parallelism: int = 2,
    ):
        self.home = Path(home).resolve()
        self.port = port
        self.dags_folder = Path(dags_folder).resolve()
        self.components = tuple(components)
        self.base_url = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._token: str | None = None
        self.env = self._environment(env or {}, parallelism)

    def _environment(self, extra: Mapping[str, str], parallelism: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        secret = secrets.token_urlsafe(64)
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.SQLITE_CONNECT_ARGS",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # One random secret per stack, shared by its components (tokens of one stack are
            # worthless to another); 64 bytes because PyJWT wants that much for HS512.
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__API__SECRET_KEY": secret,
            # Short loops: the stack is for tests and demos, not for load.
            "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "16",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Unchanged DAG files are not parsed again for 10 minutes: each parse is a process importing
            # the plugin, which every 5 s took CPU from the tasks under test on two cores. An edited file
            # is still parsed within REFRESH_INTERVAL (the default sort mode parses what changed first).
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        })
        env.update(extra)
        # The components import this module (SQLITE_CONNECT_ARGS above) as dev.local_stack: the
        # repository root goes on their path, ahead of whatever PYTHONPATH already holds.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    # --- lifecycle ---------------------------------------------------------------------------------

    def init_db(self, template: str | Path | None = None) -> None:
        """Create the metadata DB (copy a migrated template when given: migrating takes ~15 s).

        A stack migrated earlier in this process left a pristine copy: later stacks start from it and
        skip `db migrate` (same Airflow, same migrations; a test session starts five stacks)."""
        global _MIGRATED
        self.home.mkdir(parents=True, exist_ok=True)
        db = self.home / "airflow.db"
        if template is None and _MIGRATED is not None and _MIGRATED.is_file():
            shutil.copyfile(_MIGRATED, db)
            return
        if template and Path(template).is_file():
            shutil.copyfile(template, db)
        self.cli("db", "migrate", timeout=300)
        import sqlite3

        with sqlite3.connect(db) as conn:  # WAL (kept in the file): readers stop blocking the writer
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file: copyable
        if _MIGRATED is None:
            keep = Path(tempfile.mkdtemp(prefix="airflow-migrated-"))
            atexit.register(shutil.rmtree, keep, ignore_errors=True)
            _MIGRATED = keep / "airflow.db"
            shutil.copyfile(db, _MIGRATED)

    def start(self, timeout_s: float = 180.0) -> LocalAirflow:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        for name in self.components:
            log = open(self.home / "logs" / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name], env=self.env, cwd=self.home, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.wait_healthy(timeout_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()

    def __enter__(self) -> LocalAirflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise LocalAirflowError(f"airflow {name} exited with {proc.returncode}; see {self.log_path(name)}\n{self.log_tail(name)}")

    def log_path(self, component: str) -> Path:
        return self.home / "logs" / f"{component}.log"

    def log_tail(self, component: str, lines: int = 30) -> str:
        path = self.log_path(component)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait_healthy(self, timeout_s: float) -> None:
        wanted = {"api-server": "metadatabase", "scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
        need = {wanted[c] for c in self.components if c in wanted}
        last: Any = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = self._request("GET", "/api/v2/monitor/health", auth=False)
                if all((last.get(k) or {}).get("status") == "healthy" for k in need):
                    return
            except (OSError, urllib.error.URLError, LocalAirflowError):
                pass
            time.sleep(1)
        raise LocalAirflowError(f"Airflow at {self.base_url} not healthy after {timeout_s:.0f}s (last: {last}); logs in {self.home / 'logs'}")

    # --- CLI and REST ------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise LocalAirflowError(f"`airflow {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def token(self) -> str:
        if self._token is None:
            self._token = self._request("GET", "/auth/token", auth=False)["access_token"]
        return self._token

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, path if path.startswith("/") else f"/api/v2/{path}", body=body)

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise LocalAirflowError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        return json.loads(raw) if raw else None

    # --- DAGs and runs -----------------------------------------------------------------------------

    def wait_for_dags(self, dag_ids: Iterable[str], timeout_s: float = 120.0) -> None:
        pending = set(dag_ids)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            self._check_alive()
            for dag_id in list(pending):
                try:
                    self.api("GET", f"dags/{dag_id}")
                    pending.discard(dag_id)
                except LocalAirflowError:
                    pass
            time.sleep(1)
        if pending:
            errors = self.api("GET", "importErrors").get("import_errors", [])
            raise LocalAirflowError(f"DAGs {sorted(pending)} not parsed after {timeout_s:.0f}s; import errors: {errors}")

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, attempts: int = 4) -> None:
        """`airflow backfill create`, retried when SQLite refuses a write that raced the scheduler's
        (Airflow removes a half-created backfill itself, so trying again is safe)."""
        for attempt in range(1, attempts + 1):
            proc = self.cli("backfill", "create", "--dag-id", dag_id, "--from-date", from_date, "--to-date", to_date,
                            check=False)
            if proc.returncode == 0:
                return
            output = proc.stdout + proc.stderr
            existing = self.api("GET", f"backfills?dag_id={dag_id}").get("backfills", [])
            if "database is locked" not in output or existing or attempt == attempts:
                raise LocalAirflowError(f"`airflow backfill create` failed ({proc.returncode}), backfills now {existing}:\n{output[-3000:]}")
            time.sleep(2 * attempt)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> str:
        body: dict[str, Any] = {"conf": conf or {}, "logical_date": logical_date}
        return self.api("POST", f"dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"dags/{dag_id}/dagRuns?limit=100&order_by=run_after")["dag_runs"]

    def wait_for_runs(self, dag_id: str, count: int, run_type: str | None = None, timeout_s: float = 300.0,
                      poll_s: float = 2.0) -> list[dict[str, Any]]:
        """Wait until `count` runs (of `run_type`) have finished; returns them (raises on timeout)."""
        deadline = time.monotonic() + timeout_s
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self._check_alive()
            runs = [r for r in self.dag_runs(dag_id) if run_type is None or r["run_type"] == run_type]
            if len(runs) >= count and all(r["state"] in _TERMINAL for r in runs):
                return runs
            time.sleep(poll_s)
        raise LocalAirflowError(f"{dag_id}: waited {timeout_s:.0f}s for {count} finished {run_type or ''} run(s); have "
                                f"{[(r['dag_run_id'], r['state']) for r in runs]}; logs in {self.home / 'logs'}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        return self.api("GET", f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")["task_instances"]
