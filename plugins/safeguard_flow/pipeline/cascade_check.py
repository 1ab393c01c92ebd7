"""The quality gate's cascade checks, per policy version the cascade served in the run (sg_cascade_chunks):

- audit agreement: the decided pairs that were still sent to the model agree with it; a version whose
  audit says the cascade is under cascade.min_agreement (the same rule that switches it off during the
  run: at least cascade.min_audit audited pairs, upper confidence bound under the threshold) is
  quarantined, since the pairs the cascade decided before it was switched off are not trustworthy;
- cascade share: the share of pairs the cascade decided, set beside the share its held-out table
  promised; reported (observed), and failing only when it decided pairs without a single audit while
  cascade.audit_rate asks for audits (then agreement is not measured at all).

Added to the report the suites made (expectations.validate_tallies), so the per-version outcome, the
run gates and the summary carry them like any other check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safeguard_flow.labelling.cascade_route import switched_off
from safeguard_flow.pipeline.expectations import CheckResult, ValidationReport, summarise

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings

SUITE_KIND = "cascade"


def cascade_checks(sql_engine: Engine, settings: Settings, run_id: str) -> dict[tuple[str, int], list[CheckResult]]:
    from safeguard_flow.warehouse import cascades

    cfg = settings.cascade
    out: dict[tuple[str, int], list[CheckResult]] = {}
    for (policy, version), f in cascades.run_figures(sql_engine, settings, run_id).items():
        key = f"{policy} v{version}"
        if not f["decided"]:
            continue
        bad = switched_off(f["audited"], f["audit_agree"], min_agreement=cfg.min_agreement,
                           min_audit=cfg.min_audit, confidence=cfg.bound_confidence)
        agreement = f"{f['audit_agree']}/{f['audited']} audited pairs agree with the model" + (
            f" ({f['audit_agree'] / f['audited']:.1%})" if f["audited"] else "")
        share = f["decided"] / f["items"] if f["items"] else 0.0
        promised = _heldout_share(sql_engine, settings, f.get("cascade_id"))
        unaudited = f["audited"] == 0 and cfg.audit_rate > 0 and f["decided"] * cfg.audit_rate >= 5
        out[(policy, version)] = [
            CheckResult(key, f"cascade audit agreement at least cascade.min_agreement {cfg.min_agreement}", not bad,
                        agreement, SUITE_KIND),
            CheckResult(key, "cascade share decided, audited (cascade.audit_rate)", not unaudited,
                        f"decided {f['decided']} of {f['items']} pairs ({share:.1%}"
                        + (f"; held-out {promised:.1%}" if promised is not None else "") + f"), audited {f['audited']}",
                        SUITE_KIND),
        ]
    return out


def _heldout_share(sql_engine, settings, cascade_id) -> float | None:
    if cascade_id is None:
        return None
    import sqlalchemy as sa

    from safeguard_flow.warehouse.schema import tables

    t = tables(settings).cascades
    with sql_engine.connect() as conn:
        return conn.execute(sa.select(t.c.share_decided).where(t.c.id == int(cascade_id))).scalar_one_or_none()


def apply_cascade_checks(sql_engine: Engine, settings: Settings, report: ValidationReport) -> ValidationReport:
    """Add the cascade checks to the report; a version failing one is quarantined like any other failure."""
    checks = cascade_checks(sql_engine, settings, report.run_id)
    if not checks:
        return report
    for gate in report.versions:
        mine = checks.get((gate.policy, gate.version), [])
        report.checks += mine
        failed = [c for c in mine if not c.success]
        gate.checks += len(mine)
        if failed:
            gate.passed = False
            gate.failed += len(failed)
            gate.reason = "\n".join([*(gate.reason.splitlines() if gate.reason else []),
                                     *(f"{c.check}: {c.observed}" for c in failed)])
    report.success = report.success and any(v.passed for v in report.versions)
    report.result["success"] = report.success
    report.result["versions"] = {v.key: v.to_dict() for v in report.versions}
    report.result["quarantined"] = [v.key for v in report.versions if not v.passed]
    report.result["cascade"] = {f"{p} v{v}": [c.__dict__ for c in cs] for (p, v), cs in checks.items()}
    report.summary = summarise(report)
    return report
