"""Relabel after a policy change: the content in scope, labelled with the new policy version only;
the version evaluated on its policy's eval dataset, and a diff report with the promotion gate.

Scheduled on the policy assets (through the `safeguard_policy_changes` alias the policy sync emits
on): each changed policy gets its own warehouse run, labelled, validated and published. Verdicts of
older versions stay, so the BI view `verdict_flips` shows what the new version changed.

A shadow version (published with --shadow or `shadow: true`) labels the same way while BI keeps the
promoted version; `review` writes its diff report and runs the gate, and promotes it only when
policy_gate.auto_promote is on. Otherwise `approve_promotion` (Airflow's ApprovalOperator: the task's
Required Actions page, or PATCH .../hitlDetails) asks a person, with the figures and a link to the diff
page: Approve promotes, Reject (or no answer in 3 days) leaves it in shadow, logged with who answered.

Trigger by hand with params, for example {"policy": "spam", "scope": "since", "since": "2025-01-01",
"limit": 1000} (version defaults to the active one).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from safeguard_flow.airflow import assets, tasks


@dag(
    dag_id="safeguard_relabel",
    schedule=assets.policy_changes_alias(),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # runs when a policy changes, without a manual unpause
    params=tasks.RELABEL_PARAMS,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["safeguard"],
    doc_md=__doc__,
)
def safeguard_relabel():
    runs = tasks.extract_relabel()
    labelled = tasks.label(runs, mapped=True)
    checked = tasks.validate.expand(run=runs)
    published = tasks.publish.expand(run=runs)
    labelled >> checked >> published
    reviewed = tasks.review_versions(tasks.evaluate_versions())
    published >> reviewed >> tasks.approve_promotion()


safeguard_relabel()
