"""The labelling pipeline as plain functions, one module per step, in the order a run takes them:

    extract.py   create the run by the run rules and write its work list (warehouse/extract.py: the SQL)
    label.py     label the pending chunks in a worker process (label_worker.py) through the Ray label job
    validate.py  the Great Expectations suite (expectations.py) over the staged verdicts: validated or quarantined
    publish.py   merge the validated verdicts into the verdict table in one transaction (warehouse/publish.py)
    run_rules.py run ids, the pipeline's errors and the one failure path every step and caller uses

The Airflow tasks (airflow/tasks.py), the CLI (`safeguard-flow run`) and the tests call the names
below, so the whole pipeline runs without Airflow, with the same run ids and tables. No Airflow, Ray
or vLLM is imported here; the label step loads raylib when it runs in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safeguard_flow.pipeline.extract import extract_run, start_interval_run, start_relabel_run
from safeguard_flow.pipeline.label import LabelOutcome, label_run
from safeguard_flow.pipeline.publish import publish_run
from safeguard_flow.pipeline.run_rules import (
    LabelJobFailed,
    PipelineError,
    cli_relabel_trigger,
    day_interval,
    interval_run_id,
    needs_work,
    relabel_run_id,
)
from safeguard_flow.pipeline.validate import validate_run
from safeguard_flow.warehouse import runs
from safeguard_flow.warehouse.runs import Run

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.pipeline.expectations import ValidationReport
    from safeguard_flow.settings import Settings

__all__ = [
    "LabelJobFailed", "LabelOutcome", "PipelineError", "PipelineResult", "cli_relabel_trigger", "day_interval",
    "extract_run", "finish", "interval_run_id", "label_run", "needs_work", "publish_run", "relabel_run_id",
    "start_interval_run", "start_relabel_run", "validate_run",
]


@dataclass
class PipelineResult:
    run: Run
    labelled: LabelOutcome | None = None
    report: ValidationReport | None = None
    published: dict[str, Any] | None = None


def finish(sql_engine: Engine, settings: Settings, run_id: str, **label_kw: Any) -> PipelineResult:
    """Label, validate and publish an extracted run (each step skips what is done already)."""
    labelled = label_run(sql_engine, settings, run_id, **label_kw)
    report = validate_run(sql_engine, settings, run_id)
    published = publish_run(sql_engine, settings, run_id)
    return PipelineResult(runs.get_run(sql_engine, settings, run_id), labelled, report, published)
