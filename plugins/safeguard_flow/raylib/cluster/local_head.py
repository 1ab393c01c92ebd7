"""The local Ray head: what the hook and the tests start when no cluster is configured.

`ray start --head --block` runs in its own session, so it outlives the Airflow task that started it
(the triggerer keeps polling the dashboard while the task is deferred), and stopping it is one
SIGTERM to the process we started: `--block` drains and stops every Ray process of that head. We
never use `ray stop`, which would kill every Ray process on the machine.

All ports are explicit (derived from `ray.local_port`) so several heads can share a machine.
A local head serves this machine only: every server of it (GCS, raylet, object manager, agents,
dashboard and its Jobs API, which runs anyone's code when auth is disabled) listens on loopback.
`ray start --node-ip-address 127.0.0.1` alone is not enough on Linux: Ray swaps a loopback address
for the machine's (`services.resolve_ip_for_localhost`), in the head and in every client that
connects to it. Ray's single-machine mode (what it does on macOS and Windows, switched by
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) keeps 127.0.0.1 for this node everywhere: the head runs with it,
the job drivers it starts inherit it, and a process connecting to a local head says so first
(`prepare_driver`). A head that other nodes must join (`loopback=False`, the two-node test) keeps
Ray's usual addresses. Starting is guarded by a file lock next to the state file: tasks that start
at once (a backfill) wait for the first one and reuse its head.

Who may use it: Ray's token auth is on unless ray.auth_mode (or, by default, RAY_AUTH_MODE) says
"disabled": each head gets its own random token, in a file only this user can read, which the head and
the jobs it starts read (RAY_AUTH_TOKEN_PATH) and our clients send (`LocalHead.auth_headers`). Its temp
dir (sockets, session logs, the token) is a fresh private folder (0700, ours, random name), never a
predictable name in a shared /tmp. It keeps the temporary references that pin uploads (a job's
one-off secrets) for longer than it waits for a job to start (RAY_JOB_START_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import json
import os
import shutil
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from safeguard_flow.settings import Settings

# Offsets from the GCS port for the other fixed ports of one head; workers get the range after them.
_PORT_OFFSETS = {
    "--ray-client-server-port": 1,
    "--dashboard-agent-listen-port": 2,
    "--dashboard-agent-grpc-port": 3,
    "--runtime-env-agent-port": 4,
    "--metrics-export-port": 5,
    "--node-manager-port": 6,
    "--object-manager-port": 7,
}
_WORKER_PORTS = (10, 59)  # min/max offsets: up to 50 worker processes


class LocalHeadError(RuntimeError):
    """The local Ray head could not be started; the message points at its log."""


@dataclass
class LocalHead:
    gcs_address: str  # for ray.init(address=...)
    dashboard_url: str  # for the Jobs API
    pid: int  # the `ray start --block` process; SIGTERM stops the whole head
    temp_dir: str
    log_file: str
    token_file: str = ""  # Ray's auth token of this head ("" with auth disabled)

    def is_alive(self) -> bool:
        return _pid_alive(self.pid) and dashboard_ready(self.dashboard_url, self.auth_headers())

    def auth_headers(self) -> dict[str, str]:
        """What a Jobs API / dashboard client of this head sends."""
        if not self.token_file:
            return {}
        try:
            return {"Authorization": f"Bearer {Path(self.token_file).read_text().strip()}"}
        except OSError:  # the head was stopped (its token removed)
            return {}


# Ray's switch for its single-machine mode: "0" makes this node 127.0.0.1 (ray_constants.ENABLE_RAY_CLUSTER).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_cluster_env(settings: Settings, *, loopback: bool = True) -> dict[str, str]:
    """Environment of a Ray cluster we start ourselves (this head, or an in-process `ray.init`).

    The one place RAY_AUTH_MODE is set: Ray 2.60 turns token auth on by default for a new local
    cluster, so say what the settings want. Never for a cluster we only connect to: there the
    cluster's own mode and token apply (a job's driver would lose the token otherwise). `loopback`:
    Ray's single-machine mode, every server on 127.0.0.1 (see the module docstring).
    """
    return {"RAY_AUTH_MODE": settings.ray.auth_mode, SINGLE_MACHINE_ENV: "0" if loopback else "1"}


def is_loopback_address(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in ("127.0.0.1", "localhost", "::1")


def prepare_driver(address: str | None) -> None:
    """Before `ray.init` in this process: connecting to a loopback (local) head, or starting a Ray
    inside this process (address None), needs Ray's single-machine mode here too, or Ray would look
    for the GCS on the machine's address; any other address needs Ray's usual mode. Ray reads the
    switch at import, so the constant is set as well as the variable (for processes started later)."""
    from ray._private import ray_constants

    single = address is None or is_loopback_address(address)
    os.environ[SINGLE_MACHINE_ENV] = "0" if single else "1"
    ray_constants.ENABLE_RAY_CLUSTER = not single


def _state_file(settings: Settings) -> Path:
    return settings.home_path / "ray" / f"head-{settings.ray.local_port}.json"


def _start_lock(settings: Settings, timeout_s: float):
    from filelock import FileLock

    path = _state_file(settings).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout_s)


def _private_temp_dir(port: int) -> str:
    """Ray's temp dir for a new head, inside a new folder only this user can enter, with a name nobody
    can guess in advance (mkdtemp): another local user can neither pre-create it nor reach the head's
    sockets, logs and token through it. Ray makes its own temp dir world-writable (0777), hence the
    private parent. Short: Ray puts unix sockets under it (sun_path is ~107 bytes)."""
    parent = tempfile.mkdtemp(prefix=f"sg-ray-{port}-")
    info = os.lstat(parent)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o700:
        raise LocalHeadError(f"{parent} is not a private folder of this user (mode {oct(info.st_mode)})")
    path = os.path.join(parent, "r")
    os.mkdir(path, 0o700)
    return path


def private_root(head: LocalHead) -> str:
    """The private (0700) folder holding the head's temp dir and token."""
    return os.path.dirname(head.temp_dir)


def _write_token(temp_dir: str) -> str:
    path = os.path.join(os.path.dirname(temp_dir), "auth_token")  # beside Ray's world-writable dir, not in it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


# Ray waits this long for a job to start (RAY_JOB_START_TIMEOUT_SECONDS, default 900 s); the head keeps
# temporary references (the pin of a job's one-off secrets) this much longer.
_PIN_MARGIN_S = 300


def dashboard_ready(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    try:
        req = urllib.request.Request(f"{url}/api/version", headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _answers(url: str) -> bool:
    """Anything listening there (a dashboard with token auth answers 401 without a token)."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def head_command(settings: Settings, temp_dir: str, resources: dict[str, float] | None = None) -> list[str]:
    ray = settings.ray
    port = ray.local_port
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--port", str(port),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(ray.local_dashboard_port),
        "--min-worker-port", str(port + _WORKER_PORTS[0]),
        "--max-worker-port", str(port + _WORKER_PORTS[1]),
        "--num-cpus", str(ray.local_num_cpus or os.cpu_count() or 1),
        "--object-store-memory", str(ray.local_object_store_mb * 1024 * 1024),
        "--temp-dir", temp_dir,
        "--disable-usage-stats",
    ]
    for flag, offset in _PORT_OFFSETS.items():
        cmd += [flag, str(port + offset)]
    if resources:  # custom resources, e.g. to place one label replica per node (ray.resources_per_replica)
        cmd += ["--resources", json.dumps(resources)]
    return cmd


def load_head(settings: Settings) -> LocalHead | None:
    """The head recorded for these settings, if it is still running."""
    path = _state_file(settings)
    try:
        head = LocalHead(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return head if head.is_alive() else None


def start_head(settings: Settings, timeout_s: float = 90.0, resources: dict[str, float] | None = None,
               loopback: bool = True) -> LocalHead:
    """Start a new local head (in its own session) and wait until its dashboard answers. loopback=False:
    a head other `ray start` nodes can join (Ray's usual addresses; the servers are reachable)."""
    ray = settings.ray
    dashboard_url = f"http://127.0.0.1:{ray.local_dashboard_port}"
    if _answers(dashboard_url):
        raise LocalHeadError(
            f"something already answers on {dashboard_url} but it is not a head we started; "
            "set ray.dashboard_url (SAFEGUARD_RAY__DASHBOARD_URL) to use it, or pick another "
            "ray.local_dashboard_port (SAFEGUARD_RAY__LOCAL_DASHBOARD_PORT)"
        )
    temp_dir = _private_temp_dir(ray.local_port)
    state = _state_file(settings)
    state.parent.mkdir(parents=True, exist_ok=True)
    log_file = str(state.with_suffix(".log"))
    env = {**os.environ, **local_cluster_env(settings, loopback=loopback)}
    env.pop("RAY_ADDRESS", None)  # a stale address would make `ray start` join another cluster
    token_file = ""
    env.pop("RAY_AUTH_TOKEN", None)  # this head's own token, never one meant for another cluster
    if env["RAY_AUTH_MODE"] == "token":
        token_file = _write_token(temp_dir)
        env["RAY_AUTH_TOKEN_PATH"] = token_file  # the head, and the job drivers and workers it starts
    start_timeout = float(env.get("RAY_JOB_START_TIMEOUT_SECONDS") or 900)
    env.setdefault("RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S", str(int(start_timeout + _PIN_MARGIN_S)))
    # Jobs run `python ...`: make that this interpreter (the venv with safeguard-flow), activated or not.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    # A local head serves no outside traffic: stop at once instead of draining for 30 s on SIGTERM.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(head_command(settings, temp_dir, resources), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    head = LocalHead(gcs_address=f"127.0.0.1:{ray.local_port}", dashboard_url=dashboard_url, pid=proc.pid,
                     temp_dir=temp_dir, log_file=log_file, token_file=token_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalHeadError(f"`ray start --head` exited with code {proc.returncode}; see {log_file}")
        if dashboard_ready(dashboard_url, head.auth_headers()) and _jobs_api_ready(dashboard_url, head.auth_headers()):
            state.write_text(json.dumps(asdict(head)))
            return head
        time.sleep(0.5)
    stop_head(head)
    raise LocalHeadError(f"the local Ray head did not come up within {timeout_s:.0f}s; see {log_file}")


def _jobs_api_ready(url: str, headers: dict[str, str] | None = None) -> bool:
    # The job module starts a little after the version endpoint answers.
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/", headers=headers or {}), timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def ensure_head(settings: Settings, timeout_s: float = 90.0) -> LocalHead:
    """The running local head for these settings, started if needed.

    Safe under concurrency: callers take a file lock, so a second caller waits while the first one
    starts the head and then reuses it (instead of racing it for the same ports).
    """
    head = load_head(settings)
    if head is not None:
        return head
    with _start_lock(settings, timeout_s * 2 + 30):
        return load_head(settings) or start_head(settings, timeout_s)


def stop_head(head: LocalHead, timeout_s: float = 40.0, remove_temp_dir: bool = False) -> None:
    """SIGTERM the `ray start --block` process (it drains and stops its head), SIGKILL its group if stuck.

    remove_temp_dir: also delete the head's session logs (tests and benchmarks; keep them otherwise).
    """
    try:
        os.kill(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    else:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(head.pid):
            time.sleep(0.2)
    try:
        os.killpg(head.pid, signal.SIGKILL)  # its own session: only processes of this head
    except (ProcessLookupError, PermissionError):
        pass
    if head.token_file:  # a stopped head's token opens nothing, but leave none behind
        Path(head.token_file).unlink(missing_ok=True)
    if remove_temp_dir:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
        if os.path.basename(os.path.dirname(head.temp_dir)).startswith("sg-ray-"):
            shutil.rmtree(os.path.dirname(head.temp_dir), ignore_errors=True)  # its private parent


def auth_headers_for(settings: Settings, dashboard_url: str) -> dict[str, str]:
    """The headers a client of the local head recorded for these settings sends, if `dashboard_url`
    is that head's (the trigger knows only the URL); {} otherwise."""
    head = load_head(settings)
    if head is None or head.dashboard_url.rstrip("/") != dashboard_url.rstrip("/"):
        return {}
    return head.auth_headers()


def stop_recorded_head(settings: Settings, remove_temp_dir: bool = False) -> bool:
    """Stop the head recorded for these settings (CLI / tests). True if one was running."""
    head = load_head(settings)
    _state_file(settings).unlink(missing_ok=True)
    if head is None:
        return False
    stop_head(head, remove_temp_dir=remove_temp_dir)
    return True
