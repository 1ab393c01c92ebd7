"""run_label_job: label every pending chunk of a run on Ray replicas and stage the verdicts.

The same function runs in-process (the local default, tests, the CLI) and inside a submitted Ray job
(ray_jobs/label_job.py). Restarting it with the same run id is always safe: only chunks without a
done mark are labelled, and each chunk's verdicts are committed together with that mark.
"""

from __future__ import annotations

import logging
import time

from safeguard_flow.raylib.pipeline import label_chunks, progress_bar
from safeguard_flow.raylib.session import ray_session
from safeguard_flow.raylib.settings_env import resolve_paths
from safeguard_flow.raylib.summary import LabelJobSummary
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)


class LabelJobError(RuntimeError):
    """The job ended with chunks still pending (the message says how many and which run)."""


def run_label_job(settings: Settings, run_id: str) -> LabelJobSummary:
    from safeguard_flow.warehouse import db, policy_store, runs, staging

    started = time.perf_counter()
    settings = resolve_paths(settings)
    engine = db.make_engine(settings)
    try:
        run = runs.get_run(engine, settings, run_id)
        refs = [(name, version) for name, version in run["policy_refs"]]
        policies = policy_store.get_policies(engine, settings, refs)
        chunks = staging.pending_chunks(engine, settings, run_id)
        summary = LabelJobSummary(run_id=run_id, chunks_pending=len(chunks))
        if not chunks:
            log.info("run %s: no pending chunks, nothing to label", run_id)
            summary.wall_s = time.perf_counter() - started
            return summary
        log.info("run %s: %d pending chunks, %d policies (%s), %d replicas", run_id, len(chunks), len(policies),
                 ", ".join(f"{p.name} v{p.version}" for p in policies), min(settings.ray.num_replicas, len(chunks)))
        # A resumed run keeps the start of its first label job.
        start_fields = {} if run.get("label_started_at") else {"label_started_at": db.utcnow()}
        runs.update_run(engine, settings, run_id, status="labelling", model=settings.model.name,
                        engine=f"{settings.engine.kind} on ray", **start_fields)

        with ray_session(settings), progress_bar(len(chunks), run_id) as bar:
            for row in label_chunks(settings, run_id, policies, chunks):
                summary.add_row(row)
                bar.set_postfix(items=summary.items, errors=summary.errors, refresh=False)
                bar.update(1)
        summary.replicas = len(summary.replica_pids)

        left = staging.pending_chunks(engine, settings, run_id)
        summary.chunks_left = len(left)
        summary.wall_s = time.perf_counter() - started
        if left:
            raise LabelJobError(f"run {run_id}: {len(left)} chunks still pending after the job: {left[:20]}")
        totals = staging.progress(engine, settings, run_id)  # the whole run, earlier (killed) jobs included
        runs.update_run(engine, settings, run_id, status="labelled", label_finished_at=db.utcnow(),
                        prompt_tokens=totals["prompt_tokens"], completion_tokens=totals["completion_tokens"])
        return summary
    finally:
        engine.dispose()
