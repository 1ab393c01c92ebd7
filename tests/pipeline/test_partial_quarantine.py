"""One bad policy version never stops the night, through `safeguard-flow run` for real (a real Ray head,
the real small model on vLLM; SQLite here, PostgreSQL through the DAG in
tests/airflow/test_partial_quarantine_dag.py): a shadow version of spam whose text alone is longer
than the model's context gets only error verdicts and is quarantined; the active spam and self-harm
versions are published. Rerunning the interval relabels only the quarantined version."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
import yaml
from tests.conftest import ON_SQLITE
from tests.pipeline.long_policy import publish_long_shadow
from tests.pipeline.test_pipeline_cli import DAY, _real_settings, _seed

pytestmark = pytest.mark.slow


@ON_SQLITE
def test_cli_run_publishes_the_active_versions_and_quarantines_only_the_long_shadow(
        wh_settings, vllm_server, jobs_ray_head, tmp_path, capsys, monkeypatch):
    from safeguard_flow.cli import main as cli
    from safeguard_flow.pipeline import day_interval, interval_run_id
    from safeguard_flow.warehouse import db, run_gates, runs, schema

    for key in [k for k in os.environ if k.startswith("SAFEGUARD_")]:
        monkeypatch.delenv(key)  # the CLI reads the environment: only the config file below counts here
    settings = _real_settings(wh_settings, vllm_server, jobs_ray_head)
    engine = db.make_engine(settings)
    try:
        n = _seed(engine, settings, per_day=3)
        publish_long_shadow(engine, settings, settings.policies_dir)  # spam v2, a shadow beside spam v1
        config = tmp_path / "cli.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))

        def cli_run(*argv) -> tuple[int, str, str]:
            code = cli.main(["--config", str(config), *argv])
            out = capsys.readouterr()
            return code, out.out, out.err

        interval = f"{DAY}/2026-11-22"
        code, out, err = cli_run("run", "--interval", interval)
        assert code == 0, (out, err)
        refs = [("self-harm", 1), ("spam", 1), ("spam", 2)]
        run_id = interval_run_id("nightly", *day_interval(DAY, "2026-11-22"), refs)
        assert f"run {run_id}: {n} item(s)" in out and f"published: {2 * n} new" in out
        assert "quarantined 1 of 3 policy version(s), not published" in out and "spam v2 (shadow)" in out
        assert "warning: quarantined, not published: spam v2" in err

        run = runs.get_run(engine, settings, run_id)
        assert run.status == "published" and run.verdicts == 2 * n and run.inserted == 2 * n
        assert any(w.startswith("quarantined spam v2 (shadow), not published: error rate") for w in run.warnings)
        gates = {g.key: g for g in run_gates.gates(engine, settings, run_id)}
        assert {k: (g.outcome, g.shadow) for k, g in gates.items()} == {
            "self-harm v1": ("passed", False), "spam v1": ("passed", False), "spam v2": ("quarantined", True)}
        assert gates["spam v2"].errors == n and "error rate <= 50.0% (quality.max_error_rate): 100.0%" in gates["spam v2"].reason
        v = schema.tables(settings).verdicts
        with engine.connect() as conn:
            published = conn.execute(sa.select(v.c.policy, v.c.policy_version, sa.func.count())
                                     .group_by(v.c.policy, v.c.policy_version)).all()
        assert sorted(tuple(r) for r in published) == [("self-harm", 1, n), ("spam", 1, n)]

        shown = cli_run("runs", "show", run_id)[1]
        assert "gate per policy version:" in shown and "spam v2" in shown and "quarantined (shadow)" in shown

        # The rerun relabels the quarantined version only, in a run of its own (still too long: quarantined).
        code, out, err = cli_run("run", "--interval", interval)
        retry_id = interval_run_id("nightly", *day_interval(DAY, "2026-11-22"), [("spam", 2)])
        assert code == 1 and f"run {retry_id}: {n} item(s)" in out and "against spam v2" in out, (out, err)
        retry = runs.get_run(engine, settings, retry_id)
        assert retry.policy_refs == [("spam", 2)] and retry.status == "quarantined"
        assert retry.params["retry_of"] == run_id
        assert {g.key: g.retry_run_id for g in run_gates.gates(engine, settings, run_id)}["spam v2"] == retry_id
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(v)).scalar_one() == 2 * n  # nothing more
    finally:
        engine.dispose()
