"""Each labelling lever on and off, on the same items, in one process: what it buys on this machine.

    python bench/levers_bench.py                 # 32 items
    python bench/levers_bench.py --items 12      # the quick size

One in-process vLLM engine (the configured model), warmed up, prefix cache reset between runs:
  grouped      batched, requests grouped by policy so the policy text is a shared cached prefix
  interleaved  batched, requests alternating policy (the prefix cache still helps, less often)
  single       one request at a time (no batching)
  dedup        the same items with every text twice: identical texts are labelled once per chunk
  no-dedup     the same doubled items labelled as distinct texts (a suffix makes each unique)
  binary / json / json_rationale   one policy's text with each output format: tokens and items/s
Per run: seconds, items/s, items per CPU-second, prompt and completion tokens per item, requests.
The replica-affinity lever (8 policies x 2 replicas) needs Ray and two replicas: bench/affinity_bench.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from engine_throughput import cpu_seconds, load_items, report  # noqa: E402  (bench/ is not a package)


def run(name: str, engine, items, policies, *, single: bool = False, interleave: bool = False) -> dict:
    from safeguard_flow.labelling.loop import LabelStats, label_items

    engine.reset_prefix_cache()
    stats = LabelStats()
    cpu0, start = cpu_seconds(), time.perf_counter()
    if single:
        verdicts = [v for item in items for p in policies for v in label_items(engine, [item], [p], stats=stats)]
    elif interleave:  # one request per (item, policy) in item order: policies alternate in the batch
        verdicts = []
        for item in items:
            verdicts += label_items(engine, [item], policies, stats=stats)
    else:
        verdicts = label_items(engine, items, policies, stats=stats)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    n = len(items)
    row = {"lever": name, "items": n, "policies": len(policies), "requests": stats.requests,
           "seconds": round(seconds, 2), "items_per_s": round(n / seconds, 3),
           "items_per_cpu_s": round(n / cpu, 4) if cpu else None,
           "prompt_tokens_per_item": round(stats.prompt_tokens / n, 1),
           "completion_tokens_per_item": round(stats.completion_tokens / n, 1),
           "errors": sum(v.is_error for v in verdicts)}
    print(f"  {name:<15} {seconds:7.1f}s {row['items_per_s']:6.2f} items/s  {row['requests']:4d} requests  "
          f"{row['prompt_tokens_per_item']:7.1f} + {row['completion_tokens_per_item']:5.1f} tokens/item  "
          f"errors {row['errors']}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--policies", default="spam,self-harm")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.domain.policies import OutputFormat, load_policy_set
    from safeguard_flow.engines.base import LabelRequest
    from safeguard_flow.engines.vllm_local import VLLMEngine
    from safeguard_flow.settings import load_settings

    settings = load_settings(model={"kv_cache_gib": 1})
    wanted = args.policies.split(",")
    policies = [p.with_version(1) for p in load_policy_set(ROOT / "policies") if p.name in wanted]
    items = load_items(args.items)
    half = items[: max(1, args.items // 2)]
    doubled = [ContentItem.from_raw(f"{it.content_id}-{k}", it.text, it.source) for it in half for k in (0, 1)]
    distinct = [ContentItem.from_raw(f"{it.content_id}-{k}", f"{it.text} [{k}]", it.source)
                for it in half for k in (0, 1)]
    print(f"model={settings.model.name} items={len(items)} policies={[p.name for p in policies]} "
          f"cpus={os.cpu_count()}", flush=True)
    start = time.perf_counter()
    engine = VLLMEngine(settings)
    print(f"engine start: {time.perf_counter() - start:.1f}s", flush=True)
    engine.complete([LabelRequest(0, p, "warm-up") for p in policies])  # grammar compilation, allocator

    rows = [run("grouped", engine, items, policies),
            run("interleaved", engine, items, policies, interleave=True),
            run("single", engine, items, policies, single=True),
            run("dedup", engine, doubled, policies),
            run("no-dedup", engine, distinct, policies)]
    base = policies[0]
    for fmt in (OutputFormat.BINARY, OutputFormat.JSON, OutputFormat.JSON_RATIONALE):
        variant = dataclasses.replace(base, output_format=fmt, sha256="")
        rows.append(run(fmt.value, engine, items, [variant]))
    engine.close()

    by = {r["lever"]: r for r in rows}

    def ratio(a: str, b: str, key: str = "items_per_s") -> float | None:
        x, y = by[a].get(key), by[b].get(key)
        return round(x / y, 3) if x and y else None

    figures = {
        "grouped_vs_single": ratio("grouped", "single"),
        "grouped_vs_single_per_cpu_s": ratio("grouped", "single", "items_per_cpu_s"),
        "grouped_vs_interleaved": ratio("grouped", "interleaved"),
        "dedup_vs_no_dedup": ratio("dedup", "no-dedup"),
        "tokens_per_item_by_format": {f: by[f]["prompt_tokens_per_item"] + by[f]["completion_tokens_per_item"]
                                      for f in ("binary", "json", "json_rationale")},
        "completion_tokens_by_format": {f: by[f]["completion_tokens_per_item"] for f in ("binary", "json", "json_rationale")},
        "items_per_s_by_format": {f: by[f]["items_per_s"] for f in ("binary", "json", "json_rationale")},
    }
    report("levers", figures, rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
