"""The replica: a Ray Data actor holding one engine, labelling whole chunks and staging them.

Each call gets chunk numbers, not content: the actor reads its chunk from the warehouse, labels it
and writes the verdicts with the chunk's done mark in one transaction, so whatever dies later, a
staged chunk is never labelled again. A chunk already staged (by a retry, a restarted job or a
second job on the same run) is skipped.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Sequence

from safeguard_flow.labelling.loop import LabelStats
from safeguard_flow.domain.policies import Policy
from safeguard_flow.engines.base import EngineError
from safeguard_flow.labelling.chunk import EngineSlot, label_isolating
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

# Columns of the rows a replica returns per chunk (the driver sums them into the job summary).
RESULT_COLUMNS = ("chunk_no", "skipped", "items", "verdicts", "errors", "requests", "prompt_tokens",
                  "completion_tokens", "seconds", "started", "finished", "pid", "engine_load_s")
# A chunk can take minutes: a replica prints how far it is at least this often (into the job log).
PROGRESS_EVERY_S = 10.0


class ChunkLabeller:
    """Constructed once per replica by Ray Data (so the engine loads once); called per batch of chunks."""

    def __init__(self, settings: Settings, run_id: str, policies: Sequence[Policy], attempt: int | None = None):
        from safeguard_flow.engines import build_engine
        from safeguard_flow.raylib.shipping.job_secrets import export_env
        from safeguard_flow.warehouse import db

        export_env(settings)  # secret variables (HF_TOKEN) never travel in the job's runtime_env
        self.settings = settings
        self.run_id = run_id
        self.attempt = attempt  # the label attempt's fencing token, carried by every chunk write
        self.policies = list(policies)
        self.db = db.make_engine(settings)
        settings = _replica_engine_settings(settings)
        start = time.perf_counter()
        # An input that kills the engine gets it restarted here, in the replica (label_isolating).
        self.slot = EngineSlot(lambda: build_engine(settings))
        self.engine = self.slot.engine
        self.engine_load_s = time.perf_counter() - start
        self._first_call = True
        log.info("replica pid %s: engine %s ready in %.1fs", os.getpid(), self.engine.model_name, self.engine_load_s)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        plans = batch.get("cascade_plan")  # present when the cascade stage runs before the replicas
        rows = [self.label(int(chunk_no), None if plans is None else plans[i])
                for i, chunk_no in enumerate(batch["chunk_no"])]
        return {col: [row[col] for row in rows] for col in RESULT_COLUMNS}

    def label(self, chunk_no: int, cascade_plan: str | None = None) -> dict[str, Any]:
        from safeguard_flow.raylib.batch import cascade_stage
        from safeguard_flow.warehouse import staging

        row = dict.fromkeys(RESULT_COLUMNS, 0)
        row.update(chunk_no=chunk_no, pid=os.getpid(), skipped=False, seconds=0.0, started=0.0, finished=0.0,
                   engine_load_s=self.engine_load_s if self._first_call else 0.0)
        self._first_call = False
        if chunk_no not in staging.pending_chunks(self.db, self.settings, self.run_id):
            row["skipped"] = True
            return row
        row["started"] = time.time()
        start = time.perf_counter()
        items = staging.read_chunk(self.db, self.settings, self.run_id, chunk_no)
        stats = LabelStats()
        verdicts = []
        cascade_figures: dict = {}
        # Slices of about two engine batches: the engine stays full, and progress can be counted.
        step = max(8, 2 * self.settings.model.max_num_seqs // max(1, len(self.policies)))
        with _Progress(f"run {self.run_id} chunk {chunk_no}", len(items)) as progress:
            for lo in range(0, len(items), step):
                try:
                    verdicts += cascade_stage.label_planned(
                        lambda its, pols: label_isolating(self.slot, its, pols, stats=stats,
                                                          max_content_chars=self.settings.model.max_content_chars),
                        items[lo:lo + step], self.policies, cascade_plan, cascade_figures)
                except EngineError:
                    # The engine keeps dying (or cannot start again): end the replica so Ray restarts it
                    # (ray.max_restarts) and retries this chunk. Close the engine first, so its EngineCore /
                    # tensor-parallel workers free the GPU the restarted actor needs.
                    log.exception("replica pid %s: engine unhealthy on chunk %s; exiting for a restart",
                                  os.getpid(), chunk_no)
                    self.engine = self.slot.engine
                    self.shutdown_engine()
                    os._exit(1)
                finally:
                    self.engine = self.slot.engine
                progress.done = min(len(items), lo + step)
        try:
            staging.write_chunk(self.db, self.settings, self.run_id, chunk_no, verdicts, attempt=self.attempt)
        except staging.StaleWrite as exc:
            # A newer label attempt owns the run (or it moved on): this chunk is not ours to write.
            log.warning("replica pid %s: %s", os.getpid(), exc)
            row["skipped"] = True
            return row
        cascade_stage.record(self.db, self.settings, self.run_id, chunk_no, cascade_figures)
        row.update(items=len(items), verdicts=len(verdicts), errors=stats.errors, requests=stats.requests,
                   prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                   seconds=time.perf_counter() - start, finished=time.time())
        return row

    def shutdown_engine(self, timeout_s: float = 30.0) -> None:
        """Close the engine and make sure no process it started outlives this replica."""
        engine, self.engine = getattr(self, "engine", None), None
        if getattr(self, "slot", None) is not None:
            self.slot.engine = None
        children = _engine_processes()
        if engine is not None:
            try:
                engine.close()
            except Exception:  # noqa: BLE001 - shutting down a broken engine; log and go on
                log.exception("replica pid %s: closing the engine failed", os.getpid())
        if children:
            import psutil

            _, alive = psutil.wait_procs(children, timeout=timeout_s)
            for proc in alive:
                try:
                    proc.kill()
                except psutil.Error:
                    pass

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.close()
            except Exception:  # closing at interpreter exit: nothing useful to do with an error
                pass


def _engine_processes() -> list:
    """The processes the engine may have left behind: this process's descendants in its own session
    (vLLM's EngineCore and TP workers). A process started in a session of its own (a local Ray head,
    a server) is not the engine's and is never touched."""
    try:
        import psutil

        sid = os.getsid(0)
        return [p for p in psutil.Process().children(recursive=True) if os.getsid(p.pid) == sid]
    except Exception:  # psutil missing, or a child gone meanwhile: the engine's own shutdown is all we do
        return []


class _Progress:
    """Prints `<what>: done/total items, items/s` every PROGRESS_EVERY_S while a chunk is labelled."""

    def __init__(self, what: str, total: int, every_s: float = PROGRESS_EVERY_S):
        self.what, self.total, self.every_s = what, total, every_s
        self.done = 0
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="chunk-progress", daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return f"{self.what}: {self.done}/{self.total} items, {rate:.2f} items/s, {elapsed:.0f}s"

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            print(self.line(), file=sys.stderr, flush=True)


def _replica_engine_settings(settings: Settings) -> Settings:
    """Engine placement inside a replica actor."""
    if settings.engine.kind != "vllm":
        return settings
    if settings.ray.num_gpus_per_replica == 0:
        # On CPU, keep vLLM's engine core in this process: its spawned engine-core and worker
        # processes re-import torch and vLLM (about a minute of start-up per replica on a small
        # machine), and a killed replica would leave them behind.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        return settings
    if settings.model.tensor_parallel_size > 1 and "distributed_executor_backend" not in settings.model.engine_kwargs:
        # The actor already holds the TP group's GPUs; vLLM's Ray executor would ask Ray for more.
        settings = settings.model_copy(deep=True)
        settings.model.engine_kwargs = {**settings.model.engine_kwargs, "distributed_executor_backend": "mp"}
    return settings
