"""Run by test_lineage.py in a process of its own (OpenLineage reads its transport once, at import):
one nightly interval through the nightly DAG's own extract and publish tasks, with the warehouse
tests' keyword model as the label step (the model is not what lineage is about) and the gate
passed by the warehouse helper. The OpenLineage provider's listener writes the events to the file
transport the environment names (AIRFLOW__OPENLINEAGE__TRANSPORT).

    python -m tests.bi.lineage_run 2024-03-02
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from safeguard_flow.airflow import tasks


@task(task_id="label")
def keyword_label(run_id: str) -> None:
    from tests.warehouse.warehouse_helpers import Warehouse

    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

    hook = SafeguardWarehouseHook()
    wh = Warehouse(hook.settings, hook.get_engine())
    try:
        wh.label(run_id)
        wh.validate(run_id)
    finally:
        hook.close()


@dag(dag_id="safeguard_nightly_lineage", schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
     start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False)
def nightly_lineage():
    run = tasks.extract_interval()
    keyword_label(run) >> tasks.publish(run)


if __name__ == "__main__":
    dr = nightly_lineage().test(logical_date=pendulum.parse(sys.argv[1]))
    print(f"dag run state: {dr.state}")
    sys.exit(0 if str(dr.state) in ("success", "DagRunState.SUCCESS") else 1)
