"""The label job for real: local Ray head, Ray Data replicas holding the vLLM CPU engine with the small
model, SQLite warehouse. Fault tolerance: bad rows, a killed replica, a killed and resubmitted job."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from tests.ray.label_helpers import ROOT, SOURCE, assert_complete_once, chunk_marks, make_run, staged

from safeguard_flow.warehouse.sample_data import sample_texts

pytestmark = pytest.mark.slow


@pytest.fixture
def label_settings(settings_factory, model_settings, prepared_model, ray_head, ray_settings):
    """Settings for a labelling run on the session's head; one small replica unless overridden."""

    def make(db_url: str | None = None, engine: dict | None = None, **ray_overrides):
        return settings_factory(
            db_url,
            sources=[SOURCE],
            warehouse={"chunk_size": 4},
            model={**model_settings.model.model_dump(), "max_model_len": 2048, "max_tokens": 48},
            engine=engine or {},
            ray={**ray_settings.ray.model_dump(), "address": ray_head.gcs_address, "num_replicas": 1,
                 "num_cpus_per_replica": 1.0, "max_restarts": 3, **ray_overrides},
        )
    return make


def _spam(small_policies):
    return [p for p in small_policies if p.name == "spam"]


def _replica_pids(dashboard_url: str) -> list[int]:
    from ray.util.state import list_actors

    # Name the head: other test packages may keep their own Ray head running (auto-detection refuses).
    actors = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                         raise_on_missing_output=False)
    return [a.pid for a in actors if "ChunkLabeller" in (a.repr_name or "") + (a.class_name or "")]


def test_bad_rows_and_a_killed_replica_do_not_stop_the_job(label_settings, small_policies, ray_driver, ray_head):
    """In-process job (the local default): rows the engine rejects become error verdicts and the job goes
    on; the replica is SIGKILLed mid-run, Ray restarts it, and every item ends up staged exactly once."""
    import psutil

    from safeguard_flow.raylib.batch.runner import run_label_job

    settings = label_settings()
    long_text = "Buy cheap watches at http://example.com now! " * 300  # ~3k tokens > max_model_len 2048
    texts = sample_texts(13) + [long_text, b"\xff\xfe not utf-8 \xc3", None]
    run_id = make_run(settings, small_policies, texts)
    n_chunks = len(chunk_marks(settings, run_id))
    assert n_chunks >= 3
    result: dict = {}

    def run():
        try:
            result["summary"] = run_label_job(settings, run_id)
        except BaseException as exc:  # surfaced by the assertions below
            result["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(d for d, _ in chunk_marks(settings, run_id).values()):
        assert runner.is_alive(), result
        time.sleep(0.2)
    pids = _replica_pids(ray_head.dashboard_url)
    assert len(pids) == 1, f"expected one live replica, found {pids}"
    victim = psutil.Process(pids[0])
    engine_children = victim.children(recursive=True)
    victim.send_signal(signal.SIGKILL)  # the replica dies mid-run, its vLLM engine with it

    runner.join(300)
    assert not runner.is_alive(), "the job did not finish after its replica was killed"
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary.chunks_left == 0 and summary.chunks_labelled + summary.chunks_skipped == n_chunks
    assert pids[0] in summary.replica_pids and len(summary.replica_pids) >= 2, \
        "chunks after the kill must come from a restarted replica"
    assert summary.items == len(texts) and summary.verdicts == len(texts) * len(small_policies)
    assert_complete_once(settings, run_id, len(texts), small_policies)  # 0 labelled twice, 0 missing

    frame = staged(settings, run_id).set_index(["content_id", "policy"])
    long_id, bytes_id, null_id = "p0013", "p0014", "p0015"
    # Longer than the model's context: labelled in windows whose verdicts combine, not failed.
    # (the windows themselves: tests/engines/test_vllm_engine.py, tests/engines/test_poison_input.py)
    assert set(frame.loc[long_id]["parse_status"]) == {"ok"} and set(frame.loc[long_id]["label"]) <= {0, 1}
    assert set(frame.loc[bytes_id]["parse_status"]) == {"input_error"}
    assert set(frame.loc[null_id]["parse_status"]) == {"input_error"}
    good = frame.drop(index=[long_id, bytes_id, null_id], level=0)
    assert (good["parse_status"] != "engine_error").all() and (good["label"].notna().mean() > 0.5)
    assert summary.prompt_tokens > 0 and summary.items_per_s > 0
    for child in engine_children:  # nothing of the dead replica may outlive it
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, f"{child} outlived its replica"

    from safeguard_flow.warehouse import db, runs

    wh = db.make_engine(settings)
    run = runs.get_run(wh, settings, run_id)
    wh.dispose()
    assert run.status == "labelled" and run.label_finished_at >= run.label_started_at
    assert run.prompt_tokens >= summary.prompt_tokens > 0  # staged totals, whichever replica staged each chunk

    again = run_label_job(settings, run_id)  # a finished run: nothing pending, nothing relabelled
    assert again.chunks_pending == 0 and again.items == 0


def test_policy_affinity_splits_the_policies_across_replicas(label_settings, small_policies, ray_driver, vllm_server):
    """ray.policy_affinity: two replicas, each labelling only its share of three policies; every chunk
    passes both and is staged once with all of its verdicts, hostile and foreign-language posts too (long
    posts on the Ray path: the killed-replica test above). The
    replicas label through the session's vLLM server (the in-process engine is the test above's)."""
    from tests.engines.hostile_posts import HOSTILE

    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.raylib.batch.runner import run_label_job

    hate = [p.with_version(1) for p in load_policy_set(ROOT / "policies") if p.name == "hate"]
    policies = list(small_policies) + hate
    settings = label_settings(engine={"kind": "openai", "base_url": vllm_server, "concurrency": 4},
                              num_replicas=2, num_cpus_per_replica=0.5, policy_affinity=True)
    texts = sample_texts(3) + HOSTILE + ["Ich hasse alle Nachbarn, sie sollten verschwinden."]
    run_id = make_run(settings, policies, texts)

    summary = run_label_job(settings, run_id)

    assert summary.chunks_left == 0 and summary.items == len(texts)
    assert summary.verdicts == len(texts) * len(policies)
    shares = list(summary.policy_shares.values())
    assert len(shares) == 2, summary.policy_shares  # two replicas, each with a share of its own
    assert sorted(n for share in shares for n in share) == sorted(p.name for p in policies)
    assert_complete_once(settings, run_id, len(texts), policies)  # 0 labelled twice, 0 missing
    frame = staged(settings, run_id)
    assert (frame["parse_status"] != "engine_error").all(), frame[frame["parse_status"] == "engine_error"]


@pytest.mark.postgres
def test_a_killed_job_resubmitted_with_the_same_run_id_skips_staged_chunks(label_settings, small_policies, ray_conn_env,
                                                                          pg_url, vllm_server):
    """Through Airflow's operator and the Jobs API, on PostgreSQL (the other test runs on SQLite). The
    replicas label through the session's vLLM server: what is under test is the job's resume, and each
    job would otherwise load its own in-process engine (the test above covers that engine)."""
    from airflow.sdk.exceptions import TaskDeferred

    from safeguard_flow.airflow.ray_operator import RayLabelJobOperator

    settings = label_settings(pg_url, engine={"kind": "openai", "base_url": vllm_server, "concurrency": 2})
    policies = _spam(small_policies)
    texts = sample_texts(16)
    run_id = make_run(settings, policies, texts)
    n_chunks = len(chunk_marks(settings, run_id))
    assert n_chunks >= 3

    first = RayLabelJobOperator(task_id="label", run_id=run_id, settings=settings, ray_conn_id=ray_conn_env,
                                poll_interval=0.5)
    with pytest.raises(TaskDeferred) as deferred:
        first.execute({})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if sum(d for d, _ in chunk_marks(settings, run_id).values()) >= 1:
            break
        assert first.hook.get_job_status(first.job_id) in ("PENDING", "RUNNING"), first.hook.get_job_logs(first.job_id)
        time.sleep(0.2)
    import asyncio

    asyncio.run(deferred.value.trigger.on_kill())  # the task is killed: the job is stopped mid-run
    while first.hook.get_job_status(first.job_id) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        time.sleep(0.2)
    assert first.hook.get_job_status(first.job_id) == "STOPPED"
    before = chunk_marks(settings, run_id)
    staged_before = {c for c, (done, _) in before.items() if done}
    assert 1 <= len(staged_before) < n_chunks, "the kill should land mid-run"

    second = RayLabelJobOperator(task_id="label", run_id=run_id, settings=settings, ray_conn_id=ray_conn_env,
                                 poll_interval=0.5)
    with pytest.raises(TaskDeferred) as deferred2:
        second.execute({})
    assert second.job_id != first.job_id
    event = None

    async def follow():
        async for ev in deferred2.value.trigger.run():
            return ev
    event = asyncio.run(follow())
    summary = second.execute_complete({}, event.payload)

    after = chunk_marks(settings, run_id)
    relabelled = [c for c in staged_before if after[c][1] != before[c][1]]
    assert relabelled == [], f"chunks labelled twice: {relabelled}"
    assert summary["chunks_labelled"] + summary["chunks_skipped"] == n_chunks - len(staged_before)
    assert summary["chunks_left"] == 0
    assert_complete_once(settings, run_id, len(texts), policies)  # 0 labelled twice, 0 missing
