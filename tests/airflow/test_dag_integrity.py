"""DAG files import, have the intended shape and schedules, have no cycles, and validate their params;
the plugin and the provider register through their entry points."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.airflow.af_support import DAGS

EXPECTED = {"safeguard_nightly", "safeguard_relabel", "safeguard_policy_sync"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED
    for path in DAGS.glob("*.py"):  # thin DAG files: about a screen each
        assert len(path.read_text().splitlines()) <= 60, path


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_no_cycles_and_serializable(dagbag, dag_id):
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.dag_cycle_tester import check_cycle

    dag = dagbag.dags[dag_id]
    check_cycle(dag)
    dag.validate()
    assert DagSerialization.to_dict(dag)["dag"]["dag_id"] == dag_id  # what the scheduler stores
    assert dag.catchup is False and "safeguard" in dag.tags


@pytest.mark.parametrize("dag_id", ["safeguard_nightly", "safeguard_relabel"])
def test_pipeline_shape(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    extra = {"evaluate", "review", "approve_promotion"} if dag_id == "safeguard_relabel" else set()
    assert set(dag.task_dict) == {"extract", "label", "validate", "publish"} | extra
    ups = {t: set(dag.task_dict[t].upstream_task_ids) for t in dag.task_dict}
    if extra:  # the policy-change flow: eval beside the relabel, then the diff report and the gate
        assert ups["evaluate"] == set() and ups["review"] == {"evaluate", "publish"}
        assert dag.task_dict["review"].trigger_rule == "none_failed"  # also when nothing needed relabelling
        # then a person approves a shadow version's promotion (Airflow's own HITL approval task)
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        assert ups["approve_promotion"] == {"review"}
        assert isinstance(dag.task_dict["approve_promotion"], ApprovalOperator)
    assert ups["extract"] == set()
    assert ups["label"] == {"extract"}
    assert ups["validate"] == {"extract", "label"}
    assert ups["publish"] == {"extract", "validate"}
    assert dag.task_dict["validate"].retries == 0  # a failed gate is final until someone looks


def test_nightly_owns_daily_utc_intervals(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["safeguard_nightly"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 0 * * *" and str(dag.timetable.timezone) in ("UTC", "Timezone('UTC')")


def test_relabel_is_scheduled_on_policy_changes_and_mapped(dagbag):
    from airflow.sdk import AssetAlias

    from safeguard_flow.airflow.assets import POLICY_CHANGES_ALIAS

    dag = dagbag.dags["safeguard_relabel"]
    condition = dag.timetable.asset_condition
    assert isinstance(condition, AssetAlias) and condition.name == POLICY_CHANGES_ALIAS
    for task_id in ("label", "validate", "publish"):  # one warehouse run per changed policy
        assert dag.task_dict[task_id].is_mapped, task_id


def test_policy_sync_announces_through_the_alias(dagbag):
    from safeguard_flow.airflow.assets import POLICY_CHANGES_ALIAS

    task = dagbag.dags["safeguard_policy_sync"].task_dict["publish_policies"]
    assert [o.name for o in task.outlets] == [POLICY_CHANGES_ALIAS]
    assert [i.name for i in task.inlets] == [POLICY_CHANGES_ALIAS]  # reads what was announced before


def test_publish_emits_on_the_verdict_table_asset(dagbag):
    from safeguard_flow.airflow.assets import VERDICTS_ALIAS, verdicts_asset
    from safeguard_flow.settings import load_settings

    for dag_id in ("safeguard_nightly", "safeguard_relabel"):
        outlets = dagbag.dags[dag_id].task_dict["publish"].outlets
        assert [o.name for o in outlets] == [VERDICTS_ALIAS]  # the table is named when publish runs
    # ... from the settings publish writes with (the connection's prefix/schema over the settings')
    settings = load_settings(environ={}, warehouse={"url": "postgresql+psycopg://h/db", "table_prefix": "t_",
                                                    "db_schema": "bi"})
    assert verdicts_asset(settings).uri == "safeguard://warehouse/bi.t_verdicts"
    assert verdicts_asset(load_settings(environ={})).uri == "safeguard://warehouse/sg_verdicts"


def test_dag_files_read_no_settings_when_parsed(tmp_path):
    """A fresh process whose settings are invalid (any read would raise) parses every DAG file; the
    label tasks are the run-time-mode operator in the safeguard_label pool; sync and relabel start
    unpaused, the nightly paused (it labels on a schedule; unpause it on purpose)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "out = {'errors': {k: str(v)[-300:] for k, v in bag.import_errors.items()}, 'dags': {}}\n"
        "for dag_id, dag in bag.dags.items():\n"
        "    label = dag.task_dict.get('label')\n"
        "    out['dags'][dag_id] = {'paused': dag.is_paused_upon_creation,\n"
        "        'label': [type(label).__name__ if not hasattr(label, 'operator_class') else label.operator_class.__name__,\n"
        "                  label.pool if not hasattr(label, 'partial_kwargs') else label.partial_kwargs.get('pool')] if label else None}\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    env = {**os.environ, "SAFEGUARD_RAY__LABEL_MODE": "not-a-mode", "SAFEGUARD_CONFIG": str(tmp_path / "missing.yaml"),
           "SAFEGUARD_WAREHOUSE__TABLE_PREFIX": "not an identifier"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out["errors"] == {}
    assert set(out["dags"]) == EXPECTED
    for dag_id in ("safeguard_nightly", "safeguard_relabel"):
        assert out["dags"][dag_id]["label"] == ["LabelOperator", "safeguard_label"], dag_id
    assert out["dags"]["safeguard_policy_sync"]["paused"] is False
    assert out["dags"]["safeguard_relabel"]["paused"] is False
    assert out["dags"]["safeguard_nightly"]["paused"] is None  # Airflow's default: paused at creation


def test_plugin_creates_the_label_pool_once(airflow_db):
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from safeguard_flow.airflow import pools

    with create_session() as session:
        session.query(Pool).filter(Pool.pool == pools.LABEL_POOL).delete()
    pools.on_starting(component=object())  # a task runner: no database, nothing done
    assert Pool.get_pool(pools.LABEL_POOL) is None
    from airflow.jobs.job import Job

    Job()  # what a scheduler / triggerer / DAG processor does first: the plugin's listener runs
    pool = Pool.get_pool(pools.LABEL_POOL)
    assert pool is not None
    with create_session() as session:
        session.query(Pool).filter(Pool.pool == pools.LABEL_POOL).delete()
    assert pools.ensure_label_pool() is True
    pool = Pool.get_pool(pools.LABEL_POOL)
    assert (pool.slots, pool.include_deferred) == (1, True)
    Pool.create_or_update_pool(pools.LABEL_POOL, 3, "mine", True)
    assert pools.ensure_label_pool() is False and Pool.get_pool(pools.LABEL_POOL).slots == 3  # never overwritten


def test_relabel_params_validate(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["safeguard_relabel"].params
    assert params.validate() == {"policy": None, "version": None, "scope": "all", "since": None, "limit": None}
    good = {"policy": "spam", "version": 2, "scope": "since", "since": "2026-11-20", "limit": 10}
    for key, value in good.items():
        assert params.get_param(key).resolve(value) == value
    for key, bad in [("scope", "everything"), ("version", 0), ("limit", -1), ("since", "20/11/2026"), ("policy", 3)]:
        with pytest.raises(ParamValidationError):
            params.get_param(key).resolve(bad)


def test_relabel_targets_and_scope_rules():
    from types import SimpleNamespace

    from safeguard_flow.airflow.assets import policy_asset
    from safeguard_flow.airflow.tasks import relabel_scope, relabel_targets

    active = {"spam": 3, "self-harm": 1}
    assert relabel_targets({"policy": "spam"}, {}, active) == {"spam": 3}
    assert relabel_targets({"policy": "spam", "version": 2}, {}, active) == {"spam": 2}
    asset = policy_asset("self-harm")
    events = {asset: [SimpleNamespace(extra={"policy": "self-harm", "version": 2}, asset=asset),
                      SimpleNamespace(extra={"policy": "self-harm", "version": 3}, asset=asset)]}
    assert relabel_targets({}, events, active) == {"self-harm": 3}  # the newest announced version
    for params, message in [({}, "nothing to relabel"), ({"version": 2}, "needs params.policy"),
                            ({"policy": "nope"}, "not published")]:
        with pytest.raises(ValueError, match=message):
            relabel_targets(params, {}, active)
    assert relabel_scope({"scope": "all", "limit": 5}) == (None, 5)
    since, limit = relabel_scope({"scope": "since", "since": "2026-11-21"})
    assert since == dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc) and limit is None
    with pytest.raises(ValueError, match="params.since"):
        relabel_scope({"scope": "since"})
    with pytest.raises(ValueError, match="only used"):
        relabel_scope({"scope": "all", "since": "2026-11-21"})


def test_run_ids_are_deterministic():
    from safeguard_flow.pipeline.run_rules import interval_run_id, relabel_run_id

    start = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(days=1)
    a = interval_run_id("nightly", start, end, [("spam", 1), ("self-harm", 2)])
    assert a == interval_run_id("nightly", start, end, [("self-harm", 2), ("spam", 1)])
    assert a.startswith("nightly-20261120T000000-20261121T000000-")
    assert a != interval_run_id("nightly", start, end, [("spam", 2), ("self-harm", 2)])  # new version: new run
    assert relabel_run_id("asset_triggered__2026-11-27T10:00:00+00:00_abc", "a/b", 2) == \
        "relabel-a.b-v2-asset_triggered__2026-11-27T10_00_00_00_00_abc"
    # 'a/b' and 'a_b' are two policies: two runs (they used to collide: RunConflict).
    assert relabel_run_id("r", "a/b", 2) != relabel_run_id("r", "a_b", 2)


def test_plugin_registers_the_view():
    from airflow import plugins_manager

    plugins = {p.name: p for p in plugins_manager.get_plugins()} if hasattr(plugins_manager, "get_plugins") else None
    if plugins is None:
        plugins = {p.name: p for p in plugins_manager._get_plugins()[0]}
    plugin = plugins["safeguard_flow"]
    assert plugin.fastapi_apps[0]["url_prefix"] == "/safeguard"
    assert [m.__name__ for m in plugin.listeners] == ["safeguard_flow.airflow.pools"]
    view = plugin.external_views[0]
    assert view["url_route"] == "safeguard" and view["href"] == "safeguard/" and view["destination"] == "nav"


def test_provider_info_and_connection_types():
    import json
    from importlib.resources import files

    import jsonschema
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    from safeguard_flow.airflow.provider import get_provider_info

    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)
    pm = ProvidersManager()
    assert "safeguard-flow" in pm.providers
    hooks = ProvidersManagerTaskRuntime().hooks  # what a task resolves a conn_type to
    assert hooks["safeguard_warehouse"].hook_class_name == "safeguard_flow.airflow.warehouse_hook.SafeguardWarehouseHook"
    assert hooks["safeguard_ray"].hook_class_name == "safeguard_flow.airflow.ray_hook.RayHook"
