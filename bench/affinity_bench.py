"""Policy affinity across replicas against round robin: 8 policies x 2 replicas, the same items.

    python bench/affinity_bench.py                   # 32 demo items, 8 policies, 2 replicas
    python bench/affinity_bench.py --items 16        # the quick size

Two label jobs on one local Ray head (started here, stopped at the end), each a fresh run over the same
items on a throwaway SQLite warehouse, each with its own two replicas (the engine loads in both):
  round_robin  ray.policy_affinity off: chunks go to either replica, which labels all 8 policies
  affinity     ray.policy_affinity on: each replica labels its share of 4 policies, chunks pass both
Per job: items/s over the labelling (first chunk start to last chunk end) and over the whole job,
prompt tokens and how many the prefix caches served, and the policy prefix each replica holds in its
KV cache (tokens of the rendered policy prompts, times the model's KV bytes per token: derived).
Ratio: affinity_vs_round_robin = affinity items/s / round-robin items/s (labelling).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
for key, value in {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)

from engine_throughput import load_items, report  # noqa: E402  (bench/ is not a package)
from ray_job_bench import load_source, new_run  # noqa: E402

# The eight moderation policies (spam, the demo's ninth, stays out: the shape is 8 x 2).
POLICIES = "sexual,sexual/minors,hate,hate/threatening,harassment,self-harm,violence,violence/graphic"


def make_settings(args, home: Path):
    from safeguard_flow.settings import load_settings
    from safeguard_flow.warehouse.sample_data import POSTS_SOURCE

    base = load_settings()  # the model from SAFEGUARD_MODEL__* / SAFEGUARD_CONFIG, as the CLI reads it
    port = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000")) + 800
    return load_settings(environ={}, home=str(home), policies_dir=str(ROOT / "policies"),
                         warehouse={"url": f"sqlite:///{home / 'warehouse.db'}", "chunk_size": args.chunk_size},
                         sources=[POSTS_SOURCE],
                         model={**base.model.model_dump(), "kv_cache_gib": 1, "max_tokens": 48},
                         ray={"local_port": port, "local_dashboard_port": port + 65, "local_num_cpus": 2,
                              "num_replicas": args.replicas, "num_cpus_per_replica": 2 / args.replicas,
                              "poll_interval_s": 1.0})


def prefix_tokens(settings, policies) -> dict[str, int]:
    """Tokens of each policy's rendered prompt with empty content: the prefix a replica caches for it."""
    from transformers import AutoTokenizer

    from safeguard_flow.domain.prompts import chat_messages
    from safeguard_flow.models.local import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(settings))
    prompts = {p.name: tok.apply_chat_template(chat_messages(p, ""), tokenize=False, add_generation_prompt=True)
               for p in policies}
    return {name: len(tok(text, add_special_tokens=False)["input_ids"]) for name, text in prompts.items()}


def kv_bytes_per_token(settings) -> int:
    """K and V of every layer for one token, in the CPU engine's 16-bit KV cache."""
    from transformers import AutoConfig

    from safeguard_flow.models.local import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(settings))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2


def job(settings, policies, run_id: str, affinity: bool, prefix: dict[str, int], kv_bytes: int) -> dict:
    from safeguard_flow.raylib.batch.runner import run_label_job

    settings = settings.model_copy(deep=True)
    settings.ray.policy_affinity = affinity
    run_id = new_run(settings, policies, run_id)
    start = time.perf_counter()
    s = run_label_job(settings, run_id)
    wall = time.perf_counter() - start
    held = [sum(prefix[n] for n in names) for names in s.policy_shares.values()] or [sum(prefix.values())]
    row = {"mode": "affinity" if affinity else "round_robin", "items": s.items, "verdicts": s.verdicts,
           "errors": s.errors, "label_s": round(s.label_s, 2), "wall_s": round(wall, 2),
           "items_per_s": round(s.items_per_s, 3), "e2e_items_per_s": round(s.items / wall, 3),
           "engine_load_s": round(s.engine_load_s, 1), "requests": s.requests, "prompt_tokens": s.prompt_tokens,
           "cached_prompt_tokens": s.cached_prompt_tokens,
           "cached_share": round(s.cached_prompt_tokens / s.prompt_tokens, 3) if s.prompt_tokens else None,
           "prefix_tokens_per_replica": max(held), "prefix_kv_mb_per_replica": round(max(held) * kv_bytes / 2**20, 1),
           "shares": s.policy_shares}
    print(f"  {row['mode']:<12} {row['label_s']:7.1f}s labelling, {row['items_per_s']:5.2f} items/s "
          f"({row['e2e_items_per_s']:.2f} with start-up), {s.cached_prompt_tokens}/{s.prompt_tokens} prompt tokens "
          f"cached, policy prefix per replica {row['prefix_tokens_per_replica']} tokens "
          f"({row['prefix_kv_mb_per_replica']} MB of KV), errors {s.errors}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=4)
    ap.add_argument("--policies", default=POLICIES)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import ray

    from safeguard_flow.raylib.cluster import local_head
    from safeguard_flow.raylib.shipping.settings_env import worker_env

    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(args, Path(tmp))
        texts = [it.text for it in load_items(args.items)]
        policies = load_source(settings, texts, args.policies.split(","))
        prefix, kv_bytes = prefix_tokens(settings, policies), kv_bytes_per_token(settings)
        print(f"model={settings.model.name} items={len(texts)} policies={len(policies)} replicas={args.replicas} "
              f"chunk_size={args.chunk_size} cpus={os.cpu_count()}", flush=True)
        head = local_head.start_head(settings)
        try:
            local_head.prepare_driver(head.gcs_address)
            ray.init(address=head.gcs_address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
            rows = [job(settings, policies, "bench-round-robin", False, prefix, kv_bytes),
                    job(settings, policies, "bench-affinity", True, prefix, kv_bytes)]
        finally:
            ray.shutdown()
            local_head.stop_head(head, remove_temp_dir=True)
    rr, aff = rows
    figures = {
        "affinity_vs_round_robin": round(aff["items_per_s"] / rr["items_per_s"], 3) if rr["items_per_s"] else None,
        "affinity_vs_round_robin_e2e": round(aff["e2e_items_per_s"] / rr["e2e_items_per_s"], 3),
        "cached_share": {r["mode"]: r["cached_share"] for r in rows},
        "prefix_tokens_per_replica": {r["mode"]: r["prefix_tokens_per_replica"] for r in rows},
    }
    report("policy affinity", figures, rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
