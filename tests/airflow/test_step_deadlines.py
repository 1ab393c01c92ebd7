"""Every step of the nightly and relabel DAGs has a deadline from the settings (issue 18): the task's
execution_timeout is deadlines.<step>_s, read from the environment when the DAG file is parsed."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.airflow.af_support import DAGS


@pytest.fixture
def fresh_tasks_module(monkeypatch):
    """The task definitions read their deadlines when airflow/tasks.py is imported (in a DAG
    processor: once per process, before it parses the DAG files). Earlier tests of this session
    imported it already: import it again under this test's environment, and again after it."""
    import importlib

    import safeguard_flow.airflow.tasks as tasks

    monkeypatch.setenv("SAFEGUARD_DEADLINES__LABEL_S", "1234")
    monkeypatch.setenv("SAFEGUARD_DEADLINES__VALIDATE_S", "321")
    importlib.reload(tasks)
    yield
    monkeypatch.undo()
    importlib.reload(tasks)


@pytest.mark.parametrize("dag_id", ["safeguard_nightly", "safeguard_relabel"])
def test_each_step_has_the_deadline_the_settings_give(fresh_tasks_module, dag_id):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags[dag_id]
    expected = {"extract": 2 * 3600, "label": 1234, "validate": 321, "publish": 3600}
    for task_id, seconds in expected.items():
        assert dag.get_task(task_id).execution_timeout == dt.timedelta(seconds=seconds), task_id


def test_a_broken_config_never_breaks_dag_parsing(monkeypatch, tmp_path):
    from safeguard_flow.airflow.ray_operator import step_timeout

    monkeypatch.setenv("SAFEGUARD_CONFIG", str(tmp_path / "missing.yaml"))
    assert step_timeout("label") == dt.timedelta(hours=6)
    monkeypatch.delenv("SAFEGUARD_CONFIG")
    monkeypatch.setenv("SAFEGUARD_DEADLINES__HEARTBEAT_S", "400")  # stale_after_s must exceed two heartbeats
    assert step_timeout("publish") == dt.timedelta(hours=1)
