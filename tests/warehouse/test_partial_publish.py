"""The gate per policy version on real warehouses (SQLite, PostgreSQL) with real GX: a version whose
verdicts are all errors is quarantined, the other is published (native and generic merges), the run
is published with a warning, and rerunning the interval relabels only the quarantined version."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tests.warehouse.warehouse_helpers import DAY, T0, at

from safeguard_flow import pipeline
from safeguard_flow.warehouse import publish, run_gates, runs, schema


def _break_version(wh, run_id: str, policy: str) -> None:
    """Every staged verdict of `policy` becomes an engine error (as a policy text too long for the model makes)."""
    s = schema.tables(wh.settings).verdict_staging
    with wh.engine.begin() as conn:
        conn.execute(s.update().where(s.c.run_id == run_id, s.c.policy == policy).values(
            parse_status="engine_error", label=None, error="prompt longer than model.max_model_len"))


@pytest.mark.parametrize("method", ["native", "generic"])
def test_a_failing_version_is_quarantined_alone_and_its_rerun_relabels_only_it(wh, method):
    wh.add_posts([(str(i), f"post {i}" + (" buy" if i % 5 == 0 else ""), at(i / 2)) for i in range(10)])
    run = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)
    wh.label(run.id)
    _break_version(wh, run.id, "spam")
    report = pipeline.validate_run(wh.engine, wh.settings, run.id)
    assert report.success and report.partial and [v.key for v in report.quarantined] == ["spam v1"]
    validated = runs.get_run(wh.engine, wh.settings, run.id)
    assert validated.status == "validated" and validated.warnings == [
        "quarantined spam v1, not published: error rate <= 5.0% (quality.max_error_rate): 100.0% (10 of 10 verdicts "
        "are errors: engine_error=10)"]

    if method == "native":
        counts = pipeline.publish_run(wh.engine, wh.settings, run.id)
        assert counts["quarantined"] == ["spam v1"]
    else:
        counts = publish.publish_run(wh.engine, wh.settings, run.id, method="generic", versions=[("self-harm", 1)])
    assert (counts["inserted"], counts["errors"]) == (10, 0)
    done = runs.get_run(wh.engine, wh.settings, run.id)
    assert done.status == "published" and (done.verdicts, done.inserted, done.positives) == (10, 10, 2)
    assert {(v["policy"], v["policy_version"]) for v in wh.verdicts()} == {("self-harm", 1)}

    # The rerun: a run of the interval for spam v1 alone (its id from the same rule), nothing else relabelled.
    retry = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)
    assert retry.id == pipeline.interval_run_id("nightly", T0, T0 + DAY, [("spam", 1)]) != run.id
    assert (retry.policy_refs, retry.items, retry.params["retry_of"]) == ([("spam", 1)], 10, run.id)
    assert [g.retry_run_id for g in run_gates.gates(wh.engine, wh.settings, run.id) if not g.passed] == [retry.id]
    model = wh.label(retry.id)
    assert len(model.requests) == 10  # spam only
    assert pipeline.validate_run(wh.engine, wh.settings, retry.id).success
    pipeline.publish_run(wh.engine, wh.settings, retry.id)
    assert {(v["policy"], v["policy_version"]) for v in wh.verdicts()} == {("self-harm", 1), ("spam", 1)}
    assert len(wh.verdicts()) == 20
    # And again: both published, nothing to do.
    assert pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY).id == retry.id
    s = schema.tables(wh.settings).verdict_staging
    with wh.engine.connect() as conn:  # the quarantined verdicts stayed staged, for a look at why
        assert conn.execute(sa.select(sa.func.count()).where(s.c.run_id == run.id, s.c.policy == "spam")).scalar_one() == 10
