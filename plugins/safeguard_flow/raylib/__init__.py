"""Ray adapters: the batch label job (Ray Data replicas), the Serve app, and the local Ray head.

Importing this package is cheap: Ray, vLLM and the warehouse load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from safeguard_flow.raylib.batch.runner import LabelJobError, run_label_job
    from safeguard_flow.raylib.batch.summary import LabelJobSummary

__all__ = ["run_label_job", "LabelJobSummary", "LabelJobError"]


def __getattr__(name: str) -> Any:
    if name in ("run_label_job", "LabelJobError"):
        from safeguard_flow.raylib.batch import runner

        return getattr(runner, name)
    if name == "LabelJobSummary":
        from safeguard_flow.raylib.batch.summary import LabelJobSummary

        return LabelJobSummary
    raise AttributeError(name)
