"""The BI views at scale on PostgreSQL: seconds per BI-style query (one policy, 30 days) per view.

    python bench/bi_views_bench.py                    # 10M verdicts of one policy's three versions
    python bench/bi_views_bench.py --verdicts 1000000 # the quick size
    python bench/bi_views_bench.py --url postgresql+psycopg://...   # an existing server (a database is created)

A throwaway PostgreSQL 15 server (dev/postgres.py) gets the schema by the migrations, then verdicts
generated server-side (generate_series), one policy's year as nightly runs leave it: v1 active for
240 days, then v2 relabelling all earlier content in one night and labelling nightly since, v3 in
shadow for the last 30 days; rows stored in labelling order, 8% positives, 0.5% errors, v3 flipping
about 3% of v2's labels. The queries ask what a dashboard asks: one policy, the last 30 days. After
VACUUM ANALYZE each runs --repeat times (best taken; the first warms the cache); its plan (EXPLAIN
ANALYZE) goes to <out>/explain-<view>.txt.
Target (issue 21): every query under 1 s at 10M verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# BI-style questions a dashboard asks of each view: one policy, the last 30 days of a year of data.
QUERIES = {
    "current_verdicts": """
        SELECT CAST(labelled_at AS DATE) AS day, COUNT(*) AS items, SUM(is_positive) AS positives
        FROM {p}current_verdicts
        WHERE policy = 'spam' AND labelled_at >= TIMESTAMPTZ '2025-12-02 00:00:00+00'
        GROUP BY 1 ORDER BY 1""",
    "daily_policy_rates": """
        SELECT day, policy_version, verdicts, positives, positive_rate, error_rate
        FROM {p}daily_policy_rates
        WHERE policy = 'spam' AND day >= DATE '2025-12-02'
        ORDER BY day, policy_version""",
    "verdict_flips": """
        SELECT CAST(new_labelled_at AS DATE) AS day, COUNT(*) AS flips,
               SUM(CASE WHEN new_label >= 1 THEN 1 ELSE 0 END) AS to_positive
        FROM {p}verdict_flips
        WHERE policy = 'spam' AND old_version = 2 AND new_version = 3
          AND new_labelled_at >= TIMESTAMPTZ '2025-12-02 00:00:00+00'
        GROUP BY 1 ORDER BY 1""",
}


def seed(engine, settings, verdicts: int) -> dict:
    """One policy's year, as nightly runs leave it: v1 active for 240 days, then v2 published and
    relabelling all earlier content in one night and labelling nightly since, v3 in shadow for the
    last 30 days (labelling nightly beside v2). Rows go in in labelling order, as publishes append them."""
    import sqlalchemy as sa

    from safeguard_flow.warehouse import schema

    t = schema.tables(settings)
    v, runs, pol, pv = t.verdicts, t.runs, t.policies, t.policy_versions
    # verdicts = items * (240 + 365 + 30) / 365
    items = int(verdicts * 365 / 635)
    stamp = "TIMESTAMPTZ '2025-01-01 00:00:00+00'"
    with engine.begin() as conn:
        now = sa.func.now()
        conn.execute(pol.insert().values(name="spam", current_version=2, shadow_version=3, created_at=now, updated_at=now))
        for n in (1, 2, 3):
            conn.execute(pv.insert().values(name="spam", version=n, sha256=f"{n:064d}", text=f"v{n}", labels=[0, 1],
                                            output_format="binary", reasoning_effort="low", created_at=now))
            conn.execute(runs.insert().values(id=f"bench-v{n}", kind="nightly", status="published",
                                              policy_refs=[["spam", n]], created_at=now, updated_at=now))
    day = f"floor(i::bigint * 365 / {items})"  # item i's content day
    # (version, which items, when labelled): v2's relabel of days 0-239 runs on day 240 (spread over the day).
    parts = [
        (1, f"{day} < 240", f"{day} * INTERVAL '1 day' + INTERVAL '2 hours'"),
        (2, f"{day} < 240", f"INTERVAL '240 days' + (i::float8 / {items}) * INTERVAL '12 hours'"),
        (2, f"{day} >= 240", f"{day} * INTERVAL '1 day' + INTERVAL '2 hours'"),
        (3, f"{day} >= 335", f"{day} * INTERVAL '1 day' + INTERVAL '3 hours'"),
    ]
    select = " UNION ALL ".join(
        f"SELECT i, {n} AS n, {stamp} + {when} AS labelled_at FROM generate_series(1, {items}) AS i WHERE {which}"
        for n, which, when in parts)
    # The label is a hash of the item; v3 flips ~3% of v2's labels; 0.5% errors.
    label = "CASE WHEN n = 3 AND mod(i, 33) = 0 THEN 1 - base ELSE base END"
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"""
            INSERT INTO {v.name} (source, content_id, policy, policy_version, content_hash, label,
                parse_status, model, prompt_tokens, completion_tokens, labelled_at, extracted_at,
                content_updated_at, run_id, published_at, decided_by)
            SELECT 'posts', 'c' || i, 'spam', n, md5(i::text), CASE WHEN mod(i, 200) = 7 THEN NULL ELSE {label} END,
                CASE WHEN mod(i, 200) = 7 THEN 'invalid' ELSE 'ok' END, 'bench', 700, 2,
                labelled_at, labelled_at - INTERVAL '1 hour', {stamp} + {day} * INTERVAL '1 day' - INTERVAL '1 hour',
                'bench-v' || n, labelled_at, 'model'
            FROM (SELECT i, n, labelled_at, CASE WHEN mod(i::bigint * 7919, 100) < 8 THEN 1 ELSE 0 END AS base
                  FROM ({select}) u) g
            ORDER BY labelled_at, i""")
        count = conn.execute(sa.select(sa.func.count()).select_from(v)).scalar_one()
    load_s = time.perf_counter() - start
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {v.name}")
    return {"verdicts": count, "load_s": round(load_s, 1), "vacuum_analyze_s": round(time.perf_counter() - start - load_s, 1)}


def time_queries(engine, prefix: str, repeat: int, out_dir: Path) -> dict[str, float]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    from safeguard_flow.warehouse.bi_role import BI_SESSION_DEFAULTS

    with engine.connect() as conn:
        # As a BI tool's session under `db grant-bi`'s role defaults (jit off).
        for name, value in BI_SESSION_DEFAULTS.items():
            conn.exec_driver_sql(f"SET {name} = {value}")
        for view, sql in QUERIES.items():
            sql = sql.format(p=prefix)
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                conn.exec_driver_sql(sql).fetchall()
                best = min(best, time.perf_counter() - t)
            figures[view] = round(best, 3)
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql).scalars().all()
            (out_dir / f"explain-{view}.txt").write_text(sql.strip() + "\n\n" + "\n".join(plan) + "\n")
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verdicts", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", help="an existing PostgreSQL server (a database is created on it)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench"))
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="leave the throwaway server running (prints its URL)")
    args = ap.parse_args()

    from safeguard_flow.settings import load_settings
    from safeguard_flow.warehouse import db, schema

    server = None
    if args.url:
        import sqlalchemy as sa

        name = f"bi_bench_{int(time.time())}"
        with sa.create_engine(args.url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = args.url.rsplit("/", 1)[0] + "/" + name
    else:
        from dev.postgres import PostgresServer

        server = PostgresServer().start()
        url = server.create_database("bi_bench")
    try:
        settings = load_settings(environ={}, warehouse={"url": url})
        schema.upgrade(settings)
        engine = db.make_engine(settings)
        print(f"seeding {args.verdicts:,} verdicts ...", flush=True)
        seeded = seed(engine, settings, args.verdicts)
        print(f"seeded {seeded['verdicts']:,} verdicts in {seeded['load_s']} s (vacuum analyze {seeded['vacuum_analyze_s']} s)")
        figures = time_queries(engine, settings.warehouse.table_prefix, args.repeat, Path(args.out))
        engine.dispose()
    finally:
        if server is not None and not args.keep:
            server.stop()
    if args.keep:
        print(f"server left running: {url} (data in {server.root if server else '-'})")
    print(f"\n== BI views at {seeded['verdicts']:,} verdicts (PostgreSQL; one policy, last 30 days; best of {args.repeat}) ==")
    for view, s in figures.items():
        print(f"  {view:<22} {s:8.3f} s   {'ok' if s < 1.0 else 'OVER 1 s'}")
    print(f"  plans: {args.out}/explain-<view>.txt")
    result = {**seeded, "seconds": figures, "max_s": max(figures.values())}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
