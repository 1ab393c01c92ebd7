"""Warehouse benchmark on PostgreSQL: publish throughput vs a raw bulk insert, and memory of extract + publish.

    python bench/warehouse_bench.py                      # 100k and 1M source rows
    python bench/warehouse_bench.py --rows 100000        # just one size
    python bench/warehouse_bench.py --url postgresql+psycopg://...   # an existing (empty) server

For each size: a throwaway PostgreSQL 15 database gets a `posts` source table (filled server-side,
10% of the texts occur twice), then each phase runs in its own Python process so its peak RSS is
its own: extract (nightly interval over all rows), label (read_chunk -> label_items with an instant
rule engine -> write_chunk; not part of the warehouse target, shown for context), publish (staged
verdicts -> verdict table, all inserts), republish of a second run over the same keys (all
updates) and an idempotent re-publish (no changes).

`--publish-scale 100000 1000000` measures instead what issue 9 found: publishing 20k new verdicts
(and 20k of which half exist) into a verdict table already holding 100k / 1M verdicts, on fresh
tables that PostgreSQL has no statistics for yet (autovacuum off on them, no ANALYZE), next to
how long the old "is any key there yet" join takes on those tables (cut off at 60 s).

"raw" is a bulk insert of exactly the rows publish writes into an empty copy of the verdict table
(same primary key and indexes), without conflict handling: server-side INSERT ... SELECT, and
COPY (from the staging table through the client, the usual bulk-load path). Targets: publish
rows/s >= 0.5 x raw; peak memory of extract and publish flat from 100k to 1M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = {"name": "posts", "table": "posts", "id_column": "id", "text_column": "body",
          "updated_at_column": "updated_at"}
START, END = "2024-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"


def settings_for(url: str, chunk_size: int):
    from safeguard_flow.settings import load_settings

    return load_settings(environ={}, warehouse={"url": url, "chunk_size": chunk_size}, sources=[SOURCE],
                         policies_dir=str(ROOT / "policies"))


def maxrss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    across fork+exec, so a child would report at least the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- phases, each run in a fresh process -------------------------------------------------------

class InstantEngine:
    """Answers at once, so the label phase measures the warehouse side only."""

    model_name = "bench-rules"

    def complete(self, requests):
        from safeguard_flow.engines.base import Completion

        return [Completion(text='{"violation": %d, "policy_category": "x", "rationale": "r"}' % ("7" in r.content),
                           prompt_tokens=100, completion_tokens=10) for r in requests]

    def close(self):
        pass


def phase(name: str, url: str, chunk_size: int, run_id: str) -> dict:
    import datetime as dt

    from safeguard_flow.labelling.loop import label_items
    from safeguard_flow.warehouse import db, extract, policy_store, publish, runs, staging

    settings = settings_for(url, chunk_size)
    engine = db.make_engine(settings)
    out: dict = {"phase": name}
    t0 = time.perf_counter()
    if name == "baseline":
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    elif name == "extract":
        policies = policy_store.get_policies(engine, settings)
        start, end = dt.datetime.fromisoformat(START), dt.datetime.fromisoformat(END)
        runs.create_run(engine, settings, "backfill", policies, start, end, run_id=run_id)
        out["items"] = extract.extract_interval(engine, settings, run_id, start, end)
    elif name == "label":
        policies = policy_store.get_policies(engine, settings, runs.get_run(engine, settings, run_id).policy_refs)
        model = InstantEngine()
        n = 0
        for chunk in staging.pending_chunks(engine, settings, run_id):
            items = staging.read_chunk(engine, settings, run_id, chunk)
            staging.write_chunk(engine, settings, run_id, chunk, label_items(model, items, policies))
            n += len(items)
        staging.finish_labelling(engine, settings, run_id)
        out["items"] = n
    elif name == "publish":
        # The gate is not what this measures: pass the run through it without GX. A repeat publishes
        # the same staged rows again, so the bench puts its published run back to validated by hand
        # (no product path does: a published run is final).
        if runs.get_run(engine, settings, run_id).status is runs.RunStatus.PUBLISHED:
            import sqlalchemy as sa

            from safeguard_flow.warehouse import schema

            r = schema.tables(settings).runs
            with engine.begin() as conn:
                conn.execute(sa.update(r).where(r.c.id == run_id).values(status=runs.RunStatus.VALIDATED.value))
        else:
            runs.transition(engine, settings, run_id, runs.RunStatus.VALIDATED,
                            validation={"success": True, "summary": "bench"})
        out.update(publish.publish_run(engine, settings, run_id))
    else:
        raise SystemExit(f"unknown phase {name}")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["maxrss_mb"] = round(maxrss_mb(), 1)
    engine.dispose()
    return out


def run_phase(name: str, url: str, chunk_size: int, run_id: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--url", url, "--chunk-size", str(chunk_size),
           "--run-id", run_id]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- setup and the raw baseline (in the parent) ------------------------------------------------

def setup(url: str, rows: int, chunk_size: int) -> None:
    import sqlalchemy as sa

    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse import db, policy_store, schema

    settings = settings_for(url, chunk_size)
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    distinct = int(rows * 0.9)  # texts 0..distinct-1; rows past that repeat one: 10% of texts occur twice
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE posts (id bigint PRIMARY KEY, body text, updated_at timestamp)")
        conn.execute(sa.text(
            "INSERT INTO posts SELECT i, 'post number ' || (i % :d) || ' ' || repeat('lorem ipsum dolor ', 10), "
            "timestamp '2024-06-01' + i * interval '1 second' FROM generate_series(0, :n - 1) AS i"),
            {"d": distinct, "n": rows})
        conn.exec_driver_sql("ANALYZE posts")
    spam = [p for p in load_policy_set(ROOT / "policies") if p.name == "spam"]
    policy_store.publish_policies(engine, settings, spam, author="bench")
    engine.dispose()


def raw_inserts(url: str, run_id: str) -> dict:
    """The same rows publish writes, bulk-inserted into an empty copy of the verdict table."""
    import psycopg

    from safeguard_flow.warehouse.tables import build_tables

    v = build_tables("sg_", None).verdicts
    cols = ", ".join(c.name for c in v.c)
    src_cols = ", ".join("now()" if c.name == "published_at" else c.name for c in v.c)
    select = f"SELECT {src_cols} FROM sg_verdict_staging WHERE run_id = %s ORDER BY source, content_id, policy, policy_version"
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("raw_select", "raw_copy"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (LIKE sg_verdicts INCLUDING ALL)")
        t0 = time.perf_counter()
        with conn.transaction():
            n = conn.execute(f"INSERT INTO raw_select ({cols}) {select}", (run_id,)).rowcount
        out["insert_select_s"] = time.perf_counter() - t0
        out["rows"] = n
        with psycopg.connect(dsn, autocommit=True) as reader:
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor().copy(f"COPY raw_copy ({cols}) FROM STDIN") as sink:
                query = select.replace("%s", psycopg.sql.quote(run_id))
                with reader.cursor().copy(f"COPY ({query}) TO STDOUT") as source:
                    for block in source:
                        sink.write(block)
            out["copy_s"] = time.perf_counter() - t0
    return out


def truncate_verdicts(url: str) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("TRUNCATE sg_verdicts")
        conn.exec_driver_sql("CHECKPOINT")
    eng.dispose()


def measure(url: str, rows: int, chunk_size: int, repeat: int) -> dict:
    import sqlalchemy as sa

    t0 = time.perf_counter()
    setup(url, rows, chunk_size)
    res = {"rows": rows, "setup_s": round(time.perf_counter() - t0, 1)}
    res["baseline"] = run_phase("baseline", url, chunk_size, "-")
    res["extract"] = run_phase("extract", url, chunk_size, "bench-1")
    res["label"] = run_phase("label", url, chunk_size, "bench-1")
    # Publish into an empty verdict table and the raw inserts, alternated, best of `repeat` each:
    # other work on the machine makes single timings noisy.
    publishes, raws = [], []
    for _ in range(repeat):
        raws.append(raw_inserts(url, "bench-1"))
        truncate_verdicts(url)
        publishes.append(run_phase("publish", url, chunk_size, "bench-1"))
    res["publish"] = min(publishes, key=lambda r: r["seconds"])
    res["publish_all_s"] = [p["seconds"] for p in publishes]
    res["raw"] = {"rows": raws[0]["rows"], "insert_select_s": min(r["insert_select_s"] for r in raws),
                  "copy_s": min(r["copy_s"] for r in raws)}
    res["republish_same"] = run_phase("publish", url, chunk_size, "bench-1")  # idempotent: no change
    # A second run over the same rows, edited: every key exists, so publish updates all of them.
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("UPDATE posts SET body = body || ' (edited)'")
    eng.dispose()
    run_phase("extract", url, chunk_size, "bench-2")
    run_phase("label", url, chunk_size, "bench-2")
    res["publish_updates"] = run_phase("publish", url, chunk_size, "bench-2")
    return res


def report(results: list[dict]) -> None:
    print("\n== publish throughput (PostgreSQL) ==")
    print(f"{'rows':>9} {'publish s':>9} {'rows/s':>9} | {'raw INSERT..SELECT':>18} {'ratio':>6} | "
          f"{'raw COPY':>9} {'ratio':>6} | {'all-updates rows/s':>18} {'no-op s':>7}")
    for r in results:
        pub, raw = r["publish"], r["raw"]
        n = pub["staged"]
        rate = n / pub["seconds"]
        ins_rate, copy_rate = raw["rows"] / raw["insert_select_s"], raw["rows"] / raw["copy_s"]
        upd = r["publish_updates"]
        print(f"{n:>9} {pub['seconds']:>9.2f} {rate:>9.0f} | {ins_rate:>18.0f} {rate / ins_rate:>6.2f} | "
              f"{copy_rate:>9.0f} {rate / copy_rate:>6.2f} | {upd['staged'] / upd['seconds']:>18.0f} "
              f"{r['republish_same']['seconds']:>7.2f}")
    print("\n== peak memory, each phase in its own process (RSS MB; baseline = imports + connection) ==")
    print(f"{'rows':>9} {'baseline':>9} {'extract':>9} {'publish':>9} {'label*':>9} | {'extract s':>9} "
          f"{'extract rows/s':>14} {'label s':>8}")
    for r in results:
        b = r["baseline"]["maxrss_mb"]
        print(f"{r['rows']:>9} {b:>9.1f} {r['extract']['maxrss_mb']:>9.1f} {r['publish']['maxrss_mb']:>9.1f} "
              f"{r['label']['maxrss_mb']:>9.1f} | {r['extract']['seconds']:>9.1f} "
              f"{r['rows'] / r['extract']['seconds']:>14.0f} {r['label']['seconds']:>8.1f}")
    print("* label = read_chunk + label_items (instant rule engine) + write_chunk: the Ray job's warehouse side")
    print("  publish counts:", [{k: r["publish"][k] for k in ("inserted", "updated", "unchanged")} for r in results])
    print("  re-publish of the same run:", [{k: r["republish_same"][k] for k in ("inserted", "updated")}
                                          for r in results])


# ---- publish against existing verdicts, no statistics (issue 9) --------------------------------

_VERDICT_COLS = ("source, content_id, policy, policy_version, content_hash, label, category, rationale, confidence, "
                 "rule_ids, parse_status, raw_output, error, model, prompt_tokens, completion_tokens, extra, "
                 "labelled_at, extracted_at")


def _values(prefix: str, lo: str, hi: str, run_expr: str, tail: str) -> str:
    return (f"SELECT 'posts', '{prefix}' || i, 'spam', 1, md5(i::text) || md5(i::text), (mod(i, 20) = 0)::int, NULL, "
            f"'r', NULL, NULL, 'ok', NULL, NULL, 'bench', 100, 10, NULL, timestamptz '2024-06-01' + i * interval '1 s', "
            f"timestamptz '2024-06-01', {run_expr}, {tail} FROM generate_series({lo}, {hi}) AS i")


def publish_scale(url: str, existing: int, new: int = 20_000) -> dict:
    import datetime as dt

    import sqlalchemy as sa

    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse import db, policy_store, publish, runs, schema

    settings = settings_for(url, 1000)
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    spam = [p for p in load_policy_set(ROOT / "policies") if p.name == "spam"]
    policy_store.publish_policies(engine, settings, spam, author="bench")
    with engine.begin() as conn:
        for table in ("sg_verdicts", "sg_verdict_staging"):  # fresh tables: no statistics while we measure
            conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        runs.create_run(engine, settings, "manual", [("spam", 1)], run_id="old")
        conn.exec_driver_sql(f"INSERT INTO sg_verdicts ({_VERDICT_COLS}, run_id, published_at) "
                             + _values("e", "0", str(existing - 1), "'old'", "now()"))
    out: dict = {"existing": existing, "new": new}
    # all_new: ids past the existing ones; half_exist: half of them are the ids all_new just published.
    for case, first in (("all_new", existing), ("half_exist", existing + new // 2)):
        run_id = f"new-{case}"
        runs.create_run(engine, settings, "manual", [("spam", 1)], run_id=run_id)
        now = dt.datetime.now(dt.timezone.utc)
        with engine.begin() as conn:
            # ids e<first>.. : below `existing` they exist already, above they are new.
            conn.exec_driver_sql(f"INSERT INTO sg_verdict_staging ({_VERDICT_COLS}, run_id, chunk_no) "
                                 + _values("e", str(first), str(first + new - 1), f"'{run_id}'", "0"))
            conn.execute(sa.text("INSERT INTO sg_run_chunks (run_id, chunk_no, bucket_lo, bucket_hi, items, done, "
                                 "verdicts, errors, positives, prompt_tokens, completion_tokens) "
                                 "VALUES (:r, 0, 0, 268435456, :n, true, :n, 0, 0, 0, 0)"), {"r": run_id, "n": new})
        runs.update_run(engine, settings, run_id, status="validated", items=new, extract_started_at=now,
                        extract_finished_at=now, validated_at=now)
        with engine.connect() as conn:  # what the old "any key there yet?" check cost on these tables
            conn.exec_driver_sql("SET statement_timeout = '60s'")
            t0 = time.perf_counter()
            try:
                conn.exec_driver_sql(
                    "SELECT EXISTS (SELECT 1 FROM sg_verdict_staging s, sg_verdicts v WHERE s.run_id = %(r)s AND "
                    "v.source = s.source AND v.content_id = s.content_id AND v.policy = s.policy AND "
                    "v.policy_version = s.policy_version)", {"r": run_id}).scalar()
                out[f"{case}_old_check_s"] = round(time.perf_counter() - t0, 3)
            except sa.exc.OperationalError:
                out[f"{case}_old_check_s"] = "> 60 (cancelled)"
        t0 = time.perf_counter()
        result = publish.publish_run(engine, settings, run_id)
        out[f"{case}_publish_s"] = round(time.perf_counter() - t0, 3)
        out[f"{case}_counts"] = {k: result[k] for k in ("inserted", "updated", "unchanged")}
    with engine.connect() as conn:
        out["analyzed"] = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname IN ('sg_verdicts', 'sg_verdict_staging') "
            "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)").scalar()
    engine.dispose()
    return out


def report_scale(results: list[dict]) -> None:
    print("\n== publish 20k staged verdicts against existing ones, fresh tables without statistics (PostgreSQL) ==")
    print(f"{'existing':>9} {'all new: publish s':>19} {'old check s':>12} | {'half exist: publish s':>22} "
          f"{'old check s':>12} | counts")
    for r in results:
        print(f"{r['existing']:>9} {r['all_new_publish_s']:>19} {str(r['all_new_old_check_s']):>12} | "
              f"{r['half_exist_publish_s']:>22} {str(r['half_exist_old_check_s']):>12} | "
              f"{r['all_new_counts']} {r['half_exist_counts']}")
    print("  tables analysed during the measurement:", [r["analyzed"] for r in results], "(0: no statistics)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="publish / raw insert timings: best of N")
    ap.add_argument("--url", help="an existing PostgreSQL server (a database per size is created on it)")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--publish-scale", type=int, nargs="+", metavar="EXISTING",
                    help="publish 20k new verdicts against this many existing ones, fresh tables (issue 9)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--run-id", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.url, args.chunk_size, args.run_id)))
        return

    sys.path.insert(0, str(ROOT))  # dev/ lives at the repository root
    from dev.postgres import PostgresServer

    server = None
    if args.url:
        import sqlalchemy as sa

        def create_db(name: str) -> str:
            eng = sa.create_engine(args.url, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            eng.dispose()
            return str(sa.make_url(args.url).set(database=name).render_as_string(hide_password=False))
    else:
        server = PostgresServer().start()
        create_db = server.create_database
    results = []
    if args.publish_scale:
        try:
            for existing in args.publish_scale:
                url = create_db(f"bench_scale_{existing}_{os.getpid()}")
                print(f"-- 20k new verdicts against {existing} existing ...", flush=True)
                results.append(publish_scale(url, existing))
                print(json.dumps(results[-1]), flush=True)
        finally:
            if server is not None:
                server.stop()
        report_scale(results)
        return
    try:
        for rows in args.rows:
            url = create_db(f"bench_{rows}_{os.getpid()}")
            print(f"-- {rows} source rows ...", flush=True)
            results.append(measure(url, rows, args.chunk_size, args.repeat))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if server is not None:
            server.stop()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
