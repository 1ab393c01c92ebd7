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
    from safeguard_flow.content import ContentItem

    sample = ROOT / "data" / "moderation-sample.jsonl"
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


def measure(name: str, fn, engine, items, n_policies: int) -> dict:
    from safeguard_flow.labelling import LabelStats

    stats = LabelStats()
    counted = CountCached(engine)
    start = time.perf_counter()
    verdicts = fn(counted, stats)
    seconds = time.perf_counter() - start
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
        "errors": sum(v.is_error for v in verdicts),
    }
    assert len(verdicts) == len(items) * n_policies
    print(f"  {name:<34} {seconds:7.1f}s  {row['items_per_s']:6.2f} items/s  {row['requests_per_s']:6.2f} req/s  "
          f"{row['tokens_per_s']:8.0f} tok/s  cached {counted.cached}/{stats.prompt_tokens} prompt tok  "
          f"errors={row['errors']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--policies", default="spam,self-harm")
    parser.add_argument("--variants", default="a,b,c", help="which of a,b,c to run")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    from safeguard_flow.engines.base import LabelRequest
    from safeguard_flow.engines.vllm_local import VLLMEngine
    from safeguard_flow.labelling import label_items
    from safeguard_flow.policies import load_policy_set
    from safeguard_flow.settings import load_settings

    settings = load_settings(model={"max_model_len": args.max_model_len, "kv_cache_gib": 1})
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
    if "(a)" in by and "(b)" in by:
        print(f"ratio (a)/(b) items/s: {by['(a)']['items_per_s'] / by['(b)']['items_per_s']:.2f}x")
    if "(a)" in by and "(c)" in by:
        print(f"ratio (a)/(c) items/s: {by['(a)']['items_per_s'] / by['(c)']['items_per_s']:.2f}x "
              f"(prefix caching)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
