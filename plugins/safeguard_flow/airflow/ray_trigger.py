"""RayJobTrigger: follows a Ray job from the triggerer, bringing its log lines into the task log.

The log is streamed with `JobSubmissionClient.tail_job_logs` (a websocket: each line arrives once,
instead of the whole log on every poll); the other Jobs API calls are blocking (requests), so they
run in a thread. The connection (for the auth token) is read with the async lookup. Killing the task
(mark failed, clear) stops the job via `on_kill`; a triggerer restart does not (the job keeps
running and the new trigger follows it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from safeguard_flow.airflow.ray_hook import TERMINAL_STATUSES, RayHook, RayTarget, strip_ansi, target_from_connection


class RayJobTrigger(BaseTrigger):
    MAX_POLL_FAILURES = 5  # consecutive failed polls before the task is told

    def __init__(
        self,
        job_id: str,
        dashboard_url: str,
        ray_conn_id: str | None = None,
        poll_interval: float = 5.0,
        deadline: float | None = None,  # epoch seconds; past it the job is stopped
        log_offset: int = 0,  # log lines already brought into the task log (a resumed trigger skips them)
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
        """Stream the job's log (Jobs API websocket: each line once, no re-download per poll) until the
        job ends; a dropped stream reconnects and skips the lines already brought in."""
        try:
            hook = await self._hook()
            self._seen = self.log_offset
            self._tail: deque[str] = deque(maxlen=self.tail_lines)
            self._summary: dict[str, Any] | None = None
            failures = 0
            while True:
                try:
                    await self._follow(hook)
                    status = await asyncio.to_thread(hook.get_job_status, self.job_id)
                    failures = 0
                except TimeoutError:
                    await asyncio.to_thread(hook.stop_job, self.job_id)
                    yield TriggerEvent(self._event("TIMEOUT", "the job ran past its timeout and was stopped"))
                    return
                except Exception as exc:  # a dashboard restart or network blip: retry a few times
                    failures += 1
                    if failures > self.MAX_POLL_FAILURES:
                        raise
                    self.log.warning("following Ray job %s failed (%s: %s); retry %d/%d", self.job_id,
                                     type(exc).__name__, exc, failures, self.MAX_POLL_FAILURES)
                    await asyncio.sleep(self.poll_interval * 2 ** failures)
                    continue
                if status in TERMINAL_STATUSES:
                    yield TriggerEvent(self._event(status, await self._message(hook)))
                    return
                await asyncio.sleep(self.poll_interval)  # the stream closed early: reconnect
        except Exception as exc:  # report to the task instead of failing the trigger silently
            yield TriggerEvent({"status": "ERROR", "job_id": self.job_id, "message": f"{type(exc).__name__}: {exc}",
                                "log_tail": ""})

    async def _follow(self, hook: RayHook) -> None:
        """One websocket session of `tail_job_logs`; it ends when the job does (or the connection drops)."""
        remaining = None if self.deadline is None else max(0.0, self.deadline - time.time())
        index = 0  # lines of this session; a new session replays the log from its first line
        partial = ""
        async with asyncio.timeout(remaining):
            async for chunk in hook.client.tail_job_logs(self.job_id):
                lines = (partial + chunk).split("\n")
                partial = lines.pop()
                for line in lines:
                    index += 1
                    if index > self._seen:
                        self._line(line)
        if partial:
            index += 1
            if index > self._seen:
                self._line(partial)

    def _line(self, line: str) -> None:
        from safeguard_flow.raylib.batch.summary import SUMMARY_MARKER, parse_marker

        self._seen += 1
        line = strip_ansi(line)
        self.log.info("%s", line)
        self._tail.append(line)
        if SUMMARY_MARKER in line:
            self._summary = parse_marker(line)

    async def _message(self, hook: RayHook) -> str:
        try:
            info = await asyncio.to_thread(hook.get_job_info, self.job_id)
            return info.message or ""
        except Exception:  # the message is a nicety; the status already says what happened
            return ""

    def _event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "job_id": self.job_id, "message": message,
                "log_tail": "\n".join(self._tail), "summary": self._summary}

    async def on_kill(self) -> None:
        """The user killed or cleared the deferred task: stop the Ray job too."""
        hook = await self._hook()
        stopped = await asyncio.to_thread(hook.stop_job, self.job_id)
        self.log.info("task killed: stop requested for Ray job %s (was running: %s)", self.job_id, stopped)
