"""The label step's operator: the label mode is read when the task runs, never when a DAG is parsed.

``ray.label_mode: job`` submits the label job to the Ray cluster and defers (RayLabelJobOperator);
``in_process`` runs the same label job inside this worker on a local (or ``ray.address``) Ray, for
laptops and ``make demo``. Either way the settings are the ones the warehouse connection gives,
so the mode (and the warehouse) can change without touching the DAG files.
"""

from __future__ import annotations

from typing import Any

from safeguard_flow.airflow.ray_operator import RayLabelJobOperator


class LabelOperator(RayLabelJobOperator):
    """Label one warehouse run (``run_id``) as ``ray.label_mode`` says; returns the job summary."""

    ui_color = "#e3ecff"

    def execute(self, context: Any) -> Any:
        if self.settings.ray.label_mode == "in_process":
            from safeguard_flow import pipeline
            from safeguard_flow.warehouse.db import make_engine

            self.log.info("ray.label_mode is in_process: labelling run %s in this worker", self.run_id)
            engine = make_engine(self.settings)
            try:
                outcome = pipeline.label_run(engine, self.settings, self.run_id)
            except pipeline.LabelJobFailed as exc:
                raise RuntimeError(str(exc)) from None  # the run is marked failed; Airflow's retry resumes it
            finally:
                engine.dispose()
            return outcome.summary or {"run_id": self.run_id, "chunks_labelled": 0}
        return super().execute(context)
