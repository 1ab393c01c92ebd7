"""Policy sync: store changed policy files as new immutable versions and announce them.

Reads the policy directory (settings policies_dir, or the `directory` param), publishes every policy
whose text changed as a new version (the same text never becomes two versions), and emits one asset
event per change not announced yet (including versions published with the CLI), on
`safeguard://policies/<name>` with extra {policy, version, sha256, previous_version, change_id}.
Unchanged policies and first versions get none. safeguard_relabel is scheduled on them.
Unpaused when first parsed, like safeguard_relabel, so a policy change is relabelled without a click.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

from safeguard_flow.airflow import tasks


@dag(
    dag_id="safeguard_policy_sync",
    schedule="@hourly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # reacting to policy changes needs no manual unpause
    params={"directory": Param(None, type=["null", "string"], description="Policy folder (default: settings policies_dir).")},
    tags=["safeguard"],
    doc_md=__doc__,
)
def safeguard_policy_sync():
    tasks.sync_policies()


safeguard_policy_sync()
