"""Nightly labelling: each day's new or edited content against the active version of every policy.

extract -> label (a Ray job, deferrable) -> validate (Great Expectations gate) -> publish.

One run per data interval [00:00, 24:00) UTC. Reruns of an interval continue the same warehouse run
(same rows, never duplicates). Label past days with (the DAG must be unpaused; Airflow's backfill
ignores the DAG's max_active_runs, hence the flag; label tasks also share the safeguard_label pool):

    airflow backfill create --dag-id safeguard_nightly --from-date 2025-01-01 --to-date 2025-01-07 --max-active-runs 1

The quality gate judges each policy version on its own: versions that fail are quarantined (the
validate task logs a warning per version, with why) and the others published; when none passes the
run is quarantined and nothing is published: see the validate task's log (and
<home>/reports/<run_id>/validation.json); clear the DAG run to retry after a fix (a partly quarantined
run then relabels only its quarantined versions). After publishing, the publish task runs the
retention pass (settings retention.*).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag

from safeguard_flow.airflow import tasks


@dag(
    dag_id="safeguard_nightly",
    # Data-interval schedule (not a plain cron trigger): each run owns the day it labels.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,  # history is labelled with `airflow backfill create`, on purpose
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["safeguard"],
    doc_md=__doc__,
)
def safeguard_nightly():
    run = tasks.extract_interval()
    labelled = tasks.label(run)
    checked = tasks.validate(run)
    labelled >> checked >> tasks.publish(run)


safeguard_nightly()
