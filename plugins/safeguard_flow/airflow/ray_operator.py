"""Operators that run Ray jobs: any entrypoint (RayJobOperator) and the label job (RayLabelJobOperator).

Deferrable as ``[operators] default_deferrable`` says where a deployment sets it, and by default
otherwise (a label job waits minutes to hours: the triggerer's work, not a worker slot's): the task
submits the job and hands the wait to RayJobTrigger, which streams the job's log into the task log.
`deferrable=False` waits in the worker instead. The task shows a "Ray job" link to the job's page
in the Ray dashboard. Killing the task
stops the job (operator.on_kill while waiting in the worker, trigger.on_kill while deferred).
A failed job fails the task with the job's last log lines.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException

from safeguard_flow.airflow.ray_hook import RayHook, log_tail
from safeguard_flow.airflow.ray_trigger import RayJobTrigger
from safeguard_flow.settings import Settings, get_settings


def step_timeout(step: str) -> timedelta:
    """A task's execution_timeout: deadlines.<step>_s (extract, label, validate, publish). Read when a
    DAG file is parsed, so from the environment and SAFEGUARD_CONFIG only (never the warehouse
    connection, never a failure: defaults if the settings do not load). When it passes, Airflow raises
    in the task and the step's failure path fails the run with the reason."""
    from safeguard_flow.settings import DeadlineSettings, SettingsError, load_settings

    try:
        deadlines = load_settings().deadlines
    except (SettingsError, OSError, ValueError):
        deadlines = DeadlineSettings()
    return timedelta(seconds=deadlines.for_step(step))


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` where airflow.cfg or the environment sets it; True where only
    Airflow's own default (false) would say."""
    import configparser
    import os

    from airflow.configuration import conf

    if conf.getboolean("operators", "default_deferrable", fallback=False):
        return True
    # False here is either Airflow's default or a deployment's choice: only the latter turns deferral
    # off. (Read from the environment and the file only: no *_cmd or secrets backend is consulted.)
    explicit = os.environ.get("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE") is not None or \
        configparser.ConfigParser.get(conf, "operators", "default_deferrable", fallback=None) is not None
    return not explicit


class RayJobLink(BaseOperatorLink):
    """The job's page in the Ray dashboard (empty while no job was submitted, or in in_process mode)."""

    name = "Ray job"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        job_id = getattr(operator, "job_id", None)
        url = getattr(operator, "dashboard_url", None)
        return f"{url.rstrip('/')}/#/jobs/{job_id}" if job_id and url else ""


class RayJobOperator(BaseOperator):
    """Submit `entrypoint` as a Ray job and wait for it; returns the job's summary (if it printed one) or its id."""

    template_fields: Sequence[str] = ("entrypoint", "runtime_env", "metadata")
    template_fields_renderers = {"runtime_env": "json", "metadata": "json"}
    ui_color = "#d6e6ff"
    operator_extra_links = (RayJobLink(),)

    def __init__(
        self,
        *,
        entrypoint: str,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        ray_conn_id: str | None = RayHook.default_conn_name,
        deferrable: bool | None = None,
        poll_interval: float | None = None,
        job_timeout: float | None = None,
        entrypoint_num_cpus: float | None = None,
        settings: Settings | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.runtime_env = runtime_env or {}
        self.metadata = metadata or {}
        self.ray_conn_id = ray_conn_id
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self._settings = settings
        self.job_id: str | None = None
        self.dashboard_url: str | None = None  # for RayJobLink

    @cached_property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @cached_property
    def hook(self) -> RayHook:
        return RayHook(ray_conn_id=self.ray_conn_id, settings=self.settings)

    # Subclasses shape the submission; the generic operator sends what it was given.
    def build_entrypoint(self, context: Any) -> str:
        return self.entrypoint

    def build_runtime_env(self, context: Any) -> dict[str, Any]:
        return dict(self.runtime_env)

    def build_metadata(self, context: Any) -> dict[str, str]:
        meta = {str(k): str(v) for k, v in self.metadata.items()}
        ti = context.get("ti") if context else None
        if ti is not None:
            meta.setdefault("airflow_dag_id", str(ti.dag_id))
            meta.setdefault("airflow_task_id", str(ti.task_id))
            meta.setdefault("airflow_run_id", str(ti.run_id))
        return meta

    def find_existing_job(self, context: Any) -> str | None:
        """A job to reconnect to instead of submitting (none for the generic operator)."""
        return None

    def execute(self, context: Any) -> Any:
        poll = self.poll_interval or self.settings.ray.poll_interval_s
        timeout = self.job_timeout or self.settings.ray.job_timeout_s
        self.job_id = self.find_existing_job(context)
        if self.job_id:
            self.log.info("reconnecting to the running Ray job %s instead of submitting a new one", self.job_id)
        else:
            self.job_id = self.hook.submit_job(
                self.build_entrypoint(context),
                runtime_env=self.build_runtime_env(context),
                metadata=self.build_metadata(context),
                entrypoint_num_cpus=self.entrypoint_num_cpus,
            )
        self.dashboard_url = self.hook.target.dashboard_url
        ti = context.get("ti") if context else None
        if ti is not None:
            ti.xcom_push(key="ray_job_id", value=self.job_id)
            ti.xcom_push(key="ray_dashboard_url", value=self.dashboard_url)
        if self.deferrable:
            self.defer(
                trigger=RayJobTrigger(
                    job_id=self.job_id,
                    dashboard_url=self.hook.target.dashboard_url,
                    ray_conn_id=self.ray_conn_id,
                    poll_interval=poll,
                    deadline=time.time() + timeout,
                ),
                method_name="execute_complete",
            )
        status = self.hook.wait_for_job(self.job_id, poll_interval=poll, timeout=timeout, on_log=self.log.info)
        logs = self.hook.get_job_logs(self.job_id)
        from safeguard_flow.raylib.batch.summary import parse_marker

        event = {"status": status, "job_id": self.job_id, "log_tail": log_tail(logs),
                 "message": self.hook.get_job_info(self.job_id).message or "", "summary": parse_marker(logs)}
        return self.execute_complete(context, event)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self.job_id = event.get("job_id") or self.job_id
        if self.dashboard_url is None and context and context.get("ti") is not None:  # resumed after deferral
            self.dashboard_url = context["ti"].xcom_pull(task_ids=context["ti"].task_id, key="ray_dashboard_url")
        status = event.get("status")
        if status != "SUCCEEDED":
            raise AirflowException(
                f"Ray job {self.job_id} ended {status}: {event.get('message') or 'no message'}\n"
                f"--- last lines of the job log ---\n{event.get('log_tail') or '(empty)'}"
            )
        self.log.info("Ray job %s succeeded", self.job_id)
        return event.get("summary") or {"job_id": self.job_id}

    def on_kill(self) -> None:
        if self.job_id:
            self.hook.stop_job(self.job_id)


class RayLabelJobOperator(RayJobOperator):
    """Run the label job (`python -m safeguard_flow.raylib.batch.job label`) for one run on the Ray cluster;
    returns the job summary (counts, items/s, tokens).

    The job gets the package as py_modules (never this worker's working folder) and the settings as
    one JSON document in its runtime_env, with the warehouse taken from the warehouse connection
    (`warehouse_conn_id`) when one is configured. Secrets (the warehouse password, an API key) are not
    in that document: they are stored in the cluster under a one-off name the job reads once (see
    safeguard_flow.raylib.shipping.job_secrets). If a job for the same run is still running (a retried task, a
    worker that died), the operator follows it instead of submitting a second one.
    """

    template_fields: Sequence[str] = (*RayJobOperator.template_fields, "run_id")

    def __init__(
        self,
        *,
        run_id: str,
        warehouse_conn_id: str | None = "safeguard_warehouse_default",
        num_replicas: int | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("entrypoint", "")
        kwargs.setdefault("execution_timeout", step_timeout("label"))
        super().__init__(**kwargs)
        self.run_id = run_id
        self.warehouse_conn_id = warehouse_conn_id
        self.num_replicas = num_replicas
        self._job_secrets: dict[str, str] | None = None

    @cached_property
    def settings(self) -> Settings:
        if self._settings is not None:
            return self._settings
        if self.warehouse_conn_id:
            from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

            return SafeguardWarehouseHook(self.warehouse_conn_id).settings
        return get_settings()

    def build_runtime_env(self, context: Any) -> dict[str, Any]:
        from safeguard_flow.raylib.shipping.submission import label_job_runtime_env

        env, self._job_secrets = label_job_runtime_env(self.settings, local=self.hook.target.local,
                                                       extra=self.runtime_env)
        return env

    def build_entrypoint(self, context: Any) -> str:
        from safeguard_flow.raylib.shipping.submission import label_job_entrypoint

        if self._job_secrets is None:
            self.build_runtime_env(context)
        uri = self.hook.put_job_secrets(self._job_secrets) if self._job_secrets else None
        return label_job_entrypoint(self.run_id, self.num_replicas, secrets_uri=uri)

    def build_metadata(self, context: Any) -> dict[str, str]:
        from safeguard_flow.raylib.shipping.submission import RUN_ID_METADATA

        return {**super().build_metadata(context), RUN_ID_METADATA: self.run_id}

    def find_existing_job(self, context: Any) -> str | None:
        from safeguard_flow.raylib.shipping.submission import RUN_ID_METADATA

        return self.hook.find_active_job({RUN_ID_METADATA: self.run_id})

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") != "SUCCEEDED":
            self._fail_run(f"label job: Ray job {event.get('job_id') or self.job_id} ended {event.get('status')}: "
                           f"{event.get('message') or 'no message'}")
        return super().execute_complete(context, event)

    def _fail_run(self, reason: str) -> None:
        """A job whose driver died cannot say so itself: the run is marked failed here (a no-op when
        the job already failed it); the task's retry resumes it."""
        from safeguard_flow.pipeline.run_rules import mark_failed
        from safeguard_flow.warehouse import db

        sql_engine = db.make_engine(self.settings)
        try:
            mark_failed(sql_engine, self.settings, self.run_id, reason)  # keeps the job's own error as the task's
        finally:
            sql_engine.dispose()
