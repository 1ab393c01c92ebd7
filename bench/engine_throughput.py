"""Engine throughput: the same 64 items x 2 policies through the in-process vLLM engine, three ways.

  (a) batched, grouped by policy, prefix caching on   (how labelling.label_items drives the engine)
  (b) one request at a time                            (same engine, prefix cache reset first)
  (c) batched, grouped by policy, prefix caching off   (a second engine; skip with --variants a,b)

Prints items/s and tokens/s for each and the ratios. Run: `python bench/engine_throughput.py`
(env SAFEGUARD_MODEL__NAME picks the model; default the small local model).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_items(n: int):
    from safeguard_flow.domain.content import ContentItem

    sample = ROOT / "data" / "sample-posts.jsonl"
    items = []
    if sample.is_file():
        with open(sample, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                items.append(ContentItem.from_raw(row["id"], row["text"]))
                if len(items) == n:
                    break
    # Top up with generated text if the demo data is missing or short.
    words = "buy cheap now click offer friend lunch tomorrow sad tired happy exam weather".split()
    i = 0
    while len(items) < n:
        text = " ".join(words[(i * 7 + k) % len(words)] for k in range(12 + i % 20))
        items.append(ContentItem.from_raw(f"gen-{i}", f"{text} #{i}"))
        i += 1
    return items


class CountCached:
    """Wraps an engine to sum the prompt tokens vLLM served from its prefix cache."""

    def __init__(self, engine):
        self.engine, self.model_name, self.cached = engine, engine.model_name, 0

    def complete(self, requests):
        results = self.engine.complete(requests)
        self.cached += sum(r.cached_prompt_tokens for r in results)
        return results


def cpu_seconds() -> float:
    """CPU time of this process and its children (vLLM's engine core and worker): a figure that
    other load on a shared machine disturbs far less than wall-clock time."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def report(title: str, figures: dict, runs: list[dict], json_path: str | None) -> None:
    """Print a benchmark's figures under its title; write them with its runs to `json_path` (the suite reads it)."""
    print(f"\n== {title} ==")
    for key, value in figures.items():
        print(f"  {key:<30} {value}")
    if json_path:
        Path(json_path).write_text(json.dumps({"runs": runs, "figures": figures}, indent=2))


def measure(name: str, fn, engine, items, n_policies: int) -> dict:
    from safeguard_flow.labelling.loop import LabelStats

    stats = LabelStats()
    counted = CountCached(engine)
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    verdicts = fn(counted, stats)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    tokens = stats.prompt_tokens + stats.completion_tokens
    row = {
        "mode": name,
        "items": len(items),
        "requests": stats.requests,
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "requests_per_s": stats.requests / seconds,
        "tokens_per_s": tokens / seconds,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "cached_prompt_tokens": counted.cached,
        "cpu_seconds": cpu,
        "items_per_cpu_s": len(items) / cpu if cpu else 0.0,
        "load_avg_1m": os.getloadavg()[0],
        "errors": sum(v.is_error for v in verdicts),
    }
    assert len(verdicts) == len(items) * n_policies
    print(f"  {name:<34} {seconds:7.1f}s  {row['items_per_s']:6.2f} items/s  {row['requests_per_s']:6.2f} req/s  "
          f"{row['tokens_per_s']:8.0f} tok/s  cpu {cpu:6.1f}s ({row['items_per_cpu_s']:.2f} items/cpu-s)  "
          f"cached {counted.cached}/{stats.prompt_tokens} prompt tok  errors={row['errors']}  "
          f"load {row['load_avg_1m']:.1f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--policies", default="spam,self-harm")
    parser.add_argument("--variants", default="a,b,c", help="which of a,b,c to run")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--engine-kwargs", default="{}", help="JSON of extra vllm.LLM arguments, e.g. '{\"block_size\": 32}'")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from safeguard_flow.engines.base import LabelRequest
    from safeguard_flow.engines.vllm_local import VLLMEngine
    from safeguard_flow.labelling.loop import label_items
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.settings import load_settings

    settings = load_settings(model={"max_model_len": args.max_model_len, "kv_cache_gib": 1,
                                    "engine_kwargs": json.loads(args.engine_kwargs)})
    wanted = args.policies.split(",")
    policies = [p.with_version(1) for p in load_policy_set(ROOT / "policies") if p.name in wanted]
    items = load_items(args.items)
    variants = set(args.variants.split(","))
    print(f"model={settings.model.name} items={len(items)} policies={[p.name for p in policies]} "
          f"max_model_len={args.max_model_len} cpus={os.cpu_count()}", flush=True)

    def warm_up(engine):  # first call pays one-off costs (grammar compilation, allocator)
        engine.complete([LabelRequest(0, p, "warm-up") for p in policies])
        engine.reset_prefix_cache()

    rows = []
    if variants & {"a", "b"}:
        start = time.perf_counter()
        engine = VLLMEngine(settings)
        print(f"engine start: {time.perf_counter() - start:.1f}s", flush=True)
        warm_up(engine)
        if "a" in variants:
            rows.append(measure("(a) batched+grouped, prefix cache",
                                lambda eng, st: label_items(eng, items, policies, stats=st), engine, items, len(policies)))
        if "b" in variants:
            engine.reset_prefix_cache()

            def one_at_a_time(eng, st):
                out = []
                for item in items:  # label_items with a single item sends one request per policy call
                    for p in policies:
                        out += label_items(eng, [item], [p], stats=st)
                return out

            rows.append(measure("(b) one request at a time", one_at_a_time, engine, items, len(policies)))
        engine.close()
    if "c" in variants:
        engine = VLLMEngine(settings, enable_prefix_caching=False)
        warm_up(engine)
        rows.append(measure("(c) batched+grouped, no prefix cache",
                            lambda eng, st: label_items(eng, items, policies, stats=st), engine, items, len(policies)))
        engine.close()

    by = {r["mode"][:3]: r for r in rows}
    for other, what in (("(b)", "batching"), ("(c)", "prefix caching")):
        if "(a)" in by and other in by:
            a, o = by["(a)"], by[other]
            print(f"ratio (a)/{other} ({what}): {a['items_per_s'] / o['items_per_s']:.2f}x items/s, "
                  f"{a['items_per_cpu_s'] / o['items_per_cpu_s']:.2f}x items per CPU-second")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
