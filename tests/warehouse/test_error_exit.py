"""`safeguard-flow run` exits non-zero with the count when an active policy version's errors exceed the
gate's bound, even though the run published what passed (issue 18); a shadow version's only warns."""

from __future__ import annotations

from safeguard_flow.cli.run import _errors_over_bound
from safeguard_flow.warehouse import run_gates


def _gate(policy, version, verdicts, errors, shadow=False, outcome="quarantined"):
    return {"policy": policy, "version": version, "outcome": outcome, "shadow": shadow, "verdicts": verdicts,
            "errors": errors, "reason": "error rate"}


def test_errors_over_the_bound_exit_3_with_the_count(wh, capsys):
    run_id = wh.nightly()
    with wh.engine.begin() as conn:
        run_gates.record(conn, wh.settings, run_id, [_gate("spam", 1, 100, 2, outcome="passed"),
                                                     _gate("spam", 2, 100, 100, shadow=True)])
    assert _errors_over_bound(wh.engine, wh.settings, run_id) == 0  # the shadow version warns, never fails the command
    with wh.engine.begin() as conn:
        run_gates.record(conn, wh.settings, run_id, [_gate("spam", 1, 100, 30), _gate("spam", 2, 100, 100, shadow=True)])
    assert _errors_over_bound(wh.engine, wh.settings, run_id) == 3
    err = capsys.readouterr().err
    assert "error: spam v1: 30 of 100 verdicts are errors (30.0%), over quality.max_error_rate=0.05" in err
    assert "spam v2" not in err
