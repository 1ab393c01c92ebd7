"""Ray label job vs the bare in-process engine on the same items, and a kill-and-resume check.

    python bench/ray_job_bench.py                      # 200 demo items, 1 replica, policy spam
    python bench/ray_job_bench.py --items 200 --replicas 1 --chunk-size 25 --policies spam

Prints, for the same items: items/s of the bare engine (label_items in this process) and of the Ray
job submitted through the Jobs API to a local head (steady-state: first chunk start to last chunk
end; and end-to-end including job start-up and engine load), their ratio, tokens per item; then,
for a job stopped mid-run and submitted again with the same run id: items labelled twice and missing.
Everything runs on a throwaway SQLite warehouse and a local Ray head on --ray-port (stopped at the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

from safeguard_flow.warehouse.sample_data import POSTS_SOURCE, sample_texts

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)


def make_settings(args, home: Path):
    from safeguard_flow.settings import load_settings

    base = load_settings()  # model key / cache from SAFEGUARD_MODEL__* or SAFEGUARD_CONFIG
    return load_settings(environ={},
                         home=str(home), policies_dir=str(ROOT / "policies"),
                         warehouse={"url": f"sqlite:///{home / 'warehouse.db'}", "chunk_size": args.chunk_size},
                         sources=[POSTS_SOURCE],
                         model={**base.model.model_dump(), "max_tokens": args.max_tokens, "kv_cache_gib": 1},
                         ray={"num_replicas": args.replicas, "num_cpus_per_replica": 1.0 if args.replicas == 1 else 0.5,
                              "local_port": args.ray_port, "local_dashboard_port": args.dashboard_port,
                              "local_num_cpus": os.cpu_count() or 2, "poll_interval_s": 1.0})


def load_source(settings, texts: list[str], policy_names: list[str]) -> list:
    """Migrate, create the posts table and publish the chosen policies; returns the published policies."""
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse.sample_data import load_sample, posts_rows
    from safeguard_flow.warehouse import db, policy_store, schema

    schema.upgrade(settings)
    engine = db.make_engine(settings)
    load_sample(engine, posts_rows(texts, T0 + dt.timedelta(hours=1)))
    policies = [p for p in load_policy_set(settings.policies_dir) if p.name in set(policy_names)]
    if len(policies) != len(set(policy_names)):
        sys.exit(f"--policies: unknown policy in {policy_names}")
    published = [r.policy for r in policy_store.publish_policies(engine, settings, policies, author="bench")]
    engine.dispose()
    return published


def new_run(settings, policies, run_id: str) -> str:
    from safeguard_flow.warehouse import db, extract, runs

    engine = db.make_engine(settings)
    run_id = runs.create_run(engine, settings, "manual", policies, T0, T0 + dt.timedelta(days=1), run_id=run_id)
    extract.extract_interval(engine, settings, run_id, T0, T0 + dt.timedelta(days=1))
    engine.dispose()
    return run_id


def chunk_marks(settings, run_id: str) -> dict[int, tuple[bool, object, int]]:
    import sqlalchemy as sa

    from safeguard_flow.warehouse import db, schema

    engine = db.make_engine(settings)
    c = schema.tables(settings).run_chunks
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.c.chunk_no, c.c.done, c.c.finished_at, c.c["items"]).where(c.c.run_id == run_id)).all()
    engine.dispose()
    return {int(r.chunk_no): (bool(r.done), r.finished_at, int(r.items)) for r in rows}


def bare_engine(settings, policies, texts: list[str]) -> dict:
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.engines import build_engine
    from safeguard_flow.labelling.loop import LabelStats, label_items

    items = [ContentItem.from_raw(f"p{i:04d}", t, "posts") for i, t in enumerate(texts)]
    # As in the CPU replicas (ChunkLabeller): the engine core in this process, for a fair start-up figure.
    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    start = time.perf_counter()
    engine = build_engine(settings)
    load_s = time.perf_counter() - start
    stats = LabelStats()
    t = time.perf_counter()
    label_items(engine, items, policies, max_content_chars=settings.model.max_content_chars, stats=stats)
    label_s = time.perf_counter() - t
    engine.close()
    if saved is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved
    return {"items": len(items), "load_s": load_s, "label_s": label_s, "items_per_s": len(items) / label_s,
            "e2e_items_per_s": len(items) / (load_s + label_s),
            "tokens_per_item": (stats.prompt_tokens + stats.completion_tokens) / len(items),
            "prompt_tokens_per_item": stats.prompt_tokens / len(items),
            "completion_tokens_per_item": stats.completion_tokens / len(items), "errors": stats.errors}


def submit(hook, settings, run_id: str) -> str:
    from safeguard_flow.raylib.shipping.submission import RUN_ID_METADATA, label_job_entrypoint, label_job_runtime_env

    env, secrets = label_job_runtime_env(settings, local=True)
    uri = hook.put_job_secrets(secrets) if secrets else None
    return hook.submit_job(label_job_entrypoint(run_id, secrets_uri=uri), runtime_env=env,
                           metadata={RUN_ID_METADATA: run_id})


def ray_job(hook, settings, run_id: str) -> dict:
    from safeguard_flow.raylib.batch.summary import parse_marker

    start = time.perf_counter()
    job_id = submit(hook, settings, run_id)
    status = hook.wait_for_job(job_id, poll_interval=1.0, timeout=3600)
    wall = time.perf_counter() - start
    logs = hook.get_job_logs(job_id)
    if status != "SUCCEEDED":
        sys.exit(f"Ray job {job_id} {status}:\n" + "\n".join(logs.splitlines()[-30:]))
    summary = parse_marker(logs)
    summary["submit_to_done_s"] = wall
    return summary


def kill_and_resume(hook, settings, policies, n_items: int, kill_after_chunks: int) -> dict:
    from safeguard_flow.raylib.batch.summary import parse_marker

    run_id = new_run(settings, policies, "bench-kill-resume")
    total_chunks = len(chunk_marks(settings, run_id))
    job_id = submit(hook, settings, run_id)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        done = [c for c, (d, _, _) in chunk_marks(settings, run_id).items() if d]
        if len(done) >= kill_after_chunks or hook.get_job_status(job_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.5)
    hook.stop_job(job_id)
    while hook.get_job_status(job_id) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(0.5)
    before = chunk_marks(settings, run_id)
    staged_before = {c for c, (d, _, _) in before.items() if d}

    job2 = submit(hook, settings, run_id)
    status = hook.wait_for_job(job2, poll_interval=1.0, timeout=3600)
    summary2 = parse_marker(hook.get_job_logs(job2)) or {}
    after = chunk_marks(settings, run_id)
    relabelled = [c for c in staged_before if after[c][1] != before[c][1]]
    twice = sum(after[c][2] for c in relabelled)

    from safeguard_flow.warehouse import db, staging

    engine = db.make_engine(settings)
    frame = staging.staged_frame(engine, settings, run_id)
    engine.dispose()
    keys = list(zip(frame["content_id"], frame["policy"]))
    expected = {(f"p{i:04d}", p.name) for i in range(n_items) for p in policies}
    return {"status": status, "chunks": total_chunks, "staged_before_kill": len(staged_before),
            "labelled_by_resume": summary2.get("chunks_labelled"), "items_labelled_twice": twice,
            "duplicate_rows": len(keys) - len(set(keys)), "missing": len(expected - set(keys))}


def compare_ray_data_llm(settings, policies, texts: list[str], head) -> dict:
    """Same items, same replica count, in this process: our map_batches replica vs ray.data.llm's processor.

    Start-up = submit to first finished row; rate = rows after the first / time after the first.
    ray.data.llm gets the same prompts (chat template) and greedy sampling, without structured outputs.
    """
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from safeguard_flow.models.local import resolve_model
    from safeguard_flow.domain.prompts import chat_messages
    from safeguard_flow.raylib.cluster import local_head
    from safeguard_flow.raylib.batch.runner import run_label_job
    from safeguard_flow.raylib.shipping.settings_env import worker_env

    local_head.prepare_driver(head.gcs_address)
    ray.init(address=head.gcs_address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    try:
        run_id = new_run(settings, policies, "bench-compare")
        t = time.perf_counter()
        ours = run_label_job(settings, run_id)
        ours_wall = time.perf_counter() - t

        policy = policies[0]
        rows = [{"id": i, "messages": chat_messages(policy, text)} for i, text in enumerate(texts)]
        sampling = {"temperature": 0.0, "max_tokens": settings.model.max_tokens}  # built in the driver
        config = vLLMEngineProcessorConfig(
            model_source=resolve_model(settings),
            engine_kwargs={"max_model_len": settings.model.max_model_len, "enforce_eager": True,
                           "max_num_seqs": settings.model.max_num_seqs, "enable_prefix_caching": True},
            batch_size=settings.warehouse.chunk_size,
            concurrency=settings.ray.num_replicas,
            placement_group_config={"bundles": [{"CPU": 1}]},
            chat_template_stage={"num_cpus": 0.25}, tokenize_stage={"num_cpus": 0.25},
            detokenize_stage={"num_cpus": 0.25},
            # the same KV cache as ours, from the typed setting (vLLM's CPU build reads it from env)
            runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(settings.model.kv_cache_gib)}},
        )
        # Every stage small on CPU, or the 1-CPU default of the pre/post-process tasks starves the engine.
        small = {"num_cpus": 0.25}
        processor = build_processor(config, preprocess=lambda r: {**r, "sampling_params": sampling},
                                    postprocess=lambda r: {"id": r["id"], "text": r["generated_text"]},
                                    preprocess_map_kwargs=small, postprocess_map_kwargs=small)
        t = time.perf_counter()
        stamps = [time.perf_counter() - t for _ in processor(ray.data.from_items(rows)).iter_rows()]
        first, last = stamps[0], stamps[-1]
        first_batch = sum(s <= first + 0.5 for s in stamps)  # rows of the block that came out first
        return {
            "ours_startup_s": ours_wall - ours.label_s, "ours_engine_load_s": ours.engine_load_s,
            "ours_wall_s": ours_wall, "ours_items_per_s": ours.items_per_s,
            "rdllm_startup_s": first, "rdllm_wall_s": last,
            "rdllm_rows_per_s": (len(stamps) - first_batch) / (last - first) if last > first else float("nan"),
        }
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=25)
    parser.add_argument("--policies", default="spam", help="comma-separated policy names")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ray-port", type=int, default=18101)
    parser.add_argument("--dashboard-port", type=int, default=18165)
    parser.add_argument("--kill-after-chunks", type=int, default=2)
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the Ray job throughput run")
    parser.add_argument("--compare-ray-data-llm", action="store_true",
                        help="also run the items through ray.data.llm (first policy only) and our replica in-process")
    args = parser.parse_args()
    policy_names = [p.strip() for p in args.policies.split(",") if p.strip()]

    from safeguard_flow.airflow.ray_hook import RayHook
    from safeguard_flow.raylib.cluster import local_head

    home = Path(tempfile.mkdtemp(prefix="sg-raybench-"))
    settings = make_settings(args, home)
    try:
        texts = sample_texts(args.items)
    except ValueError as exc:
        sys.exit(f"--items: {exc}")
    policies = load_source(settings, texts, policy_names)
    print(f"bench: {len(texts)} items x {len(policies)} policies ({', '.join(p.name for p in policies)}), "
          f"model {settings.model.name}, {args.replicas} replica(s), chunk size {args.chunk_size}, {os.cpu_count()} cores",
          flush=True)

    bare = None if args.skip_bare else bare_engine(settings, policies, texts)
    if bare:
        print(f"bare engine: {bare['items_per_s']:.2f} items/s (label {bare['label_s']:.1f}s, load {bare['load_s']:.1f}s), "
              f"{bare['tokens_per_item']:.0f} tokens/item", flush=True)

    head = local_head.start_head(settings)
    try:
        hook = RayHook(ray_conn_id=None, settings=settings)
        job = None
        if not args.skip_throughput:
            job = ray_job(hook, settings, new_run(settings, policies, "bench-throughput"))
            print(f"ray job:     {job['items_per_s']:.2f} items/s (label {job['label_s']:.1f}s, engine load "
                  f"{job['engine_load_s']:.1f}s, submit-to-done {job['submit_to_done_s']:.1f}s)", flush=True)
        kr = None if args.skip_kill else kill_and_resume(hook, settings, policies, len(texts), args.kill_after_chunks)
        if kr:
            print(f"kill-and-resume: {kr}", flush=True)
        cmp = compare_ray_data_llm(settings, policies[:1], texts, head) if args.compare_ray_data_llm else None
    finally:
        local_head.stop_head(head, remove_temp_dir=True)

    print("\n== results ==")
    rows = []
    if bare:
        rows.append(("bare engine items/s (steady)", f"{bare['items_per_s']:.2f}"))
        rows.append(("bare engine items/s (incl. load)", f"{bare['e2e_items_per_s']:.2f}"))
    if job:
        rows.append(("ray job items/s (steady)", f"{job['items_per_s']:.2f}"))
        rows.append(("ray job items/s (submit to done)", f"{len(texts) / job['submit_to_done_s']:.2f}"))
        rows.append(("ray job tokens per item", f"{job['tokens_per_item']:.0f}"))
    if bare and job:
        rows.append(("ratio ray/bare (steady; target >= 0.8)", f"{job['items_per_s'] / bare['items_per_s']:.2f}"))
        rows.append(("ratio ray/bare (end to end)", f"{(len(texts) / job['submit_to_done_s']) / bare['e2e_items_per_s']:.2f}"))
    if bare:
        rows.append(("prompt / completion tokens per item", f"{bare['prompt_tokens_per_item']:.0f} / {bare['completion_tokens_per_item']:.1f}"))
    if kr:
        rows.append(("kill-and-resume: chunks (staged before kill / by resume)",
                     f"{kr['chunks']} ({kr['staged_before_kill']} / {kr['labelled_by_resume']})"))
        rows.append(("kill-and-resume: items labelled twice (target 0)", str(kr["items_labelled_twice"])))
        rows.append(("kill-and-resume: duplicate staged rows", str(kr["duplicate_rows"])))
        rows.append(("kill-and-resume: missing (item, policy)", str(kr["missing"])))
    if cmp:
        rows.append(("map_batches replica: start-up s / items/s / wall s",
                     f"{cmp['ours_startup_s']:.1f} / {cmp['ours_items_per_s']:.2f} / {cmp['ours_wall_s']:.1f}"))
        rows.append(("ray.data.llm processor: start-up s / rows/s / wall s",
                     f"{cmp['rdllm_startup_s']:.1f} / {cmp['rdllm_rows_per_s']:.2f} / {cmp['rdllm_wall_s']:.1f}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
