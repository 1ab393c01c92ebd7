"""The policy sync's asset events through Airflow itself (dag.test, the real metadata DB): nothing for
unchanged policies or first versions, one event per change with its true previous_version, versions
published with the CLI included, each change announced once. The scheduler-driven flow (the relabel
run these events start) is in test_scheduler_flows.py."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from tests.airflow.af_support import DAGS

pytestmark = pytest.mark.slow  # five dag.test runs: about a minute


def _events() -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            sa.select(AssetModel.uri, AssetEvent.extra).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri.like("safeguard://policies/%")).order_by(AssetEvent.id)).all()
    return [{"uri": r.uri, **(r.extra or {})} for r in rows]


def test_sync_announces_each_change_once_with_its_previous_version(airflow_db, monkeypatch, sqlite_wh_settings,
                                                                   policies_dir):
    from airflow.dag_processing.dagbag import DagBag

    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.settings import get_settings
    from safeguard_flow.warehouse import db, policy_store

    settings = sqlite_wh_settings
    monkeypatch.setenv("AIRFLOW_CONN_SAFEGUARD_WAREHOUSE_DEFAULT",
                       json.dumps({"conn_type": "safeguard_warehouse", "extra": {"url": settings.warehouse_url}}))
    monkeypatch.setenv("SAFEGUARD_HOME", settings.home)
    monkeypatch.setenv("SAFEGUARD_POLICIES_DIR", str(policies_dir))
    get_settings.cache_clear()
    engine = db.make_engine(settings)
    dag = DagBag(dag_folder=str(DAGS)).dags["safeguard_policy_sync"]
    before = len(_events())

    def sync() -> list[dict]:
        dr = dag.test()
        assert dr.state == "success", [(ti.task_id, ti.state) for ti in dr.get_task_instances()]
        return _events()[before:]

    try:
        assert sync() == []  # first versions of both policies: published, not announced
        assert {p.name: p.version for p in policy_store.get_policies(engine, settings)} == {"self-harm": 1, "spam": 1}
        assert sync() == []  # unchanged

        # spam edited and published with the CLI (`safeguard-flow policies publish`): the sync announces it
        path = policies_dir / "spam.md"
        path.write_text(path.read_text(encoding="utf-8") + "\nPaid group chat invitations are spam.\n", encoding="utf-8")
        policy_store.publish_policies(engine, settings, load_policy_set(policies_dir), author="cli")
        (event,) = sync()
        assert (event["uri"], event["policy"], event["version"], event["previous_version"]) == (
            "safeguard://policies/spam", "spam", 2, 1)  # not 2 -> 2
        assert event["change_id"] and event["created"] is True
        assert len(sync()) == 1  # announced once: nothing new

        # a file edit published by the sync itself
        path = policies_dir / "self-harm.md"
        path.write_text(path.read_text(encoding="utf-8") + "\nGraphic instructions count as VIOLATES.\n", encoding="utf-8")
        assert [(e["policy"], e["version"], e["previous_version"]) for e in sync()[1:]] == [("self-harm", 2, 1)]
    finally:
        engine.dispose()
        get_settings.cache_clear()
