"""run_label_job: label every pending chunk of a run on Ray replicas and stage the verdicts.

The same function runs in-process (the local default, tests, the CLI) and inside a submitted Ray job
(ray_jobs/label_job.py). Restarting it with the same run id is always safe: only chunks without a
done mark are labelled, and each chunk's verdicts are committed together with that mark.
"""

from __future__ import annotations

import logging
import time

from safeguard_flow.raylib.batch import cascade_stage
from safeguard_flow.raylib.batch.dataflow import label_chunks, progress_bar
from safeguard_flow.raylib.cluster.session import ray_session
from safeguard_flow.raylib.shipping.settings_env import resolve_paths
from safeguard_flow.raylib.batch.summary import LabelJobSummary
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)


class LabelJobError(RuntimeError):
    """The job ended with chunks still pending (the message says how many and which run)."""


def run_label_job(settings: Settings, run_id: str) -> LabelJobSummary:
    """Label the run's pending chunks; the run ends labelled. If this raises (or is interrupted) the
    run is marked failed with the reason; running it again resumes (a failed run included)."""
    from safeguard_flow.pipeline.run_rules import LABEL_DONE, failing, heartbeating, resume_if_failed, sigterm_raises
    from safeguard_flow.warehouse import db, policy_store, runs, staging
    from safeguard_flow.warehouse.runs import RunStatus

    started = time.perf_counter()
    settings = resolve_paths(settings)
    sql_engine = db.make_engine(settings)
    try:
        # A retried job resumes where the last one died.
        run = resume_if_failed(sql_engine, settings, runs.get_run(sql_engine, settings, run_id))
        summary = LabelJobSummary(run_id=run_id)
        if run.status in LABEL_DONE:
            log.info("run %s is %s: nothing to label", run_id, run.status.value)
            return summary
        policies = policy_store.get_policies(sql_engine, settings, run.policy_refs)
        chunks = staging.pending_chunks(sql_engine, settings, run_id)
        summary.chunks_pending = len(chunks)
        # An interrupt or SIGTERM (a stopped job) too: never left 'labelling'.
        attempt: int | None = None
        with sigterm_raises(), failing(sql_engine, settings, run_id, "label job", attempt=lambda: attempt):
            if chunks:
                log.info("run %s: %d pending chunks, %d policies (%s), %d replicas", run_id, len(chunks), len(policies),
                         ", ".join(f"{p.name} v{p.version}" for p in policies),
                         min(settings.ray.num_replicas, len(chunks)))
                # A resumed run keeps the start of its first label job.
                start_fields = {} if run.label_started_at else {"label_started_at": db.utcnow()}
                # A new fencing token: chunk writes of any older attempt at this run are refused from now on.
                attempt = runs.start_label_attempt(sql_engine, settings, run_id, model=settings.model.name,
                                                   engine=f"{settings.engine.kind} on ray",
                                                   **start_fields).label_attempt
                log.info("run %s: label attempt %d", run_id, attempt)
                with heartbeating(sql_engine, settings, run_id, attempt), ray_session(settings), \
                        progress_bar(len(chunks), run_id) as bar:
                    for row in label_chunks(settings, run_id, policies, chunks, attempt=attempt):
                        summary.add_row(row)
                        bar.set_postfix(items=summary.items, errors=summary.errors, refresh=False)
                        bar.update(1)
                summary.replicas = len(summary.replica_pids)
            else:
                log.info("run %s: no pending chunks, nothing to label", run_id)

            if attempt is not None:
                now = runs.get_run(sql_engine, settings, run_id)
                if now.label_attempt != attempt or now.status is not RunStatus.LABELLING:
                    raise staging.StaleWrite(f"run {run_id}: label attempt {attempt} was superseded (the run is "
                                             f"{now.status.value}, attempt {now.label_attempt}); its writes were refused")
            left = staging.pending_chunks(sql_engine, settings, run_id)
            summary.chunks_left = len(left)
            summary.wall_s = time.perf_counter() - started
            if left:
                raise LabelJobError(f"run {run_id}: {len(left)} chunks still pending after the job: {left[:20]}")
            summary.cascade = cascade_stage.finish(sql_engine, settings, run_id)
            staging.finish_labelling(sql_engine, settings, run_id)
        return summary
    finally:
        sql_engine.dispose()
