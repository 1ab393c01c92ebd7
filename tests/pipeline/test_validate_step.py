"""The Great Expectations gate, with real GX, over staged verdicts in real warehouses (SQLite, PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from safeguard_flow.domain.policies import Policy
from safeguard_flow.settings import QualitySettings
from safeguard_flow.domain.verdicts import MALFORMED, OK, Verdict

DAY = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)


def _frame(rows):
    cols = ["source", "content_id", "policy", "policy_version", "label", "parse_status"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def test_frame_suite_reports_each_failed_expectation_in_words():
    from safeguard_flow.pipeline.expectations import validate_frame

    spam = Policy(name="spam", text="t").with_version(2)
    frame = _frame([
        ("posts", "a", "spam", 2, 0, OK), ("posts", "b", "spam", 2, 1, OK), ("posts", "c", "spam", 2, None, MALFORMED),
        ("posts", "c", "spam", 2, 1, OK),  # a second verdict for one key: one verdict too many
        ("posts", "d", "spam", 2, 7, OK),  # a label the policy does not have
        ("posts", "e", "spam", 1, 0, OK),  # a version the run does not label
    ])
    report = validate_frame(frame, [spam], QualitySettings(max_error_rate=0.1, max_positive_rate=0.3, min_sample=1),
                            run_id="r", expected_items=4)
    assert not report.success and [v.key for v in report.quarantined] == ["spam v2"]
    failed = sorted(c.check for c in report.failed)
    expected = [
        "a verdict for every item (4 item(s))",
        "error rate <= 10.0% (quality.max_error_rate)",
        "labels in the policy's label set [0, 1]",
        "only the run's policy versions ['spam v2']",
        "positive rate (label >= 1) within [0.0%, 30.0%] (quality.min_positive_rate / quality.max_positive_rate)",
    ]
    assert failed == expected
    assert "quality.max_error_rate" in report.summary and "20.0% (1 of 5 verdicts are errors: malformed=1)" in report.summary
    assert "labels in the policy's label set [0, 1]: 1 of 5 verdict(s) unexpected, values ['7']" in report.summary
    assert "a verdict for every item (4 item(s)): 5 verdict(s)" in report.summary
    json.dumps(report.result, allow_nan=False)  # strict JSON, ready for the runs table


def test_each_policy_version_is_judged_on_its_own():
    """A version every verdict of which is an error (a shadow text longer than the model's context) is
    quarantined; the active version beside it passes, and the report says which and why."""
    from safeguard_flow.pipeline.expectations import validate_frame

    spam, shadow = Policy(name="spam", text="t").with_version(1), Policy(name="spam", text="t2").with_version(2)
    rows = [("posts", str(i), "spam", 1, int(i % 10 == 0), OK) for i in range(40)]
    rows += [("posts", str(i), "spam", 2, None, "input_error" if i == 0 else "engine_error") for i in range(40)]
    report = validate_frame(_frame(rows), [spam, shadow], QualitySettings(), run_id="r", expected_items=40,
                            shadow=[("spam", 2)])
    assert report.success and report.partial
    assert report.passed_refs == [("spam", 1)]
    (gate,) = report.quarantined
    assert (gate.key, gate.shadow, gate.verdicts, gate.errors) == ("spam v2", True, 40, 40)
    assert gate.reason == ("error rate <= 5.0% (quality.max_error_rate): 100.0% (39 of 39 verdicts are errors: "
                           "engine_error=39)")
    assert report.summary.startswith("quality gate passed for run r: 80 staged verdict(s), for spam v1; quarantined "
                                     "1 of 2 policy version(s), not published:\n  spam v2 (shadow): 1 of 5 check(s) failed")
    assert report.result["quarantined"] == ["spam v2"] and report.result["versions"]["spam v1"]["outcome"] == "passed"
    # Nothing passed: the run fails the gate.
    bad = [r for r in rows if r[3] == 2]
    assert not validate_frame(_frame(bad), [shadow], QualitySettings(), expected_items=40).success


def test_frame_suite_passes_clean_runs_and_empty_intervals():
    from safeguard_flow.pipeline.expectations import validate_frame

    spam = Policy(name="spam", text="t").with_version(1)
    ok = _frame([("posts", str(i), "spam", 1, i % 2, OK) for i in range(10)])
    assert validate_frame(ok, [spam], QualitySettings(), expected_items=10).success
    assert validate_frame(ok.iloc[0:0], [spam], QualitySettings(), expected_items=0).success


def _staged_run(engine, settings, labeller, n_days: int = 1):
    """Publish the test policies, extract one day of the sample and stage verdicts from `labeller`."""
    from safeguard_flow.warehouse.sample_data import load_sample, read_sample
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse.staging import finish_labelling
    from safeguard_flow.warehouse import extract, policy_store, runs, staging

    rows = read_sample(per_day=6, days=["2026-11-21"])
    load_sample(engine, rows)
    policies = [r.policy for r in policy_store.publish_policies(engine, settings, load_policy_set(settings.policies_dir), "t")]
    run_id = runs.create_run(engine, settings, "nightly", policies, DAY, DAY + dt.timedelta(days=1))
    assert extract.extract_interval(engine, settings, run_id, DAY, DAY + dt.timedelta(days=1)) == 6
    for chunk in staging.pending_chunks(engine, settings, run_id):
        items = staging.read_chunk(engine, settings, run_id, chunk)
        verdicts = [labeller(i, item, p) for i, item in enumerate(items) for p in policies]
        staging.write_chunk(engine, settings, run_id, chunk, verdicts)
    finish_labelling(engine, settings, run_id)
    return run_id


def _verdict(item, policy, label=0, status=OK):
    return Verdict(content_id=item.content_id, policy=policy.name, policy_version=policy.version, source=item.source,
                   content_hash=item.content_hash, label=label if status == OK else None, parse_status=status,
                   error=None if status == OK else "unparseable", raw_output="" if status == OK else "??")


def _published(engine, settings) -> int:
    import sqlalchemy as sa

    from safeguard_flow.warehouse import schema

    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.tables(settings).verdicts)).scalar_one()


@pytest.mark.slow
def test_failing_gate_quarantines_and_nothing_is_published(wh_engine, wh_settings):
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline.expectations import QualityGateFailed
    from safeguard_flow.warehouse.runs import RunStatus
    from safeguard_flow.warehouse import publish, runs
    from safeguard_flow.warehouse.errors import RunStateError

    run_id = _staged_run(wh_engine, wh_settings, lambda i, item, p: _verdict(item, p, status=MALFORMED if i < 3 else OK))
    with pytest.raises(QualityGateFailed) as failed:
        pipeline.validate_run(wh_engine, wh_settings, run_id)
    summary = str(failed.value)
    assert "quality gate FAILED" in summary and "error rate <= 5.0% (quality.max_error_rate): 50.0%" in summary
    run = runs.get_run(wh_engine, wh_settings, run_id)
    assert run.status is RunStatus.QUARANTINED and run.validation["success"] is False
    assert run.error == summary
    saved = json.loads(Path(failed.value.report.path).read_text())
    assert saved["run_id"] == run_id and saved["suites"]["spam v1"]["success"] is False
    with pytest.raises(RunStateError):
        publish.publish_run(wh_engine, wh_settings, run_id)
    assert _published(wh_engine, wh_settings) == 0


@pytest.mark.slow
def test_passing_gate_marks_the_run_validated_and_publish_goes_through(wh_engine, wh_settings):
    from safeguard_flow import pipeline
    from safeguard_flow.warehouse import publish, runs

    wh_settings = wh_settings.model_copy(update={"quality": QualitySettings(min_sample=1)})
    run_id = _staged_run(wh_engine, wh_settings, lambda i, item, p: _verdict(item, p, label=i % 2))
    report = pipeline.validate_run(wh_engine, wh_settings, run_id)
    assert report.success and len(report.checks) == 1 + 2 * 6  # the run check + one suite per policy version
    run = runs.get_run(wh_engine, wh_settings, run_id)
    assert run.status == "validated" and run.validated_at is not None
    assert publish.publish_run(wh_engine, wh_settings, run_id)["inserted"] == 12
    # A rerun after publishing keeps the run published (the gate is not re-applied to purged staging).
    assert pipeline.validate_run(wh_engine, wh_settings, run_id).success
    assert runs.get_run(wh_engine, wh_settings, run_id).status == "published"


@pytest.mark.slow
def test_positive_rate_bounds_come_from_settings(wh_engine, wh_settings):
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline.expectations import QualityGateFailed

    strict = wh_settings.model_copy(update={"quality": QualitySettings(max_positive_rate=0.2, min_sample=1)})
    run_id = _staged_run(wh_engine, strict, lambda i, item, p: _verdict(item, p, label=1))
    with pytest.raises(QualityGateFailed, match=r"positive rate \(label >= 1\) within \[0.0%, 20.0%\].*: 100.0%"):
        pipeline.validate_run(wh_engine, strict, run_id)
