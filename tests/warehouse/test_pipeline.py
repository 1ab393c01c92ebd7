"""The core pipeline's rules on real warehouses (SQLite, PostgreSQL, MariaDB, DuckDB), with real GX for the gate:
reruns of a published interval, empty intervals, quarantined runs started afresh, failed runs
resumed, and steps asked of a run in the wrong state. (The label step's worker process, killed for
real, is tested in tests/airflow/test_pipeline_cli.py.)"""

import pytest
from tests.conftest import EVERY_WAREHOUSE, warehouse_url_for
from tests.warehouse.warehouse_helpers import DAY, T0, at

from safeguard_flow import pipeline
from safeguard_flow.pipeline.expectations import QualityGateFailed
from safeguard_flow.settings import QualitySettings
from safeguard_flow.warehouse import runs, staging
from safeguard_flow.warehouse.errors import RunStateError
from safeguard_flow.warehouse.runs import RunStatus as S


@pytest.fixture(params=EVERY_WAREHOUSE)
def warehouse_url(request, tmp_path):
    """These rules hold on every warehouse dialect: SQLite, PostgreSQL, MariaDB, DuckDB."""
    return warehouse_url_for(request, tmp_path, request.param)


def _posts(wh, n=6):
    wh.add_posts([(str(i), f"post {i}" + (" buy" if i % 3 == 0 else ""), at(i / n)) for i in range(n)])


def test_an_interval_runs_end_to_end_and_its_rerun_does_nothing(wh):
    _posts(wh)
    run = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)
    assert run.id == pipeline.interval_run_id("nightly", T0, T0 + DAY, [("spam", 1), ("self-harm", 1)])
    assert (run.status, run.items) == (S.EXTRACTED, 6) and pipeline.needs_work(run)
    wh.label(run.id)
    report = pipeline.validate_run(wh.engine, wh.settings, run.id)
    assert report.success and runs.get_run(wh.engine, wh.settings, run.id).validated_at is not None
    counts = pipeline.publish_run(wh.engine, wh.settings, run.id)
    assert counts["inserted"] == 12
    done = runs.get_run(wh.engine, wh.settings, run.id)
    assert done.status is S.PUBLISHED and done.validation["success"] is True

    again = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)
    assert again.id == run.id and again.status is S.PUBLISHED and not pipeline.needs_work(again)
    assert pipeline.publish_run(wh.engine, wh.settings, run.id)["already_published"] is True
    assert pipeline.validate_run(wh.engine, wh.settings, run.id).success  # the stored result
    assert len(wh.verdicts()) == 12


def test_an_empty_interval_is_closed_as_published_at_once(wh):
    _posts(wh)
    run = pipeline.start_interval_run(wh.engine, wh.settings, T0 + 2 * DAY, T0 + 3 * DAY)
    assert (run.status, run.items, run.verdicts, run.empty) == (S.PUBLISHED, 0, 0, True)
    assert not pipeline.needs_work(run)


def test_no_published_policy_is_a_clear_error(make_warehouse):
    wh = make_warehouse(publish_policies=False)
    wh.create_posts()
    with pytest.raises(pipeline.PipelineError, match="no policies are published"):
        pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)


def test_a_quarantined_run_starts_afresh_and_publishes_after_the_fix(wh):
    _posts(wh)
    strict = wh.settings.model_copy(update={"quality": QualitySettings(max_positive_rate=0.1, min_sample=1)})
    run = pipeline.start_interval_run(wh.engine, strict, T0, T0 + DAY)
    wh.label(run.id)
    with pytest.raises(QualityGateFailed, match="positive rate"):
        pipeline.validate_run(wh.engine, strict, run.id)
    quarantined = runs.get_run(wh.engine, wh.settings, run.id)
    assert quarantined.status is S.QUARANTINED and "positive rate" in quarantined.error
    with pytest.raises(RunStateError, match="quarantined"):
        pipeline.publish_run(wh.engine, wh.settings, run.id)
    assert runs.get_run(wh.engine, wh.settings, run.id).status is S.QUARANTINED  # a refused step fails nothing

    again = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)  # the threshold was fixed
    assert (again.id, again.status, again.items, again.error) == (run.id, S.EXTRACTED, 6, None)
    wh.label(run.id)
    pipeline.validate_run(wh.engine, wh.settings, run.id)
    assert pipeline.publish_run(wh.engine, wh.settings, run.id)["inserted"] == 12


def test_a_step_that_raises_fails_the_run_and_the_next_attempt_resumes_it(wh):
    _posts(wh)
    run_id = runs.create_run(wh.engine, wh.settings, "manual", wh.policies, T0, T0 + DAY, run_id="flaky")

    def broken_extract():
        from safeguard_flow.warehouse import extract

        extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY)
        raise OSError("connection reset by peer")

    with pytest.raises(OSError):
        pipeline.extract_run(wh.engine, wh.settings, run_id, broken_extract)
    failed = runs.get_run(wh.engine, wh.settings, run_id)
    assert failed.status is S.FAILED and failed.error == "extract: OSError: connection reset by peer"

    from safeguard_flow.warehouse import extract

    run = pipeline.extract_run(wh.engine, wh.settings, run_id,
                           lambda: extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY))
    assert (run.status, run.items) == (S.EXTRACTED, 6)  # extract had finished: it is not redone
    assert "connection reset by peer" in run.warnings[-1]


def test_steps_asked_of_a_run_in_the_wrong_state_leave_it_alone(wh):
    _posts(wh)
    run = pipeline.start_interval_run(wh.engine, wh.settings, T0, T0 + DAY)
    with pytest.raises(RunStateError, match="is extracted: the quality gate needs a labelled run"):
        pipeline.validate_run(wh.engine, wh.settings, run.id)
    with pytest.raises(RunStateError, match="not validated"):
        pipeline.publish_run(wh.engine, wh.settings, run.id)
    with pytest.raises(RunStateError, match="not labelled yet"):
        staging.finish_labelling(wh.engine, wh.settings, run.id)
    assert runs.get_run(wh.engine, wh.settings, run.id).status is S.EXTRACTED


def test_relabel_runs_take_the_active_version_and_their_trigger_in_the_id(wh):
    _posts(wh)
    run = pipeline.start_relabel_run(wh.engine, wh.settings, "spam", trigger_id=pipeline.cli_relabel_trigger(None, 3),
                                     limit=3)
    assert run.id == "relabel-spam-v1-cli-all-limit3" and run.items == 3 and run.policy_refs == [("spam", 1)]
    with pytest.raises(pipeline.PipelineError, match="'nope' is not published"):
        pipeline.start_relabel_run(wh.engine, wh.settings, "nope", trigger_id="x")


def test_day_intervals_are_utc_and_checked():
    lo, hi = pipeline.day_interval("2026-11-20", "2026-11-21")
    assert (lo.isoformat(), hi.isoformat()) == ("2026-11-20T00:00:00+00:00", "2026-11-21T00:00:00+00:00")
    with pytest.raises(ValueError, match="start must be before the end"):
        pipeline.day_interval("2026-11-21", "2026-11-20")
