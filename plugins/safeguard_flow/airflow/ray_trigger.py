"""RayJobTrigger: follows a Ray job from the triggerer, bringing its log lines into the task log.

The Jobs API client is blocking (requests), so each call runs in a thread; the connection (for the
auth token) is read with the async lookup. Killing the task (mark failed, clear) stops the job via
`on_kill`; a triggerer restart does not (the job keeps running and the new trigger follows it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from safeguard_flow.airflow.ray_hook import TERMINAL_STATUSES, LogFollower, RayHook, RayTarget, log_tail, target_from_connection


class RayJobTrigger(BaseTrigger):
    MAX_POLL_FAILURES = 5  # consecutive failed polls before the task is told

    def __init__(
        self,
        job_id: str,
        dashboard_url: str,
        ray_conn_id: str | None = None,
        poll_interval: float = 5.0,
        deadline: float | None = None,  # epoch seconds; past it the job is stopped
        log_offset: int = 0,
        tail_lines: int = 40,
    ):
        super().__init__()
        self.job_id = job_id
        self.dashboard_url = dashboard_url
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.log_offset = log_offset
        self.tail_lines = tail_lines

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "dashboard_url": self.dashboard_url,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "log_offset": self.log_offset,
                "tail_lines": self.tail_lines,
            },
        )

    async def _hook(self) -> RayHook:
        target = RayTarget(dashboard_url=self.dashboard_url)
        if self.ray_conn_id:
            from airflow.sdk.exceptions import AirflowNotFoundException

            try:
                conn = await RayHook.aget_connection(self.ray_conn_id)
            except AirflowNotFoundException:
                conn = None
            if conn is not None:
                target = target_from_connection(conn, self.ray_conn_id)
        hook = RayHook(ray_conn_id=self.ray_conn_id, target=target)
        await asyncio.to_thread(lambda: hook.client)  # connects (a blocking version check)
        return hook

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hook = await self._hook()
            follower = LogFollower(self.log_offset)
            emit = self.log.info
            failures = 0
            while True:
                try:
                    status = await asyncio.to_thread(hook.get_job_status, self.job_id)
                    logs = await asyncio.to_thread(hook.get_job_logs, self.job_id)
                    failures = 0
                except Exception as exc:  # a dashboard restart or network blip: retry a few times
                    failures += 1
                    if failures > self.MAX_POLL_FAILURES:
                        raise
                    self.log.warning("polling Ray job %s failed (%s: %s); retry %d/%d", self.job_id,
                                     type(exc).__name__, exc, failures, self.MAX_POLL_FAILURES)
                    await asyncio.sleep(self.poll_interval * 2 ** failures)
                    continue
                follower.feed(logs, emit)
                if status in TERMINAL_STATUSES:
                    follower.flush(logs, emit)
                    yield TriggerEvent(self._event(status, logs, await self._message(hook)))
                    return
                if self.deadline is not None and time.time() > self.deadline:
                    await asyncio.to_thread(hook.stop_job, self.job_id)
                    yield TriggerEvent(self._event("TIMEOUT", logs, "the job ran past its timeout and was stopped"))
                    return
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:  # report to the task instead of failing the trigger silently
            yield TriggerEvent({"status": "ERROR", "job_id": self.job_id, "message": f"{type(exc).__name__}: {exc}",
                                "log_tail": ""})

    async def _message(self, hook: RayHook) -> str:
        try:
            info = await asyncio.to_thread(hook.get_job_info, self.job_id)
            return info.message or ""
        except Exception:  # the message is a nicety; the status already says what happened
            return ""

    def _event(self, status: str, logs: str, message: str) -> dict[str, Any]:
        from safeguard_flow.raylib.summary import parse_marker

        return {"status": status, "job_id": self.job_id, "message": message,
                "log_tail": log_tail(logs, self.tail_lines), "summary": parse_marker(logs)}

    async def on_kill(self) -> None:
        """The user killed or cleared the deferred task: stop the Ray job too."""
        hook = await self._hook()
        stopped = await asyncio.to_thread(hook.stop_job, self.job_id)
        self.log.info("task killed: stop requested for Ray job %s (was running: %s)", self.job_id, stopped)
