"""The validate step's memory is bounded: a run of 300,000 staged verdicts with 2 KB rationales is
validated, on SQLite, by a fresh interpreter whose peak RSS stays under 500 MB (the gate counts in
SQL; no verdict, text or rationale is loaded). Before the gate counted in SQL, the same run took a
peak RSS of 3,218 MB (the whole run in pandas)."""

from __future__ import annotations

import pytest
from tests.pipeline.validate_rss import build_run, measure_validate

pytestmark = pytest.mark.slow

LIMIT_MB = 500


def test_validating_300k_verdicts_with_2kb_rationales_stays_under_500_mb(sqlite_wh_settings):
    from safeguard_flow.warehouse import db, run_gates, runs

    settings = sqlite_wh_settings
    run_id = build_run(settings, 300_000, rationale_bytes=2048)
    result = measure_validate(settings, run_id)
    print(f"validate of 300,000 staged verdicts: peak RSS {result['peak_mb']:.0f} MB")
    assert result["peak_mb"] < LIMIT_MB, result
    # The gate did judge the run: 1% malformed per version (max_error_rate 5%), 5% positive.
    assert result["success"] and "300000 staged verdict(s)" in result["summary"]
    engine = db.make_engine(settings)
    try:
        run = runs.get_run(engine, settings, run_id)
        assert run.status == "validated"
        stats = run.validation["statistics"]["by_policy"]["spam v1"]
        assert (stats["verdicts"], stats["errors"]) == (150_000, 1_500)
        assert {g.key: (g.outcome, g.verdicts) for g in run_gates.gates(engine, settings, run_id)} == {
            "self-harm v1": ("passed", 150_000), "spam v1": ("passed", 150_000)}
    finally:
        engine.dispose()
