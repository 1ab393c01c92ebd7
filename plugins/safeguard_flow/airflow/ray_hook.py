"""RayHook: the one place a DAG reaches a Ray cluster (the Jobs API of its dashboard).

An Airflow connection of type ``safeguard_ray`` names the cluster: the dashboard in host (with or
without scheme) and port, the auth token (clusters started with RAY_AUTH_MODE=token) in password,
and in extra an optional ``runtime_env`` merged into every job, ``verify`` (TLS) and ``headers``::

    AIRFLOW_CONN_SAFEGUARD_RAY_DEFAULT='{"conn_type": "safeguard_ray", "host": "https://ray-head.example",
        "port": 8265, "password": "<token>", "extra": {"runtime_env": {"pip": ["safeguard-flow"]}}}'

With no such connection, ``ray.dashboard_url`` from the settings is used, and failing that the hook
starts (or reuses) a local Ray head on 127.0.0.1 (see safeguard_flow.raylib.cluster.local_head).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from airflow.sdk import BaseHook

from safeguard_flow.airflow.provider import RAY_CONN_TYPE
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:  # pragma: no cover
    from ray.job_submission import JobSubmissionClient

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_EXTRA_KEYS = {"runtime_env", "verify", "headers"}
# Terminal colour / cursor sequences Ray puts around worker prefixes: not for a task log.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def check_auth(settings: Settings, target: RayTarget, conn_id: str | None) -> None:
    """A token sent to a cluster the settings call unauthenticated is a mistake either way: say so now."""
    if "Authorization" in target.headers and settings.ray.auth_mode == "disabled":
        raise SettingsError(
            f"connection {conn_id!r} has an auth token (its password) but ray.auth_mode "
            "(SAFEGUARD_RAY__AUTH_MODE) is 'disabled': set ray.auth_mode to 'token' for a cluster "
            "started with RAY_AUTH_MODE=token, or clear the connection's password"
        )


def route_ray_logs() -> None:
    """Ray's own logger writes to stderr, which a task log shows as errors: hand it to the task's logging
    instead, so packaging INFO lines stay INFO."""
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers.clear()
    ray_logger.propagate = True


@dataclass
class RayTarget:
    """Where jobs go, resolved from the connection, the settings or the local head."""

    dashboard_url: str
    headers: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    verify: bool | str = True
    local: bool = False  # the local head started by us (same machine as the submitter)


def target_from_connection(conn: Any, conn_id: str) -> RayTarget:
    """A RayTarget from an Airflow connection (sync or async lookups share this)."""
    if not conn.host:
        raise SettingsError(f"connection {conn_id!r}: set host to the Ray dashboard, e.g. http://ray-head:8265")
    extra = conn.extra_dejson or {}
    unknown = sorted(set(extra) - _EXTRA_KEYS)
    if unknown:
        raise SettingsError(f"connection {conn_id!r}: unknown extra field(s) {unknown} (known: {sorted(_EXTRA_KEYS)})")
    host = conn.host if "://" in conn.host else f"http://{conn.host}"
    url = f"{host.rstrip('/')}:{conn.port}" if conn.port else host.rstrip("/")
    headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    runtime_env = extra.get("runtime_env") or {}
    if not isinstance(runtime_env, dict):
        raise SettingsError(f"connection {conn_id!r}: extra.runtime_env must be a mapping")
    return RayTarget(dashboard_url=url, headers=headers, runtime_env=runtime_env, verify=extra.get("verify", True))


class RayHook(BaseHook):
    conn_name_attr = "ray_conn_id"
    default_conn_name = "safeguard_ray_default"
    conn_type = RAY_CONN_TYPE
    hook_name = "Safeguard Ray cluster"

    def __init__(
        self,
        ray_conn_id: str | None = default_conn_name,
        settings: Settings | None = None,
        target: RayTarget | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id
        self._settings = settings
        if target is not None:
            self.__dict__["target"] = target

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login"],
            "relabeling": {"host": "Dashboard address", "port": "Dashboard port", "password": "Auth token"},
            "placeholders": {
                "host": "http://ray-head.example.com",
                "port": "8265",
                "password": "token of a cluster started with RAY_AUTH_MODE=token (empty if disabled)",
                "extra": '{"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}, "verify": true}',
            },
        }

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def _connection(self):
        if not self.ray_conn_id:
            return None
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            return None

    @cached_property
    def target(self) -> RayTarget:
        conn = self._connection()
        if conn is not None:
            target = target_from_connection(conn, self.ray_conn_id or "")
            check_auth(self.settings, target, self.ray_conn_id)
            return target
        if self.settings.ray.dashboard_url:
            return RayTarget(dashboard_url=self.settings.ray.dashboard_url.rstrip("/"))
        from safeguard_flow.raylib.cluster import local_head

        head = local_head.ensure_head(self.settings)
        self.log.info("no Ray connection %r and no ray.dashboard_url: using the local head at %s",
                      self.ray_conn_id, head.dashboard_url)
        return RayTarget(dashboard_url=head.dashboard_url, headers=head.auth_headers(), local=True)

    @cached_property
    def client(self) -> JobSubmissionClient:
        from ray.job_submission import JobSubmissionClient

        # No RAY_AUTH_MODE here: the token travels in the Authorization header, and only the local
        # head (local_head.local_cluster_env) is told its mode.
        route_ray_logs()
        t = self.target
        headers = t.headers
        if not headers:  # the trigger knows only the URL: the local head's own token, if it is that head
            from safeguard_flow.raylib.cluster import local_head

            headers = local_head.auth_headers_for(self.settings, t.dashboard_url)
        return JobSubmissionClient(t.dashboard_url, headers=headers or None, verify=t.verify)

    def get_conn(self) -> JobSubmissionClient:
        return self.client

    # -- jobs ------------------------------------------------------------------------------------
    def submit_job(
        self,
        entrypoint: str,
        *,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
    ) -> str:
        from safeguard_flow.raylib.shipping.submission import merge_runtime_env

        env = merge_runtime_env(self.target.runtime_env, runtime_env)
        job_id = self.client.submit_job(entrypoint=entrypoint, runtime_env=env or None, metadata=metadata,
                                        submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus)
        self.log.info("submitted Ray job %s to %s: %s", job_id, mask_url(self.target.dashboard_url), entrypoint)
        return job_id

    def put_job_secrets(self, values: dict[str, str]) -> str:
        """Store a job's secrets in the cluster (not in its runtime_env); returns the name to pass the job."""
        from safeguard_flow.raylib.shipping.job_secrets import upload

        return upload(self.client, values)

    def get_job_status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def get_job_info(self, job_id: str) -> Any:
        return self.client.get_job_info(job_id)

    def get_job_logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)

    def stop_job(self, job_id: str) -> bool:
        stopped = self.client.stop_job(job_id)
        self.log.info("stop requested for Ray job %s (was running: %s)", job_id, stopped)
        return stopped

    def find_active_job(self, metadata: dict[str, str]) -> str | None:
        """A PENDING/RUNNING job whose metadata holds all of `metadata` (to reconnect instead of resubmitting)."""
        for job in self.client.list_jobs():
            status = str(job.status.value)
            if status not in TERMINAL_STATUSES and all((job.metadata or {}).get(k) == v for k, v in metadata.items()):
                return job.submission_id
        return None

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval: float | None = None,
        timeout: float | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> str:
        """Block until the job ends (the non-deferrable path); new log text goes to `on_log`. Returns the status."""
        poll_interval = poll_interval or self.settings.ray.poll_interval_s
        deadline = time.monotonic() + (timeout or self.settings.ray.job_timeout_s)
        follower = LogFollower()
        while True:
            status = self.get_job_status(job_id)
            if on_log is not None:
                follower.feed(self.get_job_logs(job_id), on_log)
            if status in TERMINAL_STATUSES:
                return status
            if time.monotonic() > deadline:
                self.stop_job(job_id)
                return "TIMEOUT"
            time.sleep(poll_interval)

    def test_connection(self) -> tuple[bool, str]:
        try:
            version = self.client.get_version()
        except Exception as exc:  # a UI check: report, do not raise
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Ray dashboard at {mask_url(self.target.dashboard_url)} answers (Ray {version})"


class LogFollower:
    """Hands out only the log text not seen before (Ray returns the whole log on every call)."""

    def __init__(self, offset: int = 0):
        self.offset = offset

    def feed(self, full_log: str, emit: Callable[[str], None]) -> None:
        if len(full_log) < self.offset:  # the log was rotated or truncated: start over
            self.offset = 0
        new = full_log[self.offset:]
        if not new:
            return
        # Emit whole lines only; a partial last line waits for the next poll.
        cut = new.rfind("\n") + 1
        if cut == 0:
            return
        for line in new[:cut].splitlines():
            emit(strip_ansi(line))
        self.offset += cut

    def flush(self, full_log: str, emit: Callable[[str], None]) -> None:
        """At the end: emit whatever is left, partial last line included."""
        self.feed(full_log + ("\n" if full_log and not full_log.endswith("\n") else ""), emit)


def log_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
