"""One bad policy version never stops the night, through `airflow dags test` (dag.test) on PostgreSQL (the
CLI's test in tests/pipeline runs it on SQLite) with a real Ray label job and the real small model on vLLM: a shadow version of spam whose
text alone is longer than the model's context is quarantined; the active versions are published, every
task succeeds, and publish clears the run's text copies (retention.text_days = 0)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tests.conftest import ON_POSTGRES
from tests.airflow.test_dags_e2e import INTERVAL, PER_DAY, _count, _dag, _seed
from tests.pipeline.long_policy import publish_long_shadow

pytestmark = pytest.mark.slow


@ON_POSTGRES
def test_nightly_publishes_the_active_versions_and_quarantines_only_the_long_shadow(airflow_db, dag_env, wh_engine,
                                                                                    wh_settings):
    from safeguard_flow.warehouse import run_gates, runs, schema

    dag_env(wh_settings, label_mode="job")
    _seed(wh_engine, wh_settings)
    publish_long_shadow(wh_engine, wh_settings, wh_settings.policies_dir)  # spam v2, a shadow beside spam v1

    dr = _dag("safeguard_nightly").test(logical_date=INTERVAL[1])
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "success", states
    assert set(states.values()) == {"success"}

    (run,) = runs.list_runs(wh_engine, wh_settings)
    assert run.status == "published" and run.policy_refs == [("self-harm", 1), ("spam", 1), ("spam", 2)]
    assert run.verdicts == 2 * PER_DAY and any("quarantined spam v2 (shadow)" in w for w in run.warnings)
    assert run.validation["quarantined"] == ["spam v2"] and run.validation["success"] is True
    gates = {g.key: (g.outcome, g.shadow) for g in run_gates.gates(wh_engine, wh_settings, run.id)}
    assert gates == {"self-harm v1": ("passed", False), "spam v1": ("passed", False), "spam v2": ("quarantined", True)}
    v = schema.tables(wh_settings).verdicts
    with wh_engine.connect() as conn:
        published = sorted(tuple(r) for r in conn.execute(sa.select(v.c.policy, v.c.policy_version).distinct()))
    assert published == [("self-harm", 1), ("spam", 1)] and _count(wh_engine, wh_settings) == 2 * PER_DAY
    # The quarantined version's verdicts stay staged (for a look at why); the texts are gone.
    assert _count(wh_engine, wh_settings, "verdict_staging") == 3 * PER_DAY
    w = schema.tables(wh_settings).work_items
    with wh_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(w.c.text.is_not(None))).scalar_one() == 0

    # The run report in the Safeguard view says which version was quarantined and why.
    from safeguard_flow.airflow.ui import Dashboard, render_run_report

    page = render_run_report(Dashboard(wh_engine, wh_settings), run.id)
    assert "Quality gate per policy version" in page and "quarantined</span>" in page
    assert "error rate &lt;= 5.0% (quality.max_error_rate): 100.0%" in page
