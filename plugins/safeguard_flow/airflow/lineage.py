"""OpenLineage for the extract and publish tasks: which tables each read and wrote.

The `apache-airflow-providers-openlineage` listener asks a finished task's operator for
``get_openlineage_facets_on_complete(task_instance)`` (the provider's DefaultExtractor); TaskFlow's
own operator has no such method, so the extract and publish tasks are built with the decorators
below: the same Python operators plus that method. What they report:

- extract: inputs = every configured source table (`sources[i].table`, in `sources[i].url`'s
  database or the warehouse's); output = the run's work list (`<prefix>work_items`).
- publish: input = the staged verdicts (`<prefix>verdict_staging`); output = the verdict table
  (`<prefix>verdicts`), the table the BI views read.

Datasets are named as OpenLineage names SQL tables (the provider's convention, from the database
URL): PostgreSQL ``postgres://host:port`` + ``database.schema.table``; MySQL/MariaDB
``mysql://host:port`` + ``database.table``; Snowflake ``snowflake://account`` +
``DATABASE.SCHEMA.TABLE``; SQLite and DuckDB files ``sqlite:///path`` (``duckdb:///path``) +
``table`` (OpenLineage has no convention for embedded files). The names come from the settings the
task ran with (the warehouse connection applied), never from parse time. With no OpenLineage
transport configured the provider stays off and none of this runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.providers.standard.decorators.short_circuit import _ShortCircuitDecoratedOperator
from airflow.sdk.bases.decorator import task_decorator_factory

from safeguard_flow.settings import Settings

_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def table_dataset(url: str, table: str, db_schema: str | None = None):
    """The OpenLineage dataset of `table` in the database at SQLAlchemy `url`."""
    from openlineage.client.event_v2 import Dataset

    u = sa.make_url(url)
    backend = u.get_backend_name()
    host = (u.host or "localhost").lower()
    if backend == "postgresql":
        return Dataset(namespace=f"postgres://{host}:{u.port or 5432}",
                       name=f"{u.database}.{db_schema or 'public'}.{table}")
    if backend in ("mysql", "mariadb"):
        return Dataset(namespace=f"mysql://{host}:{u.port or 3306}", name=f"{db_schema or u.database}.{table}")
    if backend == "snowflake":
        database, _, schema = (u.database or "").partition("/")
        name = ".".join(p.upper() for p in (database, db_schema or schema or "PUBLIC", table))
        return Dataset(namespace=f"snowflake://{host}", name=name)
    if backend in ("sqlite", "duckdb"):
        path = Path(u.database or "").expanduser()
        return Dataset(namespace=f"{backend}://{path.resolve() if u.database else ''}", name=table)
    port = f":{u.port}" if u.port else ""
    return Dataset(namespace=f"{backend}://{host}{port}", name=".".join(p for p in (u.database, db_schema, table) if p))


def warehouse_dataset(settings: Settings, name: str):
    """A safeguard table (`name` without prefix, e.g. 'verdicts') in the configured warehouse."""
    w = settings.warehouse
    return table_dataset(settings.warehouse_url, w.table_prefix + name, w.db_schema)


def source_datasets(settings: Settings) -> list:
    return [table_dataset(s.url or settings.warehouse_url, s.table, s.db_schema) for s in settings.sources]


def step_datasets(step: str, settings: Settings) -> tuple[list, list]:
    """(inputs, outputs) of a pipeline step."""
    if step == "extract":
        return source_datasets(settings), [warehouse_dataset(settings, "work_items")]
    if step == "publish":
        return [warehouse_dataset(settings, "verdict_staging")], [warehouse_dataset(settings, "verdicts")]
    raise ValueError(f"no lineage for step {step!r}")


class _ReportsLineage:
    """`get_openlineage_facets_on_complete` for a pipeline step, from the settings of the task's
    warehouse connection (its `safeguard_conn_id` argument)."""

    lineage_step: str = ""

    def get_openlineage_facets_on_complete(self, task_instance: Any):
        from airflow.providers.openlineage.extractors import OperatorLineage

        from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

        conn_id = (getattr(self, "op_kwargs", None) or {}).get("safeguard_conn_id", SafeguardWarehouseHook.default_conn_name)
        inputs, outputs = step_datasets(self.lineage_step, SafeguardWarehouseHook(safeguard_conn_id=conn_id).settings)
        return OperatorLineage(inputs=inputs, outputs=outputs)


class ExtractOperator(_ReportsLineage, _ShortCircuitDecoratedOperator):
    """The nightly extract (short-circuits the DAG run when there is nothing to label)."""

    lineage_step = "extract"
    custom_operator_name = "@task.short_circuit"


class ExtractListOperator(_ReportsLineage, _PythonDecoratedOperator):
    """The relabel extract (returns the run ids the mapped tasks label)."""

    lineage_step = "extract"
    custom_operator_name = "@task"


class PublishOperator(_ReportsLineage, _PythonDecoratedOperator):
    lineage_step = "publish"
    custom_operator_name = "@task"


def extract_task(*, short_circuit: bool = False, **kwargs: Any):
    """Like ``@task`` / ``@task.short_circuit``, reporting the extract step's lineage."""
    return task_decorator_factory(decorated_operator_class=ExtractOperator if short_circuit else ExtractListOperator,
                                  **kwargs)


def publish_task(**kwargs: Any):
    """Like ``@task``, reporting the publish step's lineage."""
    return task_decorator_factory(decorated_operator_class=PublishOperator, **kwargs)
