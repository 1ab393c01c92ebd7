"""gpt-oss-tiny figures: checkpoint size on disk, build time, vLLM load time, items/s through the
harmony path (structural tag, analysis + final), and how well-formed the output is.

Run: `python bench/gpt_oss_tiny_bench.py [--items 40] [--policies all|spam,...]` (best alone on
a shared machine). Prints one JSON object; `items_per_s` counts items x policies as labelled pairs
per second too (`pairs_per_s`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--policies", default="all", help="comma-separated policy names, or all")
    parser.add_argument("--rebuild", action="store_true", help="build the checkpoint again (time it)")
    args = parser.parse_args()

    from engine_throughput import load_items

    from safeguard_flow.models import local as local_model
    from safeguard_flow.engines.vllm_local import VLLMEngine
    from safeguard_flow.labelling.loop import LabelStats, label_items
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.settings import load_settings

    settings = load_settings(environ={}, model={"name": "gpt-oss-tiny"})
    started = time.monotonic()
    path = local_model.prepare(settings, "gpt-oss-tiny", force=args.rebuild)
    prepare_s = time.monotonic() - started
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    policies = [p.with_version(1) for p in load_policy_set(ROOT / "policies")]
    if args.policies != "all":
        wanted = set(args.policies.split(","))
        policies = [p for p in policies if p.name in wanted]
    items = load_items(args.items)

    started = time.monotonic()
    engine = VLLMEngine(settings)
    load_s = time.monotonic() - started
    try:
        label_items(engine, items[:2], policies[:1])  # warm-up: grammar compilation, first batch
        stats = LabelStats()
        started = time.monotonic()
        verdicts = label_items(engine, items, policies, stats=stats)
        seconds = time.monotonic() - started
    finally:
        engine.close()
    ok = [v for v in verdicts if v.parse_status == "ok"]
    statuses: dict[str, int] = {}
    for v in verdicts:
        statuses[v.parse_status] = statuses.get(v.parse_status, 0) + 1
    analysis_tokens = [v.completion_tokens for v in ok]
    print(json.dumps({
        "checkpoint": str(path),
        "size_on_disk_mb": round(size / 1e6, 1),
        "prepare_s" + ("" if args.rebuild else " (cached)"): round(prepare_s, 1),
        "vllm_load_s": round(load_s, 1),
        "items": len(items), "policies": len(policies), "verdicts": len(verdicts),
        "seconds": round(seconds, 1),
        "items_per_s": round(len(items) / seconds, 2),
        "pairs_per_s": round(len(verdicts) / seconds, 2),
        "parse_status": statuses,
        "with_analysis": sum(1 for v in ok if v.analysis and v.analysis.strip()),
        "completion_tokens_mean": round(sum(analysis_tokens) / max(len(analysis_tokens), 1), 1),
        "completion_tokens_max": max(analysis_tokens, default=0),
        "tokens_per_s": round((stats.prompt_tokens + stats.completion_tokens) / seconds, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
