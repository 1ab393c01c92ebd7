"""Apache Superset in its own virtual environment, for the BI test and for trying the views by hand.

Superset is not a dependency of safeguard-flow (it pins its own Flask, SQLAlchemy 1.4, pandas...): it
lives in a venv of its own, built once under ~/.cache/safeguard-flow/superset-venv-<version>
(SAFEGUARD_SUPERSET_VENV overrides the folder) so CI and laptops reuse it between runs; a version
bump builds a new one. `SupersetServer` starts it on 127.0.0.1 with its metadata in SQLite in a
temporary folder, a random SECRET_KEY and an admin user, served by gunicorn (one worker).

    python dev/superset.py venv            # build the venv (if missing) and print how long it took
    python dev/superset.py serve [PORT]    # a throwaway Superset on PORT (default 8088) until Ctrl-C

`SupersetClient` speaks its REST API the way a script would: login -> access token -> CSRF token,
then databases, datasets and /api/v1/chart/data.
"""

from __future__ import annotations

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

# 6.0.0 installs and runs on Python 3.11 (Superset 6 supports 3.10-3.12); psycopg2 is the driver its
# PostgreSQL engine spec expects; its CLI imports `rich` without declaring it (6.0.0).
SUPERSET_VERSION = "6.0.0"
REQUIREMENTS = [f"apache-superset=={SUPERSET_VERSION}", "psycopg2-binary>=2.9,<3", "rich>=13"]
ADMIN_USER = "admin"


def venv_dir() -> Path:
    env = os.environ.get("SAFEGUARD_SUPERSET_VENV")
    return Path(env) if env else Path.home() / ".cache" / "safeguard-flow" / f"superset-venv-{SUPERSET_VERSION}"


def ensure_venv(log=print) -> tuple[Path, float]:
    """The Superset venv (built when missing or unfinished); returns (its folder, seconds spent building)."""
    venv = venv_dir()
    stamp = venv / ".sg-installed"
    if stamp.exists() and stamp.read_text() == " ".join(REQUIREMENTS):
        return venv, 0.0
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)  # a half-built or other-version venv: start clean
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the Superset venv in {venv} ({', '.join(REQUIREMENTS)}); a few minutes, once")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", *REQUIREMENTS], check=True)
    stamp.write_text(" ".join(REQUIREMENTS))
    return venv, round(time.monotonic() - started, 1)


_CONFIG = """\
SECRET_KEY = {secret!r}
SQLALCHEMY_DATABASE_URI = "sqlite:///{home}/superset.db"
# A throwaway local server: no example data, no telemetry, no rate limits on the test's logins.
SQLALCHEMY_EXAMPLES_URI = SQLALCHEMY_DATABASE_URI
RATELIMIT_ENABLED = False
AUTH_RATE_LIMITED = False
TALISMAN_ENABLED = False
FEATURE_FLAGS = {{}}
CACHE_CONFIG = {{"CACHE_TYPE": "NullCache"}}
DATA_CACHE_CONFIG = CACHE_CONFIG
"""


class SupersetServer:
    """A local Superset: SQLite metadata and config in a temporary folder, gunicorn on 127.0.0.1:port."""

    def __init__(self, port: int, venv: Path | None = None) -> None:
        self.port = port
        self.venv = venv or ensure_venv()[0]
        self.home = Path(tempfile.mkdtemp(prefix="sg-superset-"))
        self.password = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}
        (self.home / "superset_config.py").write_text(_CONFIG.format(secret=secrets.token_urlsafe(48), home=self.home))
        self.env = {**os.environ, "SUPERSET_CONFIG_PATH": str(self.home / "superset_config.py"),
                    "SUPERSET_HOME": str(self.home), "FLASK_APP": "superset", "PYTHONUNBUFFERED": "1"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _superset(self, *args: str) -> None:
        res = subprocess.run([str(self.venv / "bin" / "superset"), *args], env=self.env, cwd=self.home,
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"superset {' '.join(args[:2])} failed: {(res.stdout + res.stderr)[-3000:]}")

    def start(self, timeout: float = 180) -> SupersetServer:
        t0 = time.monotonic()
        # `db upgrade` + `init` (roles and permissions) take about a minute and give the same SQLite
        # file every time: the first start keeps a copy beside the venv, later starts copy it back.
        template = self.venv / ".sg-metadata-template.db"
        if template.exists():
            shutil.copyfile(template, self.home / "superset.db")
        else:
            self._superset("db", "upgrade")
            self._superset("init")
            shutil.copyfile(self.home / "superset.db", self.home / "template.db")
            os.replace(self.home / "template.db", template)  # whole or absent, never half-written
        self._superset("fab", "create-admin", "--username", ADMIN_USER, "--firstname", "Safeguard",
                       "--lastname", "Tests", "--email", "admin@example.invalid", "--password", self.password)
        self.timings["metadata_s"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        log = open(self.home / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "gunicorn"), "--workers", "1", "--threads", "4", "--timeout", "120",
             "--bind", f"127.0.0.1:{self.port}", "superset.app:create_app()"],
            env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Superset exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Superset not healthy after {timeout}s: {self.log_tail()}")
            time.sleep(0.5)
        self.timings["server_s"] = round(time.monotonic() - t1, 1)
        return self

    def log_tail(self, n: int = 3000) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)

    def client(self) -> SupersetClient:
        return SupersetClient(self.url, ADMIN_USER, self.password)


class SupersetError(RuntimeError):
    pass


class SupersetClient:
    """Superset's REST API with a bearer token and its CSRF token (and the session cookie it binds to)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        import http.cookiejar

        self.url = url
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        token = self._call("POST", "/api/v1/security/login",
                           {"username": username, "password": password, "provider": "db", "refresh": False})
        self._headers = {"Authorization": f"Bearer {token['access_token']}"}
        self._headers["X-CSRFToken"] = self._call("GET", "/api/v1/security/csrf_token/")["result"]
        self._headers["Referer"] = url

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **getattr(self, "_headers", {})})
        try:
            with self._opener.open(req, timeout=120) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise SupersetError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from None

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, body)

    def add_database(self, name: str, sqlalchemy_uri: str) -> int:
        return self.post("/api/v1/database/", {"database_name": name, "sqlalchemy_uri": sqlalchemy_uri,
                                                "expose_in_sqllab": True})["id"]

    def add_dataset(self, database_id: int, table: str, schema: str | None = None) -> int:
        return self.post("/api/v1/dataset/", {"database": database_id, "schema": schema, "table_name": table})["id"]

    def chart_data(self, dataset_id: int, query: dict) -> list[dict]:
        """Rows of one query through /api/v1/chart/data (what a chart asks for), as JSON records."""
        body = {"datasource": {"id": dataset_id, "type": "table"}, "force": True,
                "queries": [query], "result_format": "json", "result_type": "full"}
        result = self.post("/api/v1/chart/data", body)["result"]
        return result[0]["data"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("venv", "serve"):
        print(__doc__)
        return 2
    venv, seconds = ensure_venv()
    print(f"Superset venv: {venv} (built in {seconds} s)" if seconds else f"Superset venv: {venv} (ready)")
    if argv[0] == "serve":
        server = SupersetServer(int(argv[1]) if len(argv) > 1 else 8088, venv).start()
        print(f"Superset at {server.url}  user {ADMIN_USER}  password {server.password}  ({server.timings})")
        try:
            while server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
