"""RayJobTrigger: follows a Ray job from the triggerer, bringing its log lines into the task log.

The log is streamed with `JobSubmissionClient.tail_job_logs` (a websocket: each line arrives once,
instead of the whole log on every poll); the other Jobs API calls are blocking (requests), so they
run in a thread. The connection (for the auth token) is read with the async lookup. Killing the task
(mark failed, clear) stops the job via `on_kill`; a triggerer restart does not (the job keeps
running and the new trigger follows it from the log offset the old one saved).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from safeguard_flow.airflow.ray_hook import TERMINAL_STATUSES, RayHook, RayTarget, strip_ansi, target_from_connection


def default_state_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"safeguard-ray-trigger-{os.getuid()}")


class JobDeadlinePassed(Exception):
    """The job's own deadline passed (not a network timeout): the job is stopped."""


class RayJobTrigger(BaseTrigger):
    MAX_POLL_FAILURES = 5  # consecutive failed polls (with no log progress between) before the task is told
    SAVE_EVERY_S = 10.0  # how often the log offset (the resume point) is saved while lines arrive

    def __init__(
        self,
        job_id: str,
        dashboard_url: str,
        ray_conn_id: str | None = None,
        poll_interval: float = 5.0,
        deadline: float | None = None,  # epoch seconds; past it the job is stopped
        log_offset: int = 0,  # log lines already brought into the task log (a resumed trigger skips them)
        tail_lines: int = 40,
        state_dir: str | None = None,  # where the log offset is saved for a re-created trigger (None: a temp dir)
    ):
        super().__init__()
        self.job_id = job_id
        self.dashboard_url = dashboard_url
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.log_offset = log_offset
        self.tail_lines = tail_lines
        self.state_dir = state_dir

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
                "state_dir": self.state_dir,
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
        job ends; a dropped stream reconnects and skips the lines already brought in.

        Only the job's own deadline stops the job. Network trouble (a refused or reset connection,
        aiohttp's connect timeout: a TimeoutError too) is retried with backoff, and the count starts
        again once the job's log moves. The lines brought in are saved as the trigger's resume point
        (a state file, and an XCom of its task instance inside a triggerer), so a trigger the triggerer
        re-creates after a restart goes on from there instead of replaying the whole log."""
        try:
            self._seen = max(self.log_offset, await self._saved_offset())
            self._saved = self._seen
            self._tail: deque[str] = deque(maxlen=self.tail_lines)
            self._summary: dict[str, Any] | None = None
            failures = 0
            hook: RayHook | None = None
            while True:
                before = self._seen
                try:
                    if hook is None:
                        hook = await self._hook()
                    await self._follow(hook)
                    status = await asyncio.to_thread(hook.get_job_status, self.job_id)
                    failures = 0
                except JobDeadlinePassed as passed:
                    self._forget_offset()
                    await asyncio.to_thread(hook.stop_job, self.job_id)
                    yield TriggerEvent(self._event("TIMEOUT", str(passed)))
                    return
                except Exception as exc:  # a dashboard restart or a network blip: retry, then tell the task
                    await self._save_offset(force=True)
                    failures = 1 if self._seen > before else failures + 1  # progress since: a new blip
                    if failures > self.MAX_POLL_FAILURES:
                        raise
                    self.log.warning("following Ray job %s failed (%s: %s); retry %d/%d (network trouble, not the "
                                     "job's deadline)", self.job_id, type(exc).__name__, exc, failures,
                                     self.MAX_POLL_FAILURES)
                    await asyncio.sleep(min(self.poll_interval * 2 ** failures, 60.0))
                    continue
                if status in TERMINAL_STATUSES:
                    self._forget_offset()
                    yield TriggerEvent(self._event(status, await self._message(hook)))
                    return
                await self._save_offset(force=True)
                await asyncio.sleep(self.poll_interval)  # the stream closed early: reconnect
        except asyncio.CancelledError:  # the triggerer stops (a restart): keep the resume point
            if hasattr(self, "_seen"):
                self._save_offset_file()
            raise
        except Exception as exc:  # report to the task instead of failing the trigger silently
            yield TriggerEvent({"status": "ERROR", "job_id": self.job_id, "message": f"{type(exc).__name__}: {exc}",
                                "log_tail": ""})

    async def _follow(self, hook: RayHook) -> None:
        """One websocket session of `tail_job_logs`; it ends when the job does (or the connection drops).
        Raises JobDeadlinePassed only when the job's deadline passed; every other error is the network's."""
        remaining = None if self.deadline is None else max(0.0, self.deadline - time.time())
        index = 0  # lines of this session; a new session replays the log from its first line
        partial = ""
        window = asyncio.timeout(remaining)
        try:
            async with window:
                async for chunk in hook.client.tail_job_logs(self.job_id):
                    lines = (partial + chunk).split("\n")
                    partial = lines.pop()
                    for line in lines:
                        index += 1
                        if index > self._seen:
                            self._line(line)
                    await self._save_offset()
        except TimeoutError:
            # aiohttp's connect and read timeouts are TimeoutErrors too: only our window expiring is the deadline.
            if window.expired():
                raise JobDeadlinePassed(f"the job ran past its deadline ({self.deadline_text()}) and was stopped") \
                    from None
            raise
        if partial:
            index += 1
            if index > self._seen:
                self._line(partial)

    def deadline_text(self) -> str:
        return "none" if self.deadline is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.deadline))

    # --- the resume point: lines already in the task log, saved where a re-created trigger finds them ---
    # Two places: an XCom of the task instance (any triggerer host; only inside a triggerer) and a small
    # state file (a restart on the same host). A lost save only replays some lines after a restart.

    def _offset_xcom(self) -> dict[str, Any] | None:
        ti = self.task_instance
        if ti is None:
            return None
        return {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
                "map_index": getattr(ti, "map_index", -1)}

    def _offset_file(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.job_id)[:200]
        return Path(self.state_dir or default_state_dir()) / f"{safe}.offset"

    async def _saved_offset(self) -> int:
        found = 0
        try:
            found = int(self._offset_file().read_text().strip() or 0)
        except (OSError, ValueError):
            pass
        where = self._offset_xcom()
        if where is not None:
            try:
                from airflow.sdk.bases.xcom import BaseXCom

                found = max(found, int(await BaseXCom.aget_one(key=self._offset_key(), **where) or 0))
            except Exception as exc:  # no saved point (or no API): the file and the kwargs are what there is
                self.log.debug("no saved log offset in XCom: %s", exc)
        return found

    async def _save_offset(self, force: bool = False) -> None:
        if self._seen == getattr(self, "_saved", 0):
            return
        now = time.monotonic()
        if not force and now - getattr(self, "_saved_at", 0.0) < self.SAVE_EVERY_S:
            return
        self._saved, self._saved_at = self._seen, now
        self._save_offset_file()
        where = self._offset_xcom()
        if where is None:
            return
        try:
            from airflow.sdk.bases.xcom import BaseXCom

            await BaseXCom.aset(key=self._offset_key(), value=self._seen, **where)
        except Exception as exc:  # noqa: BLE001 - see above: a replay, nothing lost
            self.log.warning("could not save the log offset of Ray job %s: %s", self.job_id, exc)

    def _save_offset_file(self) -> None:
        try:
            path = self._offset_file()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(str(self._seen))
            tmp.replace(path)
        except OSError as exc:
            self.log.warning("could not save the log offset of Ray job %s to a file: %s", self.job_id, exc)

    def _forget_offset(self) -> None:
        """The job ended: its resume point is not needed any more."""
        try:
            self._offset_file().unlink(missing_ok=True)
        except OSError:
            pass

    def _offset_key(self) -> str:
        return f"ray_log_offset:{self.job_id}"

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
