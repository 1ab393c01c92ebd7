"""Shared fixtures: settings, SQLite and real PostgreSQL warehouses, the small local model, policies.

tests/ is a package (every folder has an __init__.py): helpers are imported by package
(``from tests.ray.label_helpers import make_run``), and a folder's heavy resources (a vLLM engine or
server, a Ray head) are ``package``-scoped fixtures, released when the run leaves the folder; the
exceptions are the small model's in-process engine (`vllm_engine`: engine and eval tests) and its
OpenAI-compatible server (`vllm_server`: engine and Airflow tests), shared for the whole session so
each starts once.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLICIES_DIR = ROOT / "policies"
TEST_POLICIES = ("spam", "self-harm")  # the two repo policies most tests publish

# Local defaults for every test process and the subprocesses it starts (Ray workers, vLLM servers).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Airflow reads its configuration once, at first import: give every test process one isolated
# AIRFLOW_HOME (SQLite metadata DB in a temporary folder) before any test imports airflow.
if "_SG_TEST_AIRFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="sg-airflow-tests-")
    os.environ.update({
        "_SG_TEST_AIRFLOW_HOME": _home,
        "AIRFLOW_HOME": _home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_home}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "GX_ANALYTICS_ENABLED": "false",
        # Airflow's generated default is 16 bytes, below what PyJWT wants for HS512.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
    })


# `make test` runs two pytest-xdist workers (`-n 2`) with the scheduler below. The tests that share the
# session's small-model engine and server, the Ray heads and the local Airflow stack (fixed ports) are
# one work unit: one worker runs them in collection order, so each starts once and no port meets a
# second copy. The other worker takes the tests that share none of them (LIGHT_TESTS: the warehouse
# dialect matrix, unit tests, gpt-oss-tiny's own engines and server, throwaway database and HTTP servers
# on free ports) while the first waits on Airflow's scheduler, Ray and server start-ups. (xdist's own
# `--dist loadgroup` marks do not reach pytest 9's node ids.)
LIGHT_TESTS = ("tests/warehouse/", "tests/unit/", "tests/pipeline/test_validate_memory.py",
               "tests/pipeline/test_validate_step.py", "tests/pipeline/test_worker_exit.py",
               "tests/engines/test_openai_retries.py", "tests/cascade/test_cascade.py", "tests/bi/test_grant_bi.py",
               # no other test loads gpt-oss-tiny
               "tests/engines/test_engine_death.py", "tests/engines/test_gpt_oss_tiny.py",
               "tests/engines/test_openai_server_harmony.py",
               "tests/review/test_queue.py", "tests/review/test_estimates.py", "tests/review/test_exchange_texts.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class HeavyTestsOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.startswith(LIGHT_TESTS) else "engines, servers and clusters"

    return HeavyTestsOnOneWorker(config, log)


@pytest.fixture
def settings_factory(tmp_path):
    """Build Settings with the given warehouse URL (default: a SQLite file in tmp_path) and overrides."""
    from safeguard_flow.settings import load_settings

    def make(db_url: str | None = None, **overrides):
        base = {
            "home": str(tmp_path / "home"),
            "policies_dir": str(POLICIES_DIR),
            "warehouse": {"url": db_url or f"sqlite:///{tmp_path / 'warehouse.db'}"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings(environ={}, **base)

    return make


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL 15 server per test session, from the installed binaries."""
    from dev.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url_factory(pg_server):
    """Make fresh, empty databases on the session's PostgreSQL server; all dropped after the test."""
    import sqlalchemy as sa

    made: list[str] = []

    def make() -> str:
        made.append(pg_server.create_database())
        return made[-1]

    yield make
    admin = sa.create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for url in made:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_url(pg_url_factory):
    """A fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    return pg_url_factory()


@pytest.fixture(scope="session")
def mariadb_server():
    """One real MariaDB server per test session, from Debian's mariadb-server (dev/mariadb.py)."""
    from dev.mariadb import MariaDBServer

    server = MariaDBServer().start()
    yield server
    server.stop()


@pytest.fixture
def mariadb_url_factory(mariadb_server):
    """Make fresh, empty databases on the session's MariaDB server (user `sg`, pymysql); all dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(mariadb_server.create_database())
        return made[-1]

    yield make
    for url in made:
        mariadb_server.drop_database(url)


@pytest.fixture
def mariadb_url(mariadb_url_factory):
    """A fresh, empty database on the session's MariaDB server, dropped after the test."""
    return mariadb_url_factory()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_url")


# A heavy path (a label worker, a Ray job, a DAG run: tens of seconds each) runs once, on the one
# warehouse its test names; its SQL is the warehouse modules', which tests/warehouse runs on every
# dialect in milliseconds. `@ON_POSTGRES` / `@ON_SQLITE` on a test that takes `wh_settings`.
ON_POSTGRES = pytest.mark.parametrize(
    "warehouse_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
ON_SQLITE = pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)


EVERY_WAREHOUSE = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                   pytest.param("mariadb", marks=pytest.mark.mariadb), "duckdb"]


def warehouse_url_for(request, tmp_path: Path, dialect: str) -> str:
    """A fresh warehouse URL on `dialect`: real PostgreSQL/MariaDB servers (session fixtures), files for
    SQLite and DuckDB. Modules that must pass on every dialect override `warehouse_url` with it:

        @pytest.fixture(params=EVERY_WAREHOUSE)
        def warehouse_url(request, tmp_path):
            return warehouse_url_for(request, tmp_path, request.param)
    """
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    if dialect == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[dialect])


@pytest.fixture(scope="session")
def model_settings():
    """Settings pointing at the small local model (prepared once, cached across runs), with a 1 GiB KV
    cache (the suite's memory budget; SAFEGUARD_MODEL__KV_CACHE_GIB overrides it)."""
    from safeguard_flow.settings import load_settings

    model_env = {k: v for k, v in os.environ.items() if k.startswith("SAFEGUARD_MODEL__")}
    return load_settings(environ={"SAFEGUARD_MODEL__KV_CACHE_GIB": "1", **model_env})


@pytest.fixture(scope="session")
def prepared_model(model_settings) -> str:
    """Path of the prepared small local model (`safeguard-flow model prepare` does the work once)."""
    from safeguard_flow.models import local as local_model

    return str(local_model.prepare(model_settings))


@pytest.fixture(scope="session")
def engine_settings(model_settings, prepared_model):
    """The small model with a short context and a 1 GiB KV cache: enough for tests, quick to start."""
    model = model_settings.model.model_copy(update={"max_model_len": 2048, "kv_cache_gib": 1, "max_tokens": 64,
                                                    "max_num_seqs": 16})
    return model_settings.model_copy(update={"model": model})


@pytest.fixture(scope="session")
def vllm_engine(engine_settings):
    """One real in-process vLLM engine (the small local model on CPU) for the engine and eval tests."""
    from safeguard_flow.engines import build_engine

    engine = build_engine(engine_settings)
    yield engine
    engine.close()


class _Borrowed:
    """An engine lent to code that builds and closes its own (a CLI command): close() leaves it running."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def close(self):
        pass


@pytest.fixture
def lend_engine(monkeypatch):
    """lend_engine(engine): `safeguard_flow.engines.build_engine` hands out that engine in this test,
    so a command under test labels with an engine already started instead of starting vLLM again."""
    from safeguard_flow import engines

    def lend(engine):
        monkeypatch.setattr(engines, "build_engine", lambda settings: _Borrowed(engine))
    return lend


VLLM_PORT = int(os.environ.get("SAFEGUARD_TEST_VLLM_PORT", "18230"))


@pytest.fixture(scope="session")
def vllm_server(prepared_model, tmp_path_factory):
    """One real vLLM OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`, CPU, the
    small local model, 2048-token context) for the whole run: the engine tests' HTTP path and every
    DAG test (Ray replicas, job drivers and Airflow workers reach it over HTTP), so it starts once.
    Yields its /v1 base URL; stops its own process group (the API process and its engine core)."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from safeguard_flow.engines.vllm_args import cpu_thread_env
    from safeguard_flow.settings import load_settings

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", prepared_model,
           "--served-model-name", "qwen2.5-0.5b-instruct", "--host", "127.0.0.1", "--port", str(VLLM_PORT),
           "--max-model-len", "2048", "--enforce-eager", "--enable-prefix-caching", "--seed", "0",
           "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **cpu_thread_env(load_settings(environ={}))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{VLLM_PORT}"
    deadline = time.monotonic() + 420
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not healthy after 420s: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def small_policies():
    """Two example policies (spam: binary-ish JSON, self-harm), loaded from the repo's policies/."""
    from safeguard_flow.domain.policies import load_policy_set

    wanted = {"spam", "self-harm"}
    policies = [p for p in load_policy_set(POLICIES_DIR) if p.name in wanted]
    assert {p.name for p in policies} == wanted
    return [p.with_version(1) for p in policies]


# --- a migrated warehouse with the demo source, and a Ray head for label jobs (pipeline and Airflow tests)


@pytest.fixture
def policies_dir(tmp_path) -> Path:
    """A private copy of two repo policies (tests edit them)."""
    from safeguard_flow.warehouse.sample_data import copy_policies

    return copy_policies(tmp_path / "policies", TEST_POLICIES)


def _warehouse_settings(url: str, tmp_path: Path, policies_dir: Path):
    from safeguard_flow.warehouse.sample_data import demo_settings
    from safeguard_flow.warehouse import db, schema

    settings = demo_settings(tmp_path, policies_dir, url)
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    engine.dispose()
    return settings


@pytest.fixture
def wh_settings(warehouse_url, tmp_path, policies_dir):
    """Settings for a migrated warehouse (SQLite or PostgreSQL) with the demo `posts` source."""
    return _warehouse_settings(warehouse_url, tmp_path, policies_dir)


@pytest.fixture
def sqlite_wh_settings(sqlite_url, tmp_path, policies_dir):
    return _warehouse_settings(sqlite_url, tmp_path, policies_dir)


@pytest.fixture
def wh_engine(wh_settings):
    from safeguard_flow.warehouse import db

    engine = db.make_engine(wh_settings)
    yield engine
    engine.dispose()


def job_ray_head(tmp_path_factory, port: int, dashboard_port: int):
    """Start a real local Ray head, yield it, stop it: the body of a folder's package-scoped head fixture."""
    from safeguard_flow.raylib.cluster import local_head
    from safeguard_flow.settings import load_settings

    settings = load_settings(environ={}, home=str(tmp_path_factory.mktemp("ray-home")), ray={
        "local_port": port, "local_dashboard_port": dashboard_port, "local_num_cpus": 2})
    head = local_head.start_head(settings)
    yield head
    local_head.stop_head(head)


