"""A warehouse with a few days of history, written through the real warehouse API, for the UI test.

Labels come from the sample's human annotations (no model: the view, not the labelling, is under
test): three nightly runs under v1 of two policies, a v2 of one policy relabelling the same content
(some verdicts flip), and one run the quality gate quarantined. Published verdicts are then dated
back to their interval's day, so the rate chart has a history to draw.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from safeguard_flow.warehouse.sample_data import load_sample, read_sample
from safeguard_flow.domain.policies import load_policy
from safeguard_flow.pipeline import validate_run
from safeguard_flow.warehouse.staging import finish_labelling
from safeguard_flow.pipeline.expectations import QualityGateFailed
from safeguard_flow.domain.verdicts import MALFORMED, OK, Verdict
from safeguard_flow.warehouse import extract, policy_store, publish, runs, schema, staging

DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")
ANNOTATION = {"self-harm": "SH", "violence": "V"}


def _label(policy: str, version: int, row: dict) -> int:
    value = int(row.get(ANNOTATION[policy]) or 0)
    if version >= 2:  # the stricter v2 also flags what hate annotators marked
        value = max(value, int(row.get("H") or 0))
    return value


def _label_run(engine, settings, run_id: str, rows_by_id: dict, errors: bool = False) -> None:
    run = runs.get_run(engine, settings, run_id)
    for chunk in staging.pending_chunks(engine, settings, run_id):
        verdicts = []
        for i, item in enumerate(staging.read_chunk(engine, settings, run_id, chunk)):
            for name, version in run.policy_refs:
                bad = errors and i % 2 == 0
                verdicts.append(Verdict(
                    content_id=item.content_id, policy=name, policy_version=version, source=item.source,
                    content_hash=item.content_hash, label=None if bad else _label(name, version, rows_by_id[item.content_id]),
                    parse_status=MALFORMED if bad else OK, error="not JSON" if bad else None, model="annotations"))
        staging.write_chunk(engine, settings, run_id, chunk, verdicts)
    finish_labelling(engine, settings, run_id)


def _backdate(engine, settings, run_id: str, day: str) -> None:
    v = schema.tables(settings).verdicts
    when = dt.datetime.fromisoformat(day).replace(hour=23, tzinfo=dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(v.update().where(v.c.run_id == run_id).values(labelled_at=when))


def seed(engine, settings, policies_dir: Path, per_day: int = 8) -> dict:
    schema.upgrade(settings, engine=engine)
    rows = read_sample(per_day=per_day, days=DAYS)
    load_sample(engine, rows)
    by_id = {r["id"]: r for r in rows}
    policies = [load_policy(policies_dir / f"{name}.md") for name in ANNOTATION]
    v1 = {r.policy.name: r.policy for r in policy_store.publish_policies(engine, settings, policies, author="seed")}

    for day in DAYS:
        start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
        run_id = runs.create_run(engine, settings, "nightly", list(v1.values()), start, start + dt.timedelta(days=1))
        extract.extract_interval(engine, settings, run_id, start, start + dt.timedelta(days=1))
        _label_run(engine, settings, run_id, by_id)
        validate_run(engine, settings, run_id)
        publish.publish_run(engine, settings, run_id)
        _backdate(engine, settings, run_id, day)

    # v2 of self-harm relabels everything (old verdicts stay, some flip).
    path = policies_dir / "self-harm.md"
    path.write_text(path.read_text() + "\n\nAlso treat hateful encouragement of self-harm as VIOLATES.\n")
    v2 = policy_store.publish_policies(engine, settings, [load_policy(path)], author="seed")[0].policy
    relabel = runs.create_run(engine, settings, "relabel", [v2], params={"scope": "all"})
    extract.extract_relabel(engine, settings, relabel, v2.name, v2.version)
    _label_run(engine, settings, relabel, by_id)
    validate_run(engine, settings, relabel)
    publish.publish_run(engine, settings, relabel)
    _backdate(engine, settings, relabel, DAYS[-1])

    facts = _seed_evals(engine, settings, rows, {1: v1["self-harm"], 2: v2}, policies_dir.parent / "eval")

    # A night whose verdicts are half unparseable: the gate quarantines it, nothing is published.
    late = [dict(r, id=f"late-{n}", updated_at="2026-11-23T06:00:00+00:00") for n, r in enumerate(rows[:6])]
    posts = sa.Table("posts", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(posts.insert(), [{"id": r["id"], "body": r["text"], "updated_at": dt.datetime.fromisoformat(r["updated_at"])} for r in late])
    by_id.update({r["id"]: r for r in late})
    start = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
    active = policy_store.get_policies(engine, settings)
    bad = runs.create_run(engine, settings, "nightly", active, start, start + dt.timedelta(days=1))
    extract.extract_interval(engine, settings, bad, start, start + dt.timedelta(days=1))
    _label_run(engine, settings, bad, by_id, errors=True)
    try:
        validate_run(engine, settings, bad)
        raise AssertionError("the seeded bad run passed the quality gate")
    except QualityGateFailed:
        pass
    with engine.connect() as conn:
        published = conn.execute(sa.select(sa.func.count()).select_from(schema.tables(settings).verdicts)).scalar_one()
    return {"rows": len(rows), "published": published, "quarantined_run": bad, "relabel_run": relabel, **facts}


def _seed_evals(engine, settings, rows, versions, out: Path) -> dict:
    """Evals of self-harm v1 and v2 on the sample's annotations (predictions as the seed labels them),
    stored like `safeguard-flow eval` stores them, and v2's report.html (with PNGs) written to `out`."""
    from safeguard_flow.policy_quality.eval_report import write_eval_report
    from safeguard_flow.policy_quality.datasets import LabelledRow, dataset_sha256
    from safeguard_flow.policy_quality.metrics import compute_metrics
    from safeguard_flow.warehouse import evals
    from safeguard_flow.policy_quality.version_diff import eval_comparisons

    labelled = [LabelledRow(r["id"], r["text"], {"self-harm": r.get("SH")}) for r in rows]
    dataset = "/data/self-harm-eval.jsonl"
    ids = {}
    for version, policy in versions.items():
        verdicts = [Verdict(content_id=r["id"], policy="self-harm", policy_version=version, label=_label("self-harm", version, r),
                            parse_status=OK, model="annotations") for r in rows]
        metrics = compute_metrics(labelled, verdicts, ["self-harm"], bootstrap_samples=200)
        metrics.update(model="annotations", engine="none", prompt_tokens=1234, completion_tokens=56, seconds=1.5,
                       dataset=dataset, policy_versions={"self-harm": {"version": version, "sha256": policy.sha256}})
        ids[version] = evals.store_eval(engine, settings, metrics, labelled, verdicts, dataset=dataset,
                                        dataset_sha256=dataset_sha256(labelled), label_map={"self-harm": "SH"})
        metrics["eval_id"] = ids[version]
    (comparison,) = eval_comparisons(engine, settings, "self-harm", versions[1].sha256, versions[2].sha256)
    out.mkdir(parents=True, exist_ok=True)
    report = write_eval_report(out, metrics, {"self-harm": {"old_version": 1, "new_version": 2, "comparison": comparison}})
    return {"eval_ids": ids, "eval_report": report}
