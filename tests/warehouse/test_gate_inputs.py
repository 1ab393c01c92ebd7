"""The gate judges the model, not the content: input errors counted apart (own bound, off by default),
default positive-rate bounds that stop a broken model, and the drift gate against a version's own
trailing rate. Real GX over real staged verdicts, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from tests.warehouse.warehouse_helpers import DAY, T0

from safeguard_flow.pipeline import validate_run as enforce_gate
from safeguard_flow.pipeline.expectations import QualityGateFailed
from safeguard_flow.warehouse.runs import RunStatus
from safeguard_flow.settings import QualitySettings
from safeguard_flow.warehouse import runs

QUARANTINED = RunStatus.QUARANTINED


def _day(wh, day: int, n: int = 100, spam: int = 5, empty: int = 0) -> str:
    """One interval of n posts: `spam` of them mention 'buy' (the keyword model's violation), `empty` blank."""
    start = T0 + day * DAY
    rows = []
    for i in range(n):
        body = "" if i < empty else (f"buy cheap watches {day}-{i}" if i < empty + spam else f"a nice day {day}-{i}")
        rows.append((f"d{day}-{i}", body, start + (i + 1) * DAY / (n + 2)))
    wh.add_posts(rows)
    run_id = wh.nightly(start, start + DAY)
    wh.label(run_id)
    return run_id


def _gate(wh, run_id, quality: QualitySettings | None = None):
    settings = wh.settings if quality is None else wh.settings.model_copy(update={"quality": quality})
    return enforce_gate(wh.engine, settings, run_id)


def test_empty_posts_do_not_quarantine_the_run(wh):
    run_id = _day(wh, 0, n=100, spam=5, empty=6)  # 6% input errors: above max_error_rate's 5%
    report = _gate(wh, run_id)
    assert report.success, report.summary
    stats = report.result["statistics"]["by_policy"]["spam v1"]
    assert (stats["input_errors"], stats["errors"]) == (6, 6)
    assert wh.publish(run_id)["inserted"] == 200
    # Their own bound, when an operator asks for one.
    again = _day(wh, 1, n=100, spam=5, empty=6)
    with pytest.raises(QualityGateFailed, match=r"input error rate <= 5\.0% \(quality\.max_input_error_rate\): "
                                                r"6\.0% \(6 of 100 verdicts are input errors\)"):
        _gate(wh, again, QualitySettings(max_input_error_rate=0.05))


def test_model_errors_keep_their_bound(wh):
    wh.add_posts([(f"g{i}", "garbage" if i < 10 else f"fine {i}", T0 + i * DAY / 200) for i in range(100)])
    run_id = wh.nightly()
    wh.label(run_id)  # 'garbage' gets an unparseable answer: 10% malformed
    with pytest.raises(QualityGateFailed, match=r"error rate <= 5\.0% \(quality\.max_error_rate\): 10\.0%"):
        _gate(wh, run_id)


def test_defaults_stop_a_model_that_calls_almost_everything_positive(wh):
    run_id = _day(wh, 0, n=100, spam=97)
    with pytest.raises(QualityGateFailed, match=r"positive rate \(label >= 1\) within \[0\.0%, 80\.0%\]"):
        _gate(wh, run_id)
    assert runs.get_run(wh.engine, wh.settings, run_id).status == QUARANTINED


def test_small_runs_are_not_judged_on_their_positive_rate(wh):
    run_id = _day(wh, 0, n=5, spam=4)  # 80%+ of 5 items: noise, below quality.min_sample
    assert _gate(wh, run_id).success


def test_drift_gate_quarantines_a_jump_from_a_steady_rate(wh):
    loose = QualitySettings(max_positive_rate=1.0)  # the fixed bounds let it through: drift alone decides
    for day in range(3):  # a steady 5%
        run_id = _day(wh, day, n=100, spam=5)
        assert _gate(wh, run_id, loose).success
        wh.publish(run_id)
    steady = _day(wh, 3, n=100, spam=7)  # 7%: within tolerance
    report = _gate(wh, steady, loose)
    assert report.success and report.result["trailing"]["spam v1"] == {"positives": 15, "labelled": 300}
    wh.publish(steady)
    published = len(wh.verdicts())
    jump = _day(wh, 4, n=100, spam=90)
    with pytest.raises(QualityGateFailed) as failed:
        _gate(wh, jump, loose)
    checks = {c.check for c in failed.value.report.failed}
    assert checks == {f"positive rate within 25.0% of this version's trailing rate {r} over its last 400 published "
                      "labelled verdicts (quality.drift_tolerance)" for r in ("5.5%",)}, checks
    assert "90.0%" in str(failed.value)
    assert runs.get_run(wh.engine, wh.settings, jump).status == QUARANTINED
    assert len(wh.verdicts()) == published  # nothing of the jump was published
    # Off when asked.
    runs.reset_run(wh.engine, wh.settings, jump)
    from safeguard_flow.warehouse import extract

    extract.extract_interval(wh.engine, wh.settings, jump, T0 + 4 * DAY, T0 + 5 * DAY)
    wh.label(jump)
    assert _gate(wh, jump, QualitySettings(max_positive_rate=1.0, drift_tolerance=None)).success
