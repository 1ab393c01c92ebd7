"""The README's flow through a real Airflow (API server, scheduler, DAG processor, triggerer;
LocalExecutor; SQLite metadata DB), not `dags test`: the policy sync publishes on its own (it starts
unpaused), the README's backfill command labels two past intervals, a policy edit announced by a
triggered sync starts the relabel through its asset event. SQLite warehouse; labelling with the real
small model (the shared vLLM server) inside the Airflow workers (ray.label_mode = in_process, on the
local head), the lightest real path. AIRFLOW_HOME is a temporary folder, outside the project."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.airflow.af_support import DAGS, ROOT, STACK_PORT, pipeline_env

pytestmark = pytest.mark.slow

DAYS = ("2026-11-20", "2026-11-21")  # the README's backfill: two intervals, one DAG run each
PER_DAY = 2
POLICIES = ("self-harm", "spam")


def readme_backfill_commands() -> list[list[str]]:
    """The `airflow ...` lines of the README's backfill block, as a user would paste them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Nightly runs and backfills"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("airflow ")]
    assert any(c[:2] == ["backfill", "create"] for c in commands), block
    return commands


@pytest.fixture(scope="module")
def flow(tmp_path_factory, vllm_server, af_ray_head):
    """A seeded warehouse (no policy published yet) and a running Airflow whose policy sync has run."""
    from dev.local_stack import LocalAirflow
    from safeguard_flow.warehouse.sample_data import copy_policies, demo_settings, load_sample, read_sample
    from safeguard_flow.warehouse import db, schema

    tmp = tmp_path_factory.mktemp("flow")
    policies = copy_policies(tmp / "policies", POLICIES)
    settings = demo_settings(tmp, policies)
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    rows = read_sample(per_day=PER_DAY, days=DAYS)
    load_sample(engine, rows)

    env = pipeline_env(settings, vllm_server, af_ray_head, label_mode="in_process")
    # OpenLineage on, to a file (the provider stays off without a transport): the lineage test reads it.
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(tmp / "openlineage.jsonl"), "append": True})
    env["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "safeguard-tests"
    af = LocalAirflow(tmp / "airflow", STACK_PORT, DAGS, env=env)
    for key in [k for k in af.env if k.startswith("SAFEGUARD_TEST_")]:  # test ports, not settings
        del af.env[key]
    # A worker's first call to the API server (PATCH .../run) waits on the SQLite metadata DB while
    # the DAG processor and scheduler write; Airflow's 5 s default failed the first sync on a busy box.
    af.env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"] = "60"
    af.init_db()
    af.start()
    try:
        af.wait_for_dags(["safeguard_nightly", "safeguard_relabel", "safeguard_policy_sync"])
        # Unpaused at creation: the scheduler runs the sync for the latest hour, publishing v1 of both.
        syncs = af.wait_for_runs("safeguard_policy_sync", 1, run_type="scheduled", timeout_s=300)
        assert all(r["state"] == "success" for r in syncs), _logs(af, "safeguard_policy_sync", syncs)
        yield af, settings, engine, rows
    finally:
        af.stop()
        engine.dispose()


@pytest.fixture(scope="module")
def backfilled(flow):
    af, settings, engine, rows = flow
    for args in readme_backfill_commands():
        for attempt in range(4):  # SQLite may refuse a write that raced the scheduler's; Airflow cleans up
            proc = af.cli(*args, check=False)
            if proc.returncode == 0 or "database is locked" not in proc.stdout + proc.stderr or attempt == 3:
                break
            time.sleep(2 * (attempt + 1))
        assert proc.returncode == 0, f"airflow {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return af.wait_for_runs("safeguard_nightly", len(DAYS), run_type="backfill", timeout_s=900)


def _logs(af, dag_id: str, runs: list[dict]) -> str:
    """The task logs of failed runs (for the assertion message: the temporary folder may be gone)."""
    out = []
    for run in runs:
        if run["state"] == "success":
            continue
        folder = af.home / "logs" / f"dag_id={dag_id}" / f"run_id={run['dag_run_id']}"
        for path in sorted(folder.glob("**/*.log")):
            out.append(f"--- {path.relative_to(af.home)}\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(out) or f"{runs}\nno task logs; scheduler:\n{af.log_tail('scheduler', 60)}"


def _verdicts(engine, settings) -> list[dict]:
    from safeguard_flow.warehouse import schema

    v = schema.tables(settings).verdicts
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(v.c.content_id, v.c.policy, v.c.policy_version,
                                                                 v.c.run_id, v.c.label))]


def _task_instances(af, dag_id: str, runs: list[dict]) -> list[dict]:
    return [ti for r in runs for ti in af.task_instances(dag_id, r["dag_run_id"])]


def _assert_no_failed_tries(tis: list[dict]) -> None:
    bad = [(ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti.get("map_index"), ti["state"], ti["try_number"])
           for ti in tis if ti["state"] not in ("success", "skipped") or ti["try_number"] > 1]
    assert not bad, bad  # every task ran once, first try


def test_readme_backfill_labels_each_interval_once(flow, backfilled):
    from safeguard_flow.warehouse import runs

    af, settings, engine, rows = flow
    assert sorted(r["logical_date"][:10] for r in backfilled) == list(DAYS)  # one DAG run per interval
    assert all(r["state"] == "success" for r in backfilled), _logs(af, "safeguard_nightly", backfilled)
    tis = _task_instances(af, "safeguard_nightly", backfilled)
    _assert_no_failed_tries(tis)

    # The label tasks ran in the plugin's pool, one at a time (the README's --max-active-runs 1 too).
    pool = af.api("GET", "pools/safeguard_label")
    assert pool["slots"] == 1 and pool["include_deferred"] is True
    labels = sorted((ti for ti in tis if ti["task_id"] == "label"), key=lambda ti: ti["start_date"])
    assert len(labels) == len(DAYS) and {ti["pool"] for ti in labels} == {"safeguard_label"}
    assert all(a["end_date"] <= b["start_date"] for a, b in zip(labels, labels[1:])), labels

    wh_runs = runs.list_runs(engine, settings, kind="backfill")
    by_day = {r.interval_start.date().isoformat(): r for r in wh_runs}
    assert sorted(by_day) == list(DAYS) and len(wh_runs) == len(DAYS)
    assert all(r.status == "published" and r.items == PER_DAY for r in wh_runs)
    verdicts = _verdicts(engine, settings)
    per_key = Counter((v["content_id"], v["policy"]) for v in verdicts)
    assert set(per_key) == {(r["id"], p) for r in rows for p in POLICIES}
    assert set(per_key.values()) == {1}  # every item labelled once per policy, no duplicates
    day_of = {r["id"]: r["updated_at"][:10] for r in rows}
    for v in verdicts:  # ... by the run of the interval it arrived in
        assert v["run_id"] == by_day[day_of[v["content_id"]]].id


def test_policy_change_relabels_through_the_asset_event(flow, backfilled):
    from safeguard_flow.warehouse.views import view_rows
    from safeguard_flow.warehouse import runs

    af, settings, engine, rows = flow
    spam = Path(settings.policies_dir) / "spam.md"
    spam.write_text(spam.read_text(encoding="utf-8") + "\n- Repeated invitations to join a paid group chat are spam.\n",
                    encoding="utf-8")
    af.cli("dags", "trigger", "safeguard_policy_sync")  # what the README and the CLI hint say

    (relabel,) = af.wait_for_runs("safeguard_relabel", 1, timeout_s=600)
    assert relabel["run_type"] == "asset_triggered" and relabel["state"] == "success", _logs(af, "safeguard_relabel", [relabel])
    events = af.api("GET", f"dags/safeguard_relabel/dagRuns/{relabel['dag_run_id']}/upstreamAssetEvents")["asset_events"]
    assert [(e["uri"], e["extra"]["version"], e["extra"]["previous_version"]) for e in events] == [
        ("safeguard://policies/spam", 2, 1)]  # only the changed policy; unchanged self-harm announced nothing
    syncs = [r for r in af.dag_runs("safeguard_policy_sync") if r["state"] in ("success", "failed")]
    _assert_no_failed_tries(_task_instances(af, "safeguard_policy_sync", syncs)
                            + _task_instances(af, "safeguard_relabel", [relabel]))

    (wh_run,) = runs.list_runs(engine, settings, kind="relabel")  # no empty runs for unchanged policies
    assert wh_run.policy_refs == [("spam", 2)] and wh_run.status == "published" and wh_run.items == len(rows)
    verdicts = Counter((v["policy"], v["policy_version"]) for v in _verdicts(engine, settings))
    assert verdicts == {("spam", 1): len(rows), ("spam", 2): len(rows), ("self-harm", 1): len(rows)}  # old kept
    current = [r for r in view_rows(engine, settings, "current_verdicts", limit=500) if r["policy"] == "spam"]
    assert len(current) == len(rows) and {r["policy_version"] for r in current} == {2}
    # Both versions chart over the content's days, not v2 on the day it was relabelled.
    rates = [r for r in view_rows(engine, settings, "daily_policy_rates", limit=500) if r["policy"] == "spam"]
    for version in (1, 2):
        assert {str(r["day"])[:10]: r["verdicts"] for r in rates if r["policy_version"] == version and r["verdicts"]} == \
            {day: PER_DAY for day in DAYS}


def test_relabel_by_hand_with_params(flow, backfilled):
    from dev.local_stack import LocalAirflowError
    from safeguard_flow.warehouse import runs

    af, settings, engine, rows = flow
    with pytest.raises(LocalAirflowError, match="400"):  # Airflow validates params when the run is triggered
        af.trigger("safeguard_relabel", conf={"policy": "spam", "scope": "everything"})
    run_id = af.trigger("safeguard_relabel", conf={"policy": "self-harm", "scope": "since", "since": DAYS[1], "limit": 1})
    (manual,) = [r for r in af.wait_for_runs("safeguard_relabel", 1, run_type="manual", timeout_s=300) if r["dag_run_id"] == run_id]
    assert manual["state"] == "success"
    (wh_run,) = [r for r in runs.list_runs(engine, settings, kind="relabel") if r.params.get("dag_run_id") == run_id]
    assert wh_run.policy_refs == [("self-harm", 1)]
    assert wh_run.params["scope"] == "since" and wh_run.params["since"].startswith(DAYS[1]) and wh_run.params["limit"] == 1
    assert wh_run.items == 0 and wh_run.status == "published"  # everything in scope already has a v1 verdict


def test_nightly_runs_report_lineage(flow, backfilled):
    """The OpenLineage listener (file transport) saw each backfilled nightly run's extract read the
    source table and write the work list, and its publish read the staged verdicts and write the
    verdict table, named as the provider names SQL tables (SQLite: the file as namespace)."""
    af, settings, engine, rows = flow
    events_file = af.home.parent / "openlineage.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = [e for e in events if e["eventType"] == "COMPLETE"]
    namespace = f"sqlite://{Path(engine.url.database).resolve()}"

    def datasets(job: str, side: str) -> set[tuple[str, str]]:
        found = [e for e in complete if e["job"]["name"] == job and e.get(side)]
        assert len(found) >= len(DAYS), f"{job}: {len(found)} COMPLETE event(s) with {side}"
        return {(d["namespace"], d["name"]) for e in found for d in e[side]}

    assert datasets("safeguard_nightly.extract", "inputs") == {(namespace, "posts")}
    assert datasets("safeguard_nightly.extract", "outputs") == {(namespace, "sg_work_items")}
    assert datasets("safeguard_nightly.publish", "inputs") == {(namespace, "sg_verdict_staging")}
    assert datasets("safeguard_nightly.publish", "outputs") == {(namespace, "sg_verdicts")}
