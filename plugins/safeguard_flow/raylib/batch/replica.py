"""The replica: a Ray Data actor holding one engine, labelling whole chunks and staging them.

Each call gets chunk numbers, not content: the actor reads its chunk from the warehouse, labels it
and writes the verdicts with the chunk's done mark in one transaction, so whatever dies later, a
staged chunk is never labelled again. A chunk already staged (by a retry, a restarted job or a
second job on the same run) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
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
# stages: JSON list of {"pid", "policies"}, one per replica that labelled the chunk.
RESULT_COLUMNS = ("chunk_no", "skipped", "items", "verdicts", "errors", "requests", "prompt_tokens",
                  "cached_prompt_tokens", "completion_tokens", "seconds", "started", "finished", "pid",
                  "engine_load_s", "stages")
# With policy affinity, what one stage hands the next with the chunk number: its verdicts and figures,
# pickled (only this job's own actors read it, as Ray itself pickles what passes between them).
CARRY_COLUMN = "carried"
_SUMMED = ("errors", "requests", "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "seconds")
# A chunk can take minutes: a replica prints how far it is at least this often (into the job log).
PROGRESS_EVERY_S = 10.0


class ChunkLabeller:
    """Constructed once per replica by Ray Data (so the engine loads once); called per batch of chunks.

    `policies` are the run's; `share` names the ones this replica labels (policy affinity: None is all
    of them), and only the `last` stage stages the chunk, with what earlier stages carried to it."""

    def __init__(self, settings: Settings, run_id: str, policies: Sequence[Policy], attempt: int | None = None,
                 share: Sequence[str] | None = None, last: bool = True):
        from safeguard_flow.engines import build_engine
        from safeguard_flow.raylib.shipping.job_secrets import export_env
        from safeguard_flow.warehouse import db

        export_env(settings)  # secret variables (HF_TOKEN) never travel in the job's runtime_env
        self.settings = settings
        self.run_id = run_id
        self.attempt = attempt  # the label attempt's fencing token, carried by every chunk write
        self.policies = list(policies)
        self.share = self.policies if share is None else [p for p in self.policies if p.name in set(share)]
        self.last = last
        self.db = db.make_engine(settings)
        settings = _replica_engine_settings(settings)
        start = time.perf_counter()
        # An input that kills the engine gets it restarted here, in the replica (label_isolating).
        self.slot = EngineSlot(lambda: build_engine(settings))
        self.engine = self.slot.engine
        self.engine_load_s = time.perf_counter() - start
        self._first_call = True
        log.info("replica pid %s: engine %s ready in %.1fs (policies %s)", os.getpid(), self.engine.model_name,
                 self.engine_load_s, ", ".join(p.name for p in self.share))

    def __call__(self, batch: Any) -> dict[str, list]:
        plans = list(batch["cascade_plan"]) if "cascade_plan" in batch else None  # the cascade stage ran first
        carried = list(batch[CARRY_COLUMN]) if CARRY_COLUMN in batch else None
        chunk_nos = [int(c) for c in batch["chunk_no"]]
        rows = [self.label(c, None if plans is None else plans[i],
                           None if carried is None else pickle.loads(carried[i]))
                for i, c in enumerate(chunk_nos)]
        if not self.last:
            out = {"chunk_no": chunk_nos, CARRY_COLUMN: [pickle.dumps(r) for r in rows]}
            return out if plans is None else {**out, "cascade_plan": plans}
        return {col: [row[col] for row in rows] for col in RESULT_COLUMNS}

    def label(self, chunk_no: int, cascade_plan: str | None = None, prior: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """Label this replica's policies on the chunk; the last stage also stages it. Returns the result
        row, or for an earlier stage what it hands on (the row plus `verdicts` and `figures`)."""
        from safeguard_flow.raylib.batch import cascade_stage
        from safeguard_flow.warehouse import staging

        row = dict.fromkeys(RESULT_COLUMNS, 0)
        row.update(chunk_no=chunk_no, pid=os.getpid(), skipped=False, seconds=0.0, started=0.0, finished=0.0,
                   engine_load_s=self.engine_load_s if self._first_call else 0.0, stages="[]")
        self._first_call = False
        if prior is not None:
            row["engine_load_s"] = max(row["engine_load_s"], prior["engine_load_s"])
        if (prior is not None and prior["skipped"]) or \
                chunk_no not in staging.pending_chunks(self.db, self.settings, self.run_id):
            row["skipped"] = True
            return row if self.last else {**row, "verdicts": [], "figures": {}}
        row["started"] = time.time() if prior is None else prior["started"]
        start = time.perf_counter()
        items = staging.read_chunk(self.db, self.settings, self.run_id, chunk_no)
        stats = LabelStats()
        verdicts = []
        cascade_figures: dict = {}
        # Slices of about two engine batches: the engine stays full, and progress can be counted.
        step = max(8, 2 * self.settings.model.max_num_seqs // max(1, len(self.share)))
        what = f"run {self.run_id} chunk {chunk_no}" + ("" if self.share == self.policies else
                                                        f" ({', '.join(p.name for p in self.share)})")
        with _Progress(what, len(items)) as progress:
            for lo in range(0, len(items), step):
                try:
                    verdicts += cascade_stage.label_planned(
                        lambda its, pols: label_isolating(self.slot, its, pols, stats=stats,
                                                          max_content_chars=self.settings.model.max_content_chars),
                        items[lo:lo + step], self.share, cascade_plan, cascade_figures, len(self.policies))
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
        row.update(items=len(items), errors=stats.errors, requests=stats.requests, prompt_tokens=stats.prompt_tokens,
                   cached_prompt_tokens=stats.cached_prompt_tokens, completion_tokens=stats.completion_tokens,
                   seconds=time.perf_counter() - start)
        stages = [{"pid": os.getpid(), "policies": [p.name for p in self.share]}]
        if prior is not None:  # what the earlier policy-affinity stages labelled of this chunk
            verdicts = prior["verdicts"] + verdicts
            cascade_figures = {**prior["figures"], **cascade_figures}
            stages = json.loads(prior["stages"]) + stages
            for key in _SUMMED:
                row[key] += prior[key]
        row["stages"] = json.dumps(stages)
        if not self.last:
            return {**row, "verdicts": verdicts, "figures": cascade_figures}
        try:
            staging.write_chunk(self.db, self.settings, self.run_id, chunk_no, verdicts, attempt=self.attempt)
        except staging.StaleWrite as exc:
            # A newer label attempt owns the run (or it moved on): this chunk is not ours to write.
            log.warning("replica pid %s: %s", os.getpid(), exc)
            return {**row, **dict.fromkeys(("items", *_SUMMED), 0), "skipped": True}  # nothing of it counts
        cascade_stage.record(self.db, self.settings, self.run_id, chunk_no, cascade_figures)
        row.update(verdicts=len(verdicts), finished=time.time())
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
