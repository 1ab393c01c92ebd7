"""Validate, the third step: the Great Expectations suites (pipeline/expectations.py) over the run's
staged verdicts, one per policy version, against its own policy versions and item count.

Each policy version is judged on its own (one row per version in `sg_run_gates`, warehouse/run_gates.py):

- every version passed: the run becomes validated;
- some passed: the run becomes validated with a warning per quarantined version (publish merges only
  the versions that passed; a shadow version's failure never holds back an active one);
- none passed: the run is quarantined (publish refuses it) and QualityGateFailed is raised.

The suites never see a verdict: the warehouse counts the staged verdicts per (version, status, label)
in one GROUP BY (staging.staged_tally), so memory stays flat whatever the run's size and the texts,
rationales and raw outputs stay in the database. Either way the full result is written to
``<home>/reports/<run_id>/validation.json`` (where `runs show`, the task log and reviewers find it) and
stored on the run row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safeguard_flow.pipeline.cascade_check import apply_cascade_checks
from safeguard_flow.pipeline.expectations import QualityGateFailed, ValidationReport, validate_tallies
from safeguard_flow.pipeline.run_rules import failing, resume_if_failed
from safeguard_flow.warehouse import policy_store, run_gates, runs, staging
from safeguard_flow.warehouse.db import utcnow, write_tx
from safeguard_flow.warehouse.errors import RunStateError
from safeguard_flow.warehouse.runs import RunStatus
from safeguard_flow.warehouse.verdict_rates import trailing_rates

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings


def validate_run(sql_engine: Engine, settings: Settings, run_id: str) -> ValidationReport:
    """Run the suites on a labelled run; raises QualityGateFailed (carrying the readable summary) when
    no policy version passed (the run is quarantined). A run validated or published before gets its
    stored result back (its staging may be purged)."""
    run = resume_if_failed(sql_engine, settings, runs.get_run(sql_engine, settings, run_id))
    if run.status in (RunStatus.VALIDATED, RunStatus.PUBLISHED):
        stored = run.validation or {}
        summary = stored.get("summary") or f"run {run_id} was already validated"
        return ValidationReport(run_id, True, summary, stored, rows=int(run.verdicts or 0), path=stored.get("report_path"))
    if run.status is not RunStatus.LABELLED:
        raise RunStateError(f"run {run_id!r} is {run.status.value}: the quality gate needs a labelled run")
    with failing(sql_engine, settings, run_id, "validate"):
        policies = policy_store.get_policies(sql_engine, settings, run.policy_refs)
        tallies = staging.staged_tally(sql_engine, settings, run_id)
        # The drift check compares each policy version with its own earlier published verdicts.
        trailing = trailing_rates(sql_engine, settings, policies, exclude_run_id=run_id)
        report = validate_tallies(tallies, policies, settings.quality, run_id=run_id, expected_items=run.items,
                                  trailing=trailing, shadow=_shadow_refs(sql_engine, settings, run.policy_refs))
        report = apply_cascade_checks(sql_engine, settings, report)  # audit agreement and share per version
        report.path = str(save_report(settings, report))
        validation = {**report.result, "summary": report.summary, "report_path": report.path}
        with write_tx(sql_engine) as conn:
            run_gates.record(conn, settings, run_id, [v.to_dict() for v in report.versions])
            if report.success:
                runs.transition(conn, settings, run_id, RunStatus.VALIDATED, validation=validation,
                                validated_at=utcnow())
                for v in report.quarantined:
                    first = (v.reason or "").splitlines()[0] if v.reason else "failed the gate"
                    runs.add_warning(conn, settings, run_id, f"quarantined {v.key}{' (shadow)' if v.shadow else ''}, "
                                     f"not published: {first}" + (" (and more)" if v.failed > 1 else ""))
            else:
                runs.transition(conn, settings, run_id, RunStatus.QUARANTINED, validation=validation,
                                error=report.summary)
    if not report.success:
        raise QualityGateFailed(report)
    return report


def _shadow_refs(sql_engine: Engine, settings: Settings, refs) -> set[tuple[str, int]]:
    """Which of the run's policy versions are their policy's shadow version now."""
    out = set()
    for name, version in refs:
        head = policy_store.get_head(sql_engine, settings, name)
        if head is not None and head.shadow_version == version:
            out.add((name, int(version)))
    return out


def report_path(settings: Settings, run_id: str) -> Path:
    return settings.home_path / "reports" / _safe_name(run_id or "adhoc") / "validation.json"


def save_report(settings: Settings, report: ValidationReport) -> Path:
    """Write the full validation result JSON for the run, atomically (readers never see half a report)."""
    path = report_path(settings, report.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**report.result, "summary": report.summary}, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def _safe_name(run_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)[:200]
