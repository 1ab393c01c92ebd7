"""The online path on loopback: the Ray Serve app (1 replica, the small local model) under load.

Prints, against a fresh local Ray head:
  - req/s, p50 and p99 latency and errors at concurrency 4 / 16 / 64 (requests as the
    project's OpenAIEngine sends them: sample posts x policies, constrained answers; a refused request
    is resent after its Retry-After, as the OpenAIEngine does, and counted as retried);
  - labelling through Serve (OpenAIEngine, label_items) vs the in-process vLLM engine on the same
    items and policies (items/s and their ratio), with the prefix-cache hits each reports;
  - an overload burst (default 200 requests at concurrency 256, 10 s client timeout): how many were
    answered, refused with a retryable 429/503 (and how fast), timed out or failed otherwise.

Run (heavy: a Ray head and vLLM engines): `timeout 2400 python bench/serve_bench.py` (alone on the machine).
Ports default to SAFEGUARD_TEST_PORT_BASE + 300.. (GCS), + 365 (dashboard), + 380 (Serve HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000"))


def make_settings(args, home: Path):
    from safeguard_flow.settings import load_settings

    # The SAFEGUARD_TEST_* port variables of a test shell are not settings.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEGUARD_TEST_")}
    return load_settings(
        environ=environ, home=str(home), policies_dir=str(ROOT / "policies"),
        model={"max_model_len": args.max_model_len, "max_tokens": args.max_tokens, "kv_cache_gib": 1},
        engine={"kind": "openai", "base_url": f"http://127.0.0.1:{args.serve_port}/v1",
                "concurrency": args.label_concurrency, "timeout_s": 300},
        ray={"local_port": args.ray_port, "local_dashboard_port": args.dashboard_port, "local_num_cpus": 2,
             "auth_mode": "disabled", "serve_port": args.serve_port, "serve_min_replicas": 1, "serve_max_replicas": 1,
             **{k: v for k, v in {"serve_max_ongoing_requests": args.max_ongoing,
                                  "serve_max_queued_requests": args.max_queued,
                                  "serve_request_timeout_s": args.request_timeout}.items() if v is not None}},
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def burst(url: str, bodies: list[dict], concurrency: int, timeout_s: float, retries: int = 0) -> dict:
    """Send every body with at most `concurrency` in flight; outcome and latency of each. With
    `retries`, a refused request (429/503) is sent again after its Retry-After, as the openai SDK
    does; its latency counts from the first attempt."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    outcomes: list[tuple[str, float, dict]] = []
    retried = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        async def one(body: dict) -> None:
            nonlocal retried
            start = None
            for attempt in range(retries + 1):
                async with sem:
                    start = start or time.perf_counter()  # from the first send, not the wait for a slot
                    try:
                        # The route OpenAIEngine uses: token-id prompts for chat-template models.
                        resp = await client.post("/completions" if "prompt" in body else "/chat/completions", json=body)
                        kind = str(resp.status_code)
                        usage = resp.json().get("usage") or {} if resp.status_code == 200 else {}
                        extra = {"retry_after": resp.headers.get("retry-after"),
                                 "cached": ((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                                 "prompt": usage.get("prompt_tokens") or 0}
                    except httpx.TimeoutException:
                        kind, extra = "timeout", {}
                    except httpx.HTTPError as exc:
                        kind, extra = type(exc).__name__, {}
                if kind not in ("429", "503") or attempt == retries:
                    break
                retried += 1
                await asyncio.sleep(float(extra.get("retry_after") or 1))
            outcomes.append((kind, time.perf_counter() - start, extra))

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    ok = [lat for kind, lat, _ in outcomes if kind == "200"]
    refused = [lat for kind, lat, _ in outcomes if kind in ("429", "503")]
    counts: dict[str, int] = {}
    for kind, _, _ in outcomes:
        counts[kind] = counts.get(kind, 0) + 1
    return {
        "requests": len(bodies), "concurrency": concurrency, "wall_s": wall, "ok": len(ok),
        "ok_per_s": len(ok) / wall if wall else 0.0,
        "p50_s": percentile(ok, 0.5), "p99_s": percentile(ok, 0.99),
        "refused": len(refused), "refused_p99_s": percentile(refused, 0.99),
        "refused_max_s": max(refused) if refused else float("nan"),
        "retry_after": sorted({str(e.get("retry_after")) for k, _, e in outcomes if k in ("429", "503")}),
        "timeouts": counts.get("timeout", 0), "counts": counts,
        "cached_tokens": sum(e.get("cached", 0) for k, _, e in outcomes if k == "200"), "retried": retried,
        "prompt_tokens": sum(e.get("prompt", 0) for k, _, e in outcomes if k == "200"),
    }


def label(engine, items, policies) -> dict:
    from safeguard_flow.labelling.loop import LabelStats, label_items

    cached = 0
    inner = engine.complete

    def counting(requests):
        nonlocal cached
        out = inner(requests)
        cached += sum(c.cached_prompt_tokens for c in out)
        return out

    engine.complete = counting
    stats = LabelStats()
    start = time.perf_counter()
    try:
        verdicts = label_items(engine, items, policies, stats=stats)
    finally:
        del engine.complete  # the class's method again
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "items_per_s": len(items) / seconds, "verdicts": len(verdicts),
            "errors": sum(v.is_error for v in verdicts), "prompt_tokens": stats.prompt_tokens, "cached": cached}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="sample posts per labelling run")
    parser.add_argument("--policies", default="spam,self-harm")
    parser.add_argument("--concurrency", default="4,16,64")
    parser.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    parser.add_argument("--label-concurrency", type=int, default=32,
                        help="engine.concurrency of the OpenAIEngine (32: what one CPU replica admits, 16 running "
                             "+ 16 queued, so nothing is refused; 64 over-drives it)")
    parser.add_argument("--retries", type=int, default=300,
                        help="load levels: resend a refused request after its Retry-After up to this often "
                             "(default: until the 300 s request timeout, as the project's OpenAIEngine does)")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-concurrency", type=int, default=256)
    parser.add_argument("--burst-timeout", type=float, default=10.0)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--ray-port", type=int, default=BASE + 300)
    parser.add_argument("--dashboard-port", type=int, default=BASE + 365)
    parser.add_argument("--serve-port", type=int, default=BASE + 380)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--skip-label", action="store_true", help="no labelling runs (only the load levels and the burst)")
    parser.add_argument("--max-ongoing", type=int, default=None, help="ray.serve_max_ongoing_requests (default: settings)")
    parser.add_argument("--max-queued", type=int, default=None, help="ray.serve_max_queued_requests (default: settings)")
    parser.add_argument("--request-timeout", type=float, default=None, help="ray.serve_request_timeout_s (default: settings)")
    args = parser.parse_args()

    # Two engines at once here (in-process and the replica): 1 GiB of KV cache each is plenty for 64
    # short sequences.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    from safeguard_flow.domain.content import ContentItem
    from safeguard_flow.engines.openai_http import OpenAIEngine
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.raylib.cluster import local_head
    from safeguard_flow.raylib.serve import app as serve
    from safeguard_flow.raylib.shipping.settings_env import worker_env
    from safeguard_flow.warehouse.sample_data import sample_texts

    home = Path(tempfile.mkdtemp(prefix="sg-servebench-"))
    settings = make_settings(args, home)
    wanted = args.policies.split(",")
    policies = [p.with_version(1) for p in load_policy_set(ROOT / "policies") if p.name in wanted]
    texts = sample_texts(300)
    items = [ContentItem.from_raw(f"b{i:03d}", t, "posts") for i, t in enumerate(texts[:args.items])]
    print(f"serve bench: model {settings.model.name}, {len(items)} items x {len(policies)} policies, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)

    results: dict[str, object] = {}
    # The in-process engine stays up beside the Serve replica (idle while the other works) so the two
    # are measured in turn, twice each: on a shared machine the load changes from minute to minute.
    in_process = None
    if not (args.skip_in_process or args.skip_label):
        from safeguard_flow.engines.vllm_local import VLLMEngine

        start = time.perf_counter()
        in_process = VLLMEngine(settings)
        print(f"in-process engine start {time.perf_counter() - start:.0f}s", flush=True)
        label(in_process, items[:4], policies)  # warm-up: grammar compilation, allocator

    def label_in_process(key: str) -> None:
        if in_process is not None:
            in_process.reset_prefix_cache()
            results[key] = label(in_process, items, policies)
            print(f"in-process labelling: {results[key]}", flush=True)

    head = local_head.start_head(settings)
    import ray

    local_head.prepare_driver(head.gcs_address)
    ray.init(address=head.gcs_address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    try:
        start = time.perf_counter()
        url = serve.deploy(settings, timeout_s=900)
        print(f"Serve app ready at {url} in {time.perf_counter() - start:.0f}s; reserves "
              f"{serve.placement_bundles(settings)} per replica, limits {serve.replica_limits(settings)}", flush=True)
        client = OpenAIEngine(settings)
        bodies = [client.request_body(p, t) for p in policies for t in texts]
        asyncio.run(burst(url, bodies[:8], 4, 300))  # warm-up
        for c in [int(x) for x in args.concurrency.split(",")]:
            r = asyncio.run(burst(url, bodies[:args.requests], c, 300, retries=args.retries))
            results[f"c{c}"] = r
            print(f"concurrency {c:3d}: {r['ok_per_s']:.2f} req/s, p50 {r['p50_s']:.2f}s, p99 {r['p99_s']:.2f}s, "
                  f"{r['counts']}", flush=True)
        for turn in () if args.skip_label else (1, 2):
            label_in_process(f"in_process_{turn}")
            conc = args.label_concurrency
            engine = OpenAIEngine(settings.model_copy(update={"engine": settings.engine.model_copy(update={"concurrency": conc})}))
            try:
                results[f"serve_label_{turn}"] = label(engine, items, policies)
            finally:
                engine.close()
            print(f"labelling through Serve (engine.concurrency={conc}): {results[f'serve_label_{turn}']}", flush=True)
        r = asyncio.run(burst(url, (bodies * 2)[:args.burst], args.burst_concurrency, args.burst_timeout))
        results["burst"] = r
        print(f"overload {args.burst} requests at concurrency {args.burst_concurrency} ({args.burst_timeout:.0f}s "
              f"client timeout): {r['counts']}, refusals p99 {r['refused_p99_s']:.2f}s max {r['refused_max_s']:.2f}s, "
              f"Retry-After {r['retry_after']}", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            local_head.stop_head(head, remove_temp_dir=True)
            if in_process is not None:
                in_process.close()

    print("\n== results ==")
    for c in [int(x) for x in args.concurrency.split(",")]:
        r = results[f"c{c}"]
        errors = r["requests"] - r["ok"]
        # What bounds req/s on a CPU: the prompt tokens the prefix cache did not have (prefill work).
        fresh = r["prompt_tokens"] - r["cached_tokens"]
        print(f"concurrency {c:3d}: {r['ok_per_s']:6.2f} req/s  p50 {r['p50_s']:5.2f}s  p99 {r['p99_s']:5.2f}s  "
              f"errors {errors}  (retried after a 503: {r['retried']}; uncached prompt tokens "
              f"{fresh / max(r['ok'], 1):.0f}/request, {fresh / r['wall_s']:.0f}/s)")
    for turn in () if args.skip_label else (1, 2):
        s = results[f"serve_label_{turn}"]
        line = (f"labelling through Serve, turn {turn} (engine.concurrency={args.label_concurrency}): "
                f"{s['items_per_s']:.2f} items/s, cached {s['cached']}/{s['prompt_tokens']} prompt tokens, "
                f"{(s['prompt_tokens'] - s['cached']) / s['seconds']:.0f} uncached/s")
        p = results.get(f"in_process_{turn}")
        if p:
            line += (f"; in-process {p['items_per_s']:.2f} items/s (cached {p['cached']}, "
                     f"{(p['prompt_tokens'] - p['cached']) / p['seconds']:.0f} uncached/s); "
                     f"ratio Serve/in-process {s['items_per_s'] / p['items_per_s']:.2f}")
        print(line)
    b = results["burst"]
    print(f"overload burst: {b['ok']} answered (p99 {b['p99_s']:.2f}s), {b['refused']} refused (429/503; p99 {b['refused_p99_s']:.2f}s), "
          f"{b['counts'].get('408', 0)} ended by the server's timeout (408), {b['timeouts']} client timeouts, "
          f"other {b['requests'] - b['ok'] - b['refused'] - b['timeouts'] - b['counts'].get('408', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
