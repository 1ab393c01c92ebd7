"""A publish/extract round trip on Snowflake through fakesnow (a Snowflake emulator on DuckDB).

Runs INSIDE the Snowflake venv (dev/snowflake_venv.py builds it; tests/warehouse/test_snowflake.py runs
this), never the project venv: the Snowflake driver's pins conflict with ours. With fakesnow patched
into snowflake.connector, everything below goes through snowflake-sqlalchemy and our own code on a
`snowflake://` URL: migrations into schema ANALYTICS, a posts source table in PUBLIC, a nightly extract, verdicts staged with
write_chunk (no model: a keyword rule makes Verdict objects), the real Great Expectations gate,
the publish merge, then sg_verdicts and a view read back. Prints one JSON object on its last line.

    python dev/snowflake_roundtrip.py WORKDIR [DATASET.jsonl]
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
URL = "snowflake://sg_user:not-a-secret@sg-account/sg_db/public?warehouse=sg_wh"  # fakesnow ignores the account


def _posts(dataset: Path | None) -> list[tuple[str, str, dt.datetime]]:
    """Our own awkward rows (ids differing only in case, quotes, non-Latin scripts, a long text), plus the
    first real moderation samples when the dataset is given (read at run time, never copied)."""
    rows = [("A", "upper case id: buy now", 1), ("a", "lower case id", 2), ("q'1", 'it\'s "quoted"; DROP TABLE x; buy', 3),
            ("ja-1", "今すぐ購入 buy 🛒", 4), ("ar-1", "مرحبا بالعالم", 5), ("long", "lorem ipsum " * 2000, 6),
            ("late", "outside the interval, buy", 30)]
    if dataset is not None and dataset.is_file():
        with dataset.open(encoding="utf-8") as f:
            for i, line in zip(range(4), f):
                rows.append((json.loads(line)["id"], json.loads(line)["prompt"], 7 + i))
    return [(cid, body, T0 + dt.timedelta(hours=h)) for cid, body, h in rows]


def main(workdir: Path, dataset: Path | None) -> dict:
    import fakesnow
    import sqlalchemy as sa

    timings: dict[str, float] = {}
    db_dir = workdir / "fakesnow"
    db_dir.mkdir(parents=True, exist_ok=True)
    with fakesnow.patch(db_path=str(db_dir)):
        from safeguard_flow import pipeline
        from safeguard_flow.domain.policies import load_policy_set
        from safeguard_flow.domain.verdicts import OK, Verdict
        from safeguard_flow.settings import load_settings
        from safeguard_flow.warehouse import db, policy_store, publish, schema, staging
        from safeguard_flow.warehouse.tables import VIEW_NAMES

        def _verdict(item, policy: str) -> Verdict:
            hit = "buy" in (item.text or "").lower()
            return Verdict(content_id=item.content_id, policy=policy, policy_version=1, label=int(hit), parse_status=OK,
                           source=item.source, content_hash=item.content_hash, category="promo" if hit else "none",
                           rationale="keyword rule", confidence=0.9, rule_ids=["R1"], raw_output="{}",
                           model="keyword-rules", extra={"note": "ü ✓"}, prompt_tokens=3, completion_tokens=2)

        settings = load_settings(environ={}, home=str(workdir / "home"), warehouse={"url": URL, "db_schema": "analytics"},
                                 policies_dir=str(Path(__file__).resolve().parents[1] / "policies"),
                                 sources=[{"name": "posts", "table": "posts", "id_column": "id", "text_column": "body",
                                           "updated_at_column": "updated_at"}])
        t = time.monotonic()
        revision = schema.upgrade(settings)
        timings["upgrade_s"] = round(time.monotonic() - t, 2)
        engine = db.make_engine(settings)

        md = sa.MetaData()
        posts = sa.Table("posts", md, sa.Column("id", sa.String(300)), sa.Column("body", sa.Text),
                         sa.Column("updated_at", sa.DateTime))
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(posts.insert(), [dict(id=c, body=b, updated_at=u.replace(tzinfo=None)) for c, b, u in _posts(dataset)])

        wanted = {"spam", "self-harm"}
        policies = [p.with_version(1) for p in load_policy_set(settings.policies_dir) if p.name in wanted]
        policy_store.publish_policies(engine, settings, policies, author="snowflake-roundtrip")

        t = time.monotonic()
        run = pipeline.start_interval_run(engine, settings, T0, T0 + dt.timedelta(days=1))
        timings["extract_s"] = round(time.monotonic() - t, 2)

        def label(run_id: str) -> None:  # what a label job does, with a keyword rule for the model
            for chunk in staging.pending_chunks(engine, settings, run_id):
                items = staging.read_chunk(engine, settings, run_id, chunk)
                staging.write_chunk(engine, settings, run_id, chunk, [_verdict(i, p.name) for i in items for p in policies])
            staging.finish_labelling(engine, settings, run_id)

        t = time.monotonic()
        label(run.id)
        timings["stage_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        report = pipeline.validate_run(engine, settings, run.id)  # real Great Expectations
        timings["validate_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        published = pipeline.publish_run(engine, settings, run.id)
        timings["publish_s"] = round(time.monotonic() - t, 2)
        again = publish.publish_run(engine, settings, run.id)  # the merge itself again: changes nothing

        # Day 2: post "a" edited to a violation; its verdicts are updated by the merge, nothing inserted.
        with engine.begin() as conn:
            conn.execute(posts.update().where(posts.c.id == "a").values(
                body="lower case id, now: buy", updated_at=(T0 + dt.timedelta(hours=26)).replace(tzinfo=None)))
        day2 = pipeline.start_interval_run(engine, settings, T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2))
        label(day2.id)
        pipeline.validate_run(engine, settings, day2.id)
        published2 = pipeline.publish_run(engine, settings, day2.id)

        v = schema.tables(settings).verdicts
        names = schema.qualified_names(engine.dialect, settings.warehouse.table_prefix, settings.warehouse.db_schema)
        with engine.connect() as conn:
            verdicts = [dict(r._mapping) for r in conn.execute(
                sa.select(v.c.content_id, v.c.policy, v.c.label, v.c.rule_ids, v.c.extra, v.c.decided_by)
                .order_by(v.c.content_id, v.c.policy))]
            rates = [dict(r._mapping) for r in conn.exec_driver_sql(f"SELECT * FROM {names['daily_policy_rates']}")]
            key_count = conn.execute(sa.select(sa.func.count()).select_from(
                sa.select(v.c.source, v.c.content_id, v.c.policy, v.c.policy_version).distinct().subquery())).scalar_one()
            view_rows = {}
            for view in VIEW_NAMES:  # every view runs (an error names the view instead of stopping the check)
                try:
                    view_rows[view] = conn.exec_driver_sql(f"SELECT count(*) FROM {names[view]}").scalar_one()
                except sa.exc.DBAPIError as exc:
                    view_rows[view] = f"error: {str(exc.orig).splitlines()[0]}"
            tables_seen = {where: sorted(r._mapping["name"] for r in conn.exec_driver_sql(f"SHOW TABLES IN SCHEMA {where}"))
                           for where in ("public", "analytics")}
        engine.dispose()
    return dict(revision=revision, head=schema.head(), dialect=engine.dialect.name, run_id=run.id, items=run.items,
                validation=dict(success=report.success, rows=report.rows), published=published, again=again,
                day2=dict(items=day2.items, published=published2), verdicts=verdicts, keys=key_count,
                daily_policy_rates=rates, views=view_rows, tables=tables_seen,
                timings=timings)


if __name__ == "__main__":
    work = Path(sys.argv[1])
    out = main(work, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps(out, default=str, ensure_ascii=False))
