"""`python -m safeguard_flow.airflow.demo`: the nightly DAG end to end on the embedded default.

1. load the demo content (data/sample-posts.jsonl) into a ``posts`` table of the embedded SQLite
   warehouse (<home>/warehouse.db) and migrate the warehouse schema;
2. publish the demo policies (settings policies_dir, or --policies; --only picks a few);
3. run ``airflow dags test safeguard_nightly <day after the interval>`` in a throwaway AIRFLOW_HOME
   (SQLite metadata DB): extract -> label (local Ray, vLLM on CPU) -> validate (GX) -> publish;
4. print rows from the BI views.

The sample content and its `posts` table live in :mod:`safeguard_flow.sample_data`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from safeguard_flow.sample_data import POSTS_SOURCE, SAMPLE, load_sample, read_sample

REPO = Path(__file__).resolve().parents[3]
DEMO_DAY = "2026-11-20"  # the sample's first day: 144 rows


def view_rows(engine, settings, view: str, limit: int = 10, order_by: Sequence[str] = ()) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from safeguard_flow.warehouse import schema

    name = schema.view_names(settings)[view]
    query = sa.select(sa.text("*")).select_from(sa.table(name, schema=settings.warehouse.db_schema)).limit(limit)
    if order_by:
        query = query.order_by(*[sa.column(c) for c in order_by])
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def print_views(engine, settings, limit: int = 10, out=sys.stdout) -> None:
    """A few rows of each BI view, as plain tables."""
    from safeguard_flow.report import table

    shown = {
        "current_verdicts": (["source", "content_id", "policy", "policy_version", "label", "category", "parse_status"], ["policy", "content_id"]),
        "daily_policy_rates": (["policy", "policy_version", "day", "verdicts", "labelled", "positives", "errors", "positive_rate", "error_rate"], ["policy", "day"]),
        "verdict_flips": (["policy", "content_id", "old_version", "new_version", "old_label", "new_label"], ["policy", "content_id"]),
    }
    for view, (cols, order) in shown.items():
        rows = view_rows(engine, settings, view, limit=limit, order_by=order)
        print(f"\n== {settings.warehouse.table_prefix}{view} (first {limit} rows) ==", file=out)
        print(table(cols, [["" if r.get(c) is None else r.get(c) for c in cols] for r in rows]) if rows else "(no rows)", file=out)


def print_run(engine, settings, day: dt.date, out=sys.stdout) -> None:
    """One line on the interval's latest run: a rerun of the demo finds the interval labelled
    already and labels nothing (unchanged content is never labelled twice)."""
    from safeguard_flow.warehouse import runs

    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    mine = [r for r in runs.list_runs(engine, settings, limit=200) if r["interval_start"] == start]
    if not mine:
        print(f"\nno run for the interval {day}: see the DAG log above", file=out)
        return
    r = mine[0]
    print(f"\nrun {r['id']}: {r['status']}; {r['items'] or 0} item(s) extracted, "
          f"{r['skipped_unchanged'] or 0} unchanged skipped, {r['verdicts'] or 0} verdict(s), "
          f"{r['errors'] or 0} error(s)", file=out)


def print_agreement(engine, settings, out=sys.stdout) -> None:
    """How the published verdicts agree with the sample's human labels (where the policy has a column)."""
    import sqlalchemy as sa

    from safeguard_flow.evaluation import MODERATION_2022_KEYS, load_truth, score, score_table
    from safeguard_flow.verdicts import Verdict
    from safeguard_flow.warehouse import schema

    verdicts_table = schema.tables(settings).verdicts
    with engine.connect() as conn:
        rows = conn.execute(sa.select(verdicts_table.c.content_id, verdicts_table.c.policy, verdicts_table.c.policy_version,
                                      verdicts_table.c.label, verdicts_table.c.parse_status)).all()
    verdicts = [Verdict(content_id=r.content_id, policy=r.policy, policy_version=r.policy_version, label=r.label,
                        parse_status=r.parse_status) for r in rows]
    scores = [s for s in score(verdicts, load_truth(SAMPLE, MODERATION_2022_KEYS)) if s.scored]
    if scores:
        print("\n== agreement with the sample's human labels (the small local model stands in for "
              "gpt-oss-safeguard: this exercises the path, it is not a quality figure) ==", file=out)
        print(score_table(scores), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", default=DEMO_DAY, help="the data interval (UTC day) to label (default: %(default)s)")
    parser.add_argument("--policies", default=None, help="policy folder (default: settings policies_dir)")
    parser.add_argument("--only", default="spam,self-harm", help="comma-separated policies to publish ('' = all)")
    parser.add_argument("--airflow-home", default=None, help="default: a new temporary folder")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    from safeguard_flow.policies import load_policy_set
    from safeguard_flow.settings import load_settings
    from safeguard_flow.warehouse import db, policy_store, schema

    # The demo's source and label mode; everything else from the usual settings (env / safeguard.yaml).
    os.environ.setdefault("SAFEGUARD_SOURCES", json.dumps([POSTS_SOURCE]))
    os.environ.setdefault("SAFEGUARD_RAY__LABEL_MODE", "in_process")
    settings = load_settings()
    settings.home_path.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    n = load_sample(engine, read_sample())
    print(f"loaded {n} rows into table posts of {settings.warehouse_url}")

    policies = load_policy_set(args.policies or settings.policies_dir)
    wanted = [p for p in args.only.split(",") if p]
    if wanted:
        policies = [p for p in policies if p.name in wanted]
    results = policy_store.publish_policies(engine, settings, policies, author="demo")
    print("published:", ", ".join(f"{r.policy.name} v{r.version}" for r in results))

    day = dt.date.fromisoformat(args.day)
    logical_date = (day + dt.timedelta(days=1)).isoformat()  # a data-interval run labels the day before it
    home = Path(args.airflow_home or tempfile.mkdtemp(prefix="sg-airflow-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "SAFEGUARD_HOME": str(settings.home_path), "SAFEGUARD_POLICIES_DIR": str(Path(args.policies or settings.policies_dir).resolve()),
    })
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"airflow dags test safeguard_nightly {logical_date}  (labels {day}, AIRFLOW_HOME={home})", flush=True)
    proc = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "safeguard_nightly", logical_date], env=env)
    print(f"dags test finished with {proc.returncode} in {time.monotonic() - started:.0f}s")
    print_run(engine, settings, day)
    print_views(engine, settings)
    print_agreement(engine, settings)
    if not args.airflow_home:
        shutil.rmtree(home, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
