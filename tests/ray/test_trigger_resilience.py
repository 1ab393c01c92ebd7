"""RayJobTrigger against a real Ray head through a TCP proxy this test cuts (issue 18): a network error
(connections reset and refused mid-job) is retried and the job goes on; the job's own deadline is told
apart (the job is stopped, TIMEOUT); a trigger re-created after a triggerer restart (from the kwargs it
was deferred with) keeps the log offset its predecessor saved, so no line reaches the task log twice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.slow

COUNT = 'python -c "import time\nfor i in range(8):\n    print(f\'line {i}\', flush=True); time.sleep(0.7)"'
SLEEP = 'python -c "import time; print(\'sleeping\', flush=True); time.sleep(120)"'


class CuttableProxy:
    """A TCP proxy in front of the Ray dashboard: `cut()` resets every open connection and refuses new
    ones (what a network blip or a dashboard restart looks like to the trigger) until `mend()`."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # a reset: connection refused by the far end
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
                c.close()

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
def proxy(ray_head):
    port = int(ray_head.dashboard_url.rsplit(":", 1)[1])
    p = CuttableProxy(port)
    yield p
    p.close()


async def _until(condition, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def _trigger(**kwargs):
    from safeguard_flow.airflow.ray_trigger import RayJobTrigger

    return RayJobTrigger(poll_interval=0.3, tail_lines=100, **kwargs)  # the tail holds every line brought in


async def _first(trigger):
    async for event in trigger.run():
        return event


def _brought(trigger) -> list[str]:
    return [line for line in getattr(trigger, "_tail", []) if line.startswith("line ")]


def test_a_network_blip_is_retried_and_the_job_goes_on(proxy, ray_settings, tmp_path, capsys):
    from safeguard_flow.airflow.ray_hook import RayHook

    hook = RayHook(settings=ray_settings)
    job_id = hook.submit_job(COUNT)
    trigger = _trigger(job_id=job_id, dashboard_url=proxy.url, deadline=time.time() + 120, state_dir=str(tmp_path))

    async def follow():
        task = asyncio.create_task(_first(trigger))
        await _until(lambda: len(_brought(trigger)) >= 2)
        proxy.cut()  # mid-job: the websocket is reset, reconnects are refused
        await asyncio.sleep(2.0)
        proxy.mend()
        return await asyncio.wait_for(task, 90)

    event = asyncio.run(follow())
    assert event.payload["status"] == "SUCCEEDED", event.payload
    assert hook.get_job_status(job_id) == "SUCCEEDED"  # never stopped for a blip
    assert _brought(trigger) == [f"line {i}" for i in range(8)]  # every line once, none replayed
    assert "network trouble, not the job's deadline" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.offset"))  # the finished job's resume point is gone


def test_the_jobs_deadline_stops_it_and_is_not_a_network_error(proxy, ray_settings, tmp_path):
    from safeguard_flow.airflow.ray_hook import RayHook

    hook = RayHook(settings=ray_settings)
    job_id = hook.submit_job(SLEEP)
    trigger = _trigger(job_id=job_id, dashboard_url=proxy.url, deadline=time.time() + 4, state_dir=str(tmp_path))
    event = asyncio.run(asyncio.wait_for(_first(trigger), 90))
    assert event.payload["status"] == "TIMEOUT" and "ran past its deadline" in event.payload["message"]
    deadline = time.monotonic() + 30
    while hook.get_job_status(job_id) not in ("STOPPED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert hook.get_job_status(job_id) == "STOPPED"


def test_a_recreated_trigger_keeps_the_log_offset(ray_head, ray_settings, tmp_path):
    from safeguard_flow.airflow.ray_hook import RayHook
    from safeguard_flow.airflow.ray_trigger import RayJobTrigger

    hook = RayHook(settings=ray_settings)
    job_id = hook.submit_job(COUNT)
    # What the operator deferred with: the triggerer rebuilds the trigger from these kwargs after a restart.
    _, kwargs = _trigger(job_id=job_id, dashboard_url=ray_head.dashboard_url, deadline=time.time() + 120,
                         state_dir=str(tmp_path)).serialize()
    first = RayJobTrigger(**kwargs)

    async def first_triggerer():
        task = asyncio.create_task(_first(first))
        await _until(lambda: len(_brought(first)) >= 3)
        task.cancel()  # the triggerer stops
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(first_triggerer())
    before = _brought(first)
    assert 3 <= len(before) < 8 and kwargs["log_offset"] == 0
    assert int((tmp_path / f"{job_id}.offset").read_text()) == len(first._tail)  # every log line so far

    second = RayJobTrigger(**kwargs)
    event = asyncio.run(asyncio.wait_for(_first(second), 90))
    assert event.payload["status"] == "SUCCEEDED"
    assert before + _brought(second) == [f"line {i}" for i in range(8)]  # went on where the old one stopped
