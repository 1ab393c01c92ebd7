"""The validation report file of a run: ``<home>/reports/<run_id>/validation.json``.

The quality gate (quality.py) computes the report; this writes it where `runs show`, the task log
and reviewers find it, atomically (readers never see half a report).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from safeguard_flow.pipeline.expectations import ValidationReport
    from safeguard_flow.settings import Settings


def report_path(settings: Settings, run_id: str) -> Path:
    return settings.home_path / "reports" / _safe_name(run_id or "adhoc") / "validation.json"


def save_report(settings: Settings, report: ValidationReport) -> Path:
    """Write the full validation result JSON for the run; returns its path."""
    path = report_path(settings, report.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**report.result, "summary": report.summary}, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def _safe_name(run_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)[:200]
