"""Backfill and policy-change relabelling through a real Airflow (API server, scheduler, DAG processor,
triggerer; LocalExecutor; SQLite metadata DB) over a SQLite warehouse, labelling with the real small
model (the shared vLLM server) in the Airflow workers (ray.label_mode = in_process, on the local head)."""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy as sa
from tests.airflow.af_support import DAGS, STACK_PORT, pipeline_env

pytestmark = pytest.mark.slow

DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")
PER_DAY = 2


@pytest.fixture(scope="module")
def flow(tmp_path_factory, vllm_server, af_ray_head):
    """A seeded warehouse, policies published by the policy-sync DAG, and a running Airflow."""
    from dev.local_stack import LocalAirflow
    from safeguard_flow.sample_data import copy_policies, demo_settings, load_sample, read_sample
    from safeguard_flow.warehouse import db, schema

    tmp = tmp_path_factory.mktemp("flow")
    policies = copy_policies(tmp / "policies", ("spam", "self-harm"))
    settings = demo_settings(tmp, policies)
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    rows = read_sample(per_day=PER_DAY, days=DAYS)
    load_sample(engine, rows)

    env = pipeline_env(settings, vllm_server, af_ray_head, label_mode="in_process")
    af = LocalAirflow(tmp / "airflow", STACK_PORT, DAGS, env=env)
    af.init_db()
    af.start()
    try:
        af.wait_for_dags(["safeguard_nightly", "safeguard_relabel", "safeguard_policy_sync"])
        # First publication of the policies (relabel is still paused, so it is not triggered).
        af.cli("dags", "test", "safeguard_policy_sync")
        yield af, settings, engine, rows
    finally:
        af.stop()
        engine.dispose()


@pytest.fixture(scope="module")
def backfilled(flow):
    af, settings, engine, rows = flow
    af.create_backfill("safeguard_nightly", DAYS[0], DAYS[-1])  # = airflow backfill create --dag-id ... --from-date ... --to-date ...
    af.set_paused("safeguard_nightly", False)  # backfill runs only run on an unpaused DAG
    runs = af.wait_for_runs("safeguard_nightly", 3, run_type="backfill", timeout_s=600)
    return runs


def _verdicts(engine, settings) -> list[dict]:
    from safeguard_flow.warehouse import schema

    v = schema.tables(settings).verdicts
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(v.c.content_id, v.c.policy, v.c.policy_version, v.c.run_id, v.c.label))]


def test_backfill_labels_each_past_interval_once(flow, backfilled):
    from safeguard_flow.warehouse import runs

    af, settings, engine, rows = flow
    assert sorted(r["logical_date"][:10] for r in backfilled) == list(DAYS)
    assert all(r["state"] == "success" for r in backfilled), backfilled

    wh_runs = {r["id"]: r for r in runs.list_runs(engine, settings, kind="backfill")}
    by_day = {r["interval_start"].date().isoformat(): r for r in wh_runs.values()}
    assert sorted(by_day) == list(DAYS)
    assert all(r["status"] == "published" and r["items"] == PER_DAY for r in wh_runs.values())

    verdicts = _verdicts(engine, settings)
    per_key = Counter((v["content_id"], v["policy"]) for v in verdicts)
    assert set(per_key) == {(r["id"], p) for r in rows for p in ("self-harm", "spam")}
    assert set(per_key.values()) == {1}  # every item labelled once per policy, no duplicates
    day_of = {r["id"]: r["updated_at"][:10] for r in rows}
    for v in verdicts:  # ... by the run of the interval it arrived in
        assert v["run_id"] == by_day[day_of[v["content_id"]]]["id"]


def test_policy_change_relabels_with_the_new_version_and_keeps_the_old(flow, backfilled):
    from safeguard_flow.report import view_rows
    from safeguard_flow.warehouse import runs

    af, settings, engine, rows = flow
    af.set_paused("safeguard_relabel", False)
    spam = settings.policies_dir + "/spam.md"
    with open(spam, "a", encoding="utf-8") as fh:
        fh.write("\n- Repeated invitations to join a paid group chat are spam.\n")
    af.cli("dags", "test", "safeguard_policy_sync")  # publishes spam v2 and emits its asset event

    (relabel,) = af.wait_for_runs("safeguard_relabel", 1, run_type="asset_triggered", timeout_s=400)
    assert relabel["state"] == "success"
    label_tis = [ti for ti in af.task_instances("safeguard_relabel", relabel["dag_run_id"]) if ti["task_id"] == "label"]
    assert len(label_tis) == 1  # one changed policy -> one mapped run

    relabels = {tuple(r["policy_refs"][0]): r for r in runs.list_runs(engine, settings, kind="relabel")}
    assert relabels[("spam", 2)]["status"] == "published" and relabels[("spam", 2)]["items"] == len(rows)
    # Versions announced while relabel was paused (the first sync) come with this first triggered run;
    # their content is already labelled, so their runs are closed empty.
    assert all(r["items"] == 0 and r["status"] == "published" for ref, r in relabels.items() if ref != ("spam", 2))
    verdicts = Counter((v["policy"], v["policy_version"]) for v in _verdicts(engine, settings))
    assert verdicts == {("spam", 1): len(rows), ("spam", 2): len(rows), ("self-harm", 1): len(rows)}  # old kept

    current = [r for r in view_rows(engine, settings, "current_verdicts", limit=500) if r["policy"] == "spam"]
    assert len(current) == len(rows) and {r["policy_version"] for r in current} == {2}
    flips = view_rows(engine, settings, "verdict_flips", limit=500)
    assert all((f["policy"], f["old_version"], f["new_version"]) == ("spam", 1, 2) for f in flips)


def test_relabel_by_hand_with_params(flow, backfilled):
    from dev.local_stack import LocalAirflowError
    from safeguard_flow.warehouse import runs

    af, settings, engine, rows = flow
    with pytest.raises(LocalAirflowError, match="400"):  # Airflow validates params when the run is triggered
        af.trigger("safeguard_relabel", conf={"policy": "spam", "scope": "everything"})
    af.set_paused("safeguard_relabel", False)
    run_id = af.trigger("safeguard_relabel", conf={"policy": "self-harm", "scope": "since", "since": DAYS[1], "limit": 1})
    (manual,) = [r for r in af.wait_for_runs("safeguard_relabel", 1, run_type="manual", timeout_s=300) if r["dag_run_id"] == run_id]
    assert manual["state"] == "success"
    (wh_run,) = [r for r in runs.list_runs(engine, settings, kind="relabel") if r["params"].get("dag_run_id") == run_id]
    assert wh_run["policy_refs"] == [("self-harm", 1)]
    assert wh_run["params"]["scope"] == "since" and wh_run["params"]["since"].startswith(DAYS[1]) and wh_run["params"]["limit"] == 1
    assert wh_run["items"] == 0 and wh_run["status"] == "published"  # everything in scope already has a v1 verdict
