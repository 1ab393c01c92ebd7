"""The whole pipeline against the bare engine on the same items, and a nothing-new rerun.

    python bench/pipeline_bench.py                   # 64 demo items x 2 policies
    python bench/pipeline_bench.py --items 16        # the quick size

Three measurements on one throwaway SQLite warehouse holding the demo's posts:
  bare    the in-process vLLM engine alone (vllm.LLM behind labelling.label_items): engine load +
          labelling of the items, in this process;
  first   the pipeline as `safeguard-flow run` drives it: extract -> label (worker process, local
          Ray, the label job's replica) -> validate (Great Expectations) -> publish;
  rerun   the same interval again: the run is published, so nothing is labelled, no engine and no
          Ray start (pipeline time, in this process).
Ratios: e2e_vs_bare = first items/s / bare items/s (both including the engine's load);
e2e_vs_bare_steady = the label job's own items/s (first chunk to last) / bare labelling items/s;
rerun_vs_first = rerun seconds / first seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
for key, value in {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray_job_bench import T0, bare_engine, load_source  # noqa: E402  (bench/ is not a package)


def make_settings(args, home: Path):
    from safeguard_flow.settings import load_settings
    from safeguard_flow.warehouse.sample_data import POSTS_SOURCE

    base = load_settings()  # the model from SAFEGUARD_MODEL__* / SAFEGUARD_CONFIG, as the CLI reads it
    port = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000")) + 700
    return load_settings(environ={}, home=str(home), policies_dir=str(ROOT / "policies"),
                         warehouse={"url": f"sqlite:///{home / 'warehouse.db'}", "chunk_size": args.chunk_size},
                         sources=[POSTS_SOURCE],
                         # Speed, not quality: the 0.5B stand-in labels every sample post spam at 64 items,
                         # which the default gate (max 80% positives) quarantines, and a rerun relabels it.
                         quality={"max_positive_rate": 1.0},
                         model={**base.model.model_dump(), "kv_cache_gib": 1},
                         ray={"local_port": port, "local_dashboard_port": port + 65, "local_num_cpus": os.cpu_count() or 2})


def pipeline_run(settings) -> tuple[float, dict, object]:
    from safeguard_flow import pipeline
    from safeguard_flow.warehouse import db

    engine = db.make_engine(settings)
    start = time.perf_counter()
    run = pipeline.start_interval_run(engine, settings, T0, T0 + dt.timedelta(days=1), kind="nightly")
    summary: dict = {}
    if pipeline.needs_work(run):
        log = Path(settings.home) / "logs" / "bench-run.log"  # the Ray and vLLM output, as the CLI keeps it
        log.parent.mkdir(parents=True, exist_ok=True)
        result = pipeline.finish(engine, settings, run.id, log_file=log)
        summary = result.labelled.summary if result.labelled else {}
        run = result.run
    wall = time.perf_counter() - start
    engine.dispose()
    return wall, summary, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--policies", default="spam,self-harm")
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    from safeguard_flow.warehouse.sample_data import sample_texts

    texts = sample_texts(args.items)
    with tempfile.TemporaryDirectory(prefix="sg-pipe-bench-") as tmp:
        home = Path(tmp)
        settings = make_settings(args, home)
        policies = load_source(settings, texts, args.policies.split(","))
        print(f"bench: {len(texts)} items x {len(policies)} policies, model {settings.model.name}", flush=True)
        bare = bare_engine(settings, policies, texts)
        print(f"bare engine: load {bare['load_s']:.1f} s + label {bare['label_s']:.1f} s", flush=True)
        first_s, summary, run = pipeline_run(settings)
        print(f"pipeline:    {first_s:.1f} s (label job {summary.get('wall_s', 0):.1f} s), run {run.status}", flush=True)
        rerun_s, rerun_summary, rerun = pipeline_run(settings)
        print(f"rerun:       {rerun_s:.3f} s, labelled {rerun_summary.get('chunks_labelled', 0)} chunk(s)", flush=True)
    n = len(texts)
    bare_rate = n / (bare["load_s"] + bare["label_s"])
    steady = summary.get("items_per_s") or 0.0
    result = {
        "items": n, "policies": len(policies), "bare_load_s": round(bare["load_s"], 2),
        "bare_label_s": round(bare["label_s"], 2), "first_s": round(first_s, 2), "rerun_s": round(rerun_s, 4),
        "label_job_wall_s": summary.get("wall_s"), "label_job_items_per_s": steady,
        "e2e_vs_bare": round((n / first_s) / bare_rate, 3),
        "e2e_vs_bare_steady": round(steady / bare["items_per_s"], 3) if steady else None,
        "rerun_vs_first": round(rerun_s / first_s, 4),
        "rerun_model_calls": rerun_summary.get("verdicts", 0), "status": str(run.status),
    }
    print("\n== pipeline vs bare engine ==")
    for key, value in result.items():
        print(f"  {key:<22} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
