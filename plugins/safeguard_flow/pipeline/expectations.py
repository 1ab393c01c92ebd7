"""The quality gate: Great Expectations suites over one run's staged verdicts, one per policy version.

Each policy version the run labels is judged on its own: a version that fails is quarantined and the
others are published (a shadow version whose text the model cannot take never holds back the active
versions). For each version, from the policy (its label set) and the settings (``quality.*``):

- every label is in the policy's label set, every ``ok`` verdict carries a label, every status is known;
- when the caller knows how many items were extracted, every item got a verdict of this version;
- the error rate of the model (engine and parse errors, among verdicts that reached it) is at most
  ``quality.max_error_rate``; input errors (NULL, empty, undecodable content, repeated ids) judge the
  content, not the model: they are counted apart and bounded by ``quality.max_input_error_rate``
  (off by default), so whoever writes a share of the posts cannot quarantine the day;
- the positive rate among labelled verdicts is within ``quality.min/max_positive_rate`` and, once the
  policy version has a history, within ``quality.drift_tolerance`` of its trailing rate over its last
  published verdicts (both need ``quality.min_sample`` labelled verdicts of the version in the run).

One whole-run check: only the run's own policy versions appear (anything else is a broken label job,
and nothing of the run is published). One verdict per key needs no check: it is staging's primary key.

Bounded memory: the suites never see a verdict. The warehouse counts the staged verdicts per (policy
version, status, label) in one GROUP BY (``warehouse/staging.staged_tally``; texts, rationales and raw
output stay in the database), and GX validates per version a frame of those distinct values with
their counts (statuses, labels, the verdict count as the sum of the counts) and a one-row frame of the
rates measured from them. Whatever the run's size, the frames hold a few rows.

Great Expectations is used as a library (an ephemeral context with a pandas data source), so this
module needs no Airflow, no warehouse and no files: :func:`validate_tallies` is pure
(:func:`validate_frame` takes verdicts as a DataFrame, for small runs and tests). Applying the gate to
a run (validated, partly quarantined or quarantined; the report file, the per-version rows) is
``pipeline/validate.py``. A gate that quarantines every version raises :class:`QualityGateFailed`,
whose message lists the failed expectations in words.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.verdicts import INPUT_ERROR, OK, PARSE_STATUSES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from safeguard_flow.settings import QualitySettings

# Columns of a verdict frame validate_frame reads. The key identifies one verdict.
KEY_COLUMNS = ("source", "content_id", "policy", "policy_version")
REQUIRED_COLUMNS = (*KEY_COLUMNS, "label", "parse_status")
RUN_SUITE = "run"

VersionRef = tuple[str, int]
# (policy, version) -> [(parse_status, label or None, verdicts)]: what staging holds, counted.
Tallies = Mapping[VersionRef, Sequence[tuple[str, "int | None", int]]]


class QualityGateFailed(RuntimeError):
    """No policy version of the run passed the quality gate; the message is the readable summary."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary)


@dataclass
class CheckResult:
    """One expectation's outcome, in words a reviewer can act on."""

    suite: str
    check: str  # what was expected, naming the setting that bounds it
    success: bool
    observed: str  # what was found
    expectation: str  # the GX expectation type, for finding it in the JSON


@dataclass
class VersionGate:
    """The gate's decision for one policy version of the run."""

    policy: str
    version: int
    passed: bool
    shadow: bool = False
    reason: str | None = None  # the failed checks, one per line (None when it passed)
    checks: int = 0
    failed: int = 0
    verdicts: int = 0
    errors: int = 0
    positives: int = 0

    @property
    def key(self) -> str:
        return f"{self.policy} v{self.version}"

    @property
    def outcome(self) -> str:
        return "passed" if self.passed else "quarantined"

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "version": self.version, "outcome": self.outcome, "shadow": self.shadow,
                "reason": self.reason, "checks": self.checks, "failed": self.failed, "verdicts": self.verdicts,
                "errors": self.errors, "positives": self.positives}


@dataclass
class ValidationReport:
    run_id: str
    success: bool  # at least one policy version passed (its verdicts may be published)
    summary: str
    result: dict[str, Any]  # JSON-safe: per-suite GX results plus our own statistics
    checks: list[CheckResult] = field(default_factory=list)
    rows: int = 0
    path: str | None = None  # where the JSON was saved, if it was
    versions: list[VersionGate] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    @property
    def passed_refs(self) -> list[VersionRef]:
        return [(v.policy, v.version) for v in self.versions if v.passed]

    @property
    def quarantined(self) -> list[VersionGate]:
        return [v for v in self.versions if not v.passed]

    @property
    def partial(self) -> bool:
        """Some versions passed and some were quarantined: published with warnings."""
        return self.success and bool(self.quarantined)


@dataclass
class _Tally:
    """One policy version's staged verdicts, counted: (parse_status, label) -> verdicts."""

    groups: list[tuple[str, int | None, int]]

    def count(self, status: str | None = None, *, not_status: str | None = None) -> int:
        return sum(n for s, _, n in self.groups if (status is None or s == status) and s != not_status)

    @property
    def verdicts(self) -> int:
        return self.count()

    @property
    def errors(self) -> int:
        return self.verdicts - self.count(OK)

    @property
    def input_errors(self) -> int:
        return self.count(INPUT_ERROR)

    @property
    def labelled(self) -> int:
        return sum(n for s, label, n in self.groups if s == OK and label is not None)

    @property
    def positives(self) -> int:
        # Positive = label >= 1 (SAFE is 0), the same rule as the BI views.
        return sum(n for s, label, n in self.groups if s == OK and label is not None and label >= 1)

    def labels(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, label, n in self.groups:
            if s == OK and label is not None:
                out[str(label)] = out.get(str(label), 0) + n
        return dict(sorted(out.items()))

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, _, n in self.groups:
            out[s] = out.get(s, 0) + n
        return out


def tally_frame(frame: pd.DataFrame) -> dict[VersionRef, list[tuple[str, int | None, int]]]:
    """Count a frame of verdicts as staging.staged_tally counts the staged rows."""
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"staged verdicts lack column(s) {', '.join(missing)}; the gate needs {', '.join(REQUIRED_COLUMNS)}")
    out: dict[VersionRef, list[tuple[str, int | None, int]]] = {}
    if frame.empty:
        return out
    counted = frame.groupby(["policy", "policy_version", "parse_status", "label"], dropna=False).size()
    for (name, version, status, label), n in counted.items():
        label = None if pd.isna(label) else int(label)
        out.setdefault((str(name), int(version)), []).append((str(status), label, int(n)))
    return out


def validate_frame(frame: pd.DataFrame, policies: Sequence[Policy], quality: QualitySettings, *, run_id: str = "",
                   expected_items: int | None = None, trailing: dict[VersionRef, tuple[int, int]] | None = None,
                   shadow: Iterable[VersionRef] = ()) -> ValidationReport:
    """The gate over verdicts held in a DataFrame (small runs, tests): counted, then validate_tallies."""
    return validate_tallies(tally_frame(frame), policies, quality, run_id=run_id, expected_items=expected_items,
                            trailing=trailing, shadow=shadow)


def validate_tallies(
    tallies: Tallies,
    policies: Sequence[Policy],
    quality: QualitySettings,
    *,
    run_id: str = "",
    expected_items: int | None = None,
    trailing: dict[VersionRef, tuple[int, int]] | None = None,
    shadow: Iterable[VersionRef] = (),
) -> ValidationReport:
    """Judge each policy version of the run on its own; pure (no warehouse, no files).

    `tallies` maps (policy, version) to its staged verdicts counted per (parse_status, label);
    `trailing` maps (policy, version) to (positives, labelled) of its earlier published verdicts (see
    warehouse/verdict_rates.py), for the drift check; `shadow` names the run's shadow versions."""
    import pandas as pd

    context, batch_definition = _gx_batch_definition()
    shadow = {(str(n), int(v)) for n, v in shadow}
    suites: dict[str, Any] = {}
    checks: list[CheckResult] = []

    # Whole run: only the run's policy versions appear. Anything else is a broken label job.
    refs = sorted({(p.name, int(p.version or 0)) for p in policies}, key=str)
    present = pd.DataFrame([{"policy": n, "policy_version": v, "n": sum(c for _, _, c in groups)}
                            for (n, v), groups in sorted(tallies.items(), key=str)],
                           columns=["policy", "policy_version", "n"])
    run_suite = _run_suite(refs)
    outcome = _validate(context, batch_definition, run_suite, present)
    suites[RUN_SUITE] = outcome
    run_checks = _checks(RUN_SUITE, outcome, {})
    checks += run_checks
    run_ok = all(c.success for c in run_checks)

    versions: list[VersionGate] = []
    for policy in policies:
        ref = (policy.name, int(policy.version or 0))
        tally = _Tally([(s, None if lab is None else int(lab), int(n)) for s, lab, n in tallies.get(ref, [])])
        if not tally.groups and expected_items is None:
            continue  # nothing to judge and nothing expected (for example a frame of an empty interval)
        history = (trailing or {}).get(ref)
        name = f"{policy.name} v{policy.version}"
        values_suite, measures_suite = _policy_suites(name, policy, quality, tally, expected_items, history)
        values = pd.DataFrame(tally.groups, columns=["parse_status", "label", "n"]).astype({"label": "Int64"})
        first = _validate(context, batch_definition, values_suite, values)
        second = _validate(context, batch_definition, measures_suite, _measures(tally))
        suites[name] = _merged(first, second)
        mine = _checks(name, first, {"tally": tally}) + _checks(name, second, {"tally": tally})
        checks += mine
        failed = [c for c in mine if not c.success] + ([] if run_ok else [c for c in run_checks if not c.success])
        versions.append(VersionGate(
            policy.name, int(policy.version or 0), passed=not failed, shadow=ref in shadow,
            reason="\n".join(f"{c.check}: {c.observed}" for c in failed) or None, checks=len(mine),
            failed=len(failed), verdicts=tally.verdicts, errors=tally.errors, positives=tally.positives))

    success = run_ok and (any(v.passed for v in versions) or not versions)
    rows = sum(n for groups in tallies.values() for _, _, n in groups)
    result = {
        "run_id": run_id,
        "success": success,
        "validated_at": datetime.now(timezone.utc).isoformat(),
        "thresholds": quality.model_dump(),
        "policies": [{"name": p.name, "version": p.version, "labels": list(p.labels)} for p in policies],
        "versions": {v.key: v.to_dict() for v in versions},
        "quarantined": [v.key for v in versions if not v.passed],
        "statistics": _statistics(tallies),
        "trailing": {f"{n} v{v}": {"positives": p, "labelled": lab} for (n, v), (p, lab) in (trailing or {}).items()},
        "suites": suites,
    }
    report = ValidationReport(run_id, success, "", _json_safe(result), checks, rows=rows, versions=versions)
    report.summary = summarise(report)
    return report


def summarise(report: ValidationReport) -> str:
    where = f"run {report.run_id}: {report.rows} staged verdict(s)"
    failed = report.failed
    if not failed:
        return f"quality gate passed for {where}, {len(report.checks)} check(s) passed"
    if report.partial:
        passed = ", ".join(v.key for v in report.versions if v.passed)
        lines = [f"quality gate passed for {where}, for {passed}; quarantined "
                 f"{len(report.quarantined)} of {len(report.versions)} policy version(s), not published:"]
        for v in report.quarantined:
            lines.append(f"  {v.key}{' (shadow)' if v.shadow else ''}: {v.failed} of {v.checks} check(s) failed")
            lines += [f"  - [{c.suite}] {c.check}: {c.observed}" for c in failed if c.suite == v.key]
        return "\n".join(lines)
    lines = [f"quality gate FAILED for {where}, {len(failed)} of {len(report.checks)} check(s) failed:"]
    lines += [f"  - [{c.suite}] {c.check}: {c.observed}" for c in failed]
    return "\n".join(lines)


# --- suites -------------------------------------------------------------------------------------


def _run_suite(refs: Sequence[VersionRef]):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(name=RUN_SUITE, expectations=[
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="policy",
            column_B="policy_version",
            value_pairs_set=[list(r) for r in refs],
            meta={"check": f"only the run's policy versions {[f'{n} v{v}' for n, v in refs]}"},
        ),
    ])


def _measures(tally: _Tally) -> pd.DataFrame:
    """One row: the rates the suite bounds, measured from the tally."""
    import pandas as pd

    reached = tally.verdicts - tally.input_errors  # verdicts whose content reached the model
    return pd.DataFrame([{
        "verdicts": tally.verdicts,
        "error_rate": (tally.errors - tally.input_errors) / reached if reached else 0.0,
        "input_error_rate": tally.input_errors / tally.verdicts if tally.verdicts else 0.0,
        "positive_rate": tally.positives / tally.labelled if tally.labelled else None,
    }], columns=["verdicts", "error_rate", "input_error_rate", "positive_rate"]).astype({"positive_rate": float})


def _policy_suites(name: str, policy: Policy, quality: QualitySettings, tally: _Tally, expected_items: int | None,
                   history: tuple[int, int] | None):
    """(the suite over the version's distinct (status, label) values, the suite over its measured rates)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    labels = list(policy.labels)
    values = [
        gxe.ExpectColumnValuesToBeInSet(column="parse_status", value_set=list(PARSE_STATUSES),
                                        meta={"check": f"parse_status in {list(PARSE_STATUSES)}", "count": "rows"}),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels,
                                        meta={"check": f"labels in the policy's label set {labels}", "count": "rows"}),
        gxe.ExpectColumnValuesToNotBeNull(column="label", row_condition=Column("parse_status") == OK,
                                          meta={"check": "every 'ok' verdict has a label", "count": "rows"}),
    ]
    if expected_items is not None:
        values.append(gxe.ExpectColumnSumToBeBetween(
            column="n", min_value=expected_items, max_value=expected_items,
            meta={"check": f"a verdict for every item ({expected_items} item(s))", "count": "sum"}))
    measures = [
        # Only verdicts that reached the model count: input errors have their own bound below.
        gxe.ExpectColumnValuesToBeBetween(
            column="error_rate", min_value=0, max_value=quality.max_error_rate,
            meta={"check": f"error rate <= {quality.max_error_rate:.1%} (quality.max_error_rate)", "rate": "error"}),
    ]
    if quality.max_input_error_rate is not None:
        measures.append(gxe.ExpectColumnValuesToBeBetween(
            column="input_error_rate", min_value=0, max_value=quality.max_input_error_rate,
            meta={"check": f"input error rate <= {quality.max_input_error_rate:.1%} (quality.max_input_error_rate)",
                  "rate": "input"}))
    # Rates of a handful of verdicts are noise, not a model fault (quality.min_sample).
    if tally.labelled >= quality.min_sample:
        measures.append(gxe.ExpectColumnValuesToBeBetween(
            column="positive_rate", min_value=quality.min_positive_rate, max_value=quality.max_positive_rate,
            meta={
                "check": (
                    f"positive rate (label >= 1) within [{quality.min_positive_rate:.1%}, "
                    f"{quality.max_positive_rate:.1%}] (quality.min_positive_rate / quality.max_positive_rate)"
                ),
                "rate": "positive",
            },
        ))
        if quality.drift_tolerance is not None and history is not None and history[1] >= quality.drift_min_history:
            rate = history[0] / history[1]
            tol = quality.drift_tolerance
            measures.append(gxe.ExpectColumnValuesToBeBetween(
                column="positive_rate", min_value=max(0.0, rate - tol), max_value=min(1.0, rate + tol),
                meta={
                    "check": (
                        f"positive rate within {tol:.1%} of this version's trailing rate {rate:.1%} over its last "
                        f"{history[1]} published labelled verdicts (quality.drift_tolerance)"
                    ),
                    "rate": "positive",
                },
            ))
    return (gx.ExpectationSuite(name=name, expectations=values),
            gx.ExpectationSuite(name=f"{name} rates", expectations=measures))


def _merged(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One result per policy version: its values suite and its rates suite together."""
    stats = {}
    for key in ("evaluated_expectations", "successful_expectations", "unsuccessful_expectations"):
        stats[key] = sum(int((r.get("statistics") or {}).get(key) or 0) for r in (first, second))
    n = stats["evaluated_expectations"]
    stats["success_percent"] = 100.0 * stats["successful_expectations"] / n if n else 100.0
    return {"success": bool(first.get("success")) and bool(second.get("success")), "statistics": stats,
            "results": [*first.get("results", []), *second.get("results", [])]}


# --- GX plumbing ----------------------------------------------------------------------------------


def _gx_batch_definition():
    """An in-memory context (no files, no analytics, no progress bars) and a whole-dataframe batch."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    asset = context.data_sources.add_pandas("safeguard_staging").add_dataframe_asset("staged_verdicts")
    return context, asset.add_batch_definition_whole_dataframe("run")


def _validate(context, batch_definition, suite, frame) -> dict[str, Any]:
    suite = context.suites.add(suite)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format="SUMMARY")
    return result.to_json_dict()


def _checks(suite_name: str, outcome: dict[str, Any], ctx: dict[str, Any]) -> list[CheckResult]:
    out = []
    for item in outcome.get("results", []):
        config = item.get("expectation_config") or {}
        meta = config.get("meta") or {}
        exc = item.get("exception_info") or {}
        observed = _observed(item.get("result") or {}, meta, config.get("kwargs") or {}, ctx.get("tally"))
        if exc.get("raised_exception"):
            observed = f"could not be evaluated: {exc.get('exception_message')}"
        out.append(CheckResult(suite_name, meta.get("check", config.get("type", "?")), bool(item.get("success")), observed, config.get("type", "")))
    return out


def _observed(result: dict[str, Any], meta: dict[str, Any], kwargs: dict[str, Any], tally: _Tally | None) -> str:
    """What was found, in verdicts (the frames GX saw hold counts, not verdicts)."""
    if tally is not None and meta.get("rate") == "input":
        n, bad = tally.verdicts, tally.input_errors
        return f"{bad / n:.1%} ({bad} of {n} verdicts are input errors)" if n else "no verdicts"
    if tally is not None and meta.get("rate") == "error":
        n, bad = tally.verdicts - tally.input_errors, tally.errors - tally.input_errors
        counts = ", ".join(f"{s}={c}" for s, c in sorted(tally.statuses().items()) if s not in (OK, INPUT_ERROR))
        return f"{bad / n:.1%} ({bad} of {n} verdicts are errors{': ' + counts if counts else ''})" if n else "no verdicts"
    if tally is not None and meta.get("rate") == "positive":
        n = tally.labelled
        return f"{tally.positives / n:.1%} ({tally.positives} of {n} labelled verdicts)" if n else "no labelled verdicts"
    if tally is not None and meta.get("count") == "sum":
        return f"{tally.verdicts} verdict(s)"
    if tally is not None and meta.get("count") == "rows":
        column = kwargs.get("column")
        unexpected = result.get("partial_unexpected_list") or []
        if column == "label" and "value_set" not in kwargs:  # an 'ok' verdict without a label
            bad = sum(n for s, label, n in tally.groups if s == OK and label is None)
        else:
            index = 0 if column == "parse_status" else 1
            found = {str(v) for v in unexpected}
            bad = sum(g[2] for g in tally.groups if g[index] is not None and str(g[index]) in found)
        if not bad:
            return f"0 of {tally.verdicts} verdict(s) unexpected"
        values = f", values {_json_safe(sorted({str(v) for v in unexpected})[:5])}" if unexpected else ""
        return f"{bad} of {tally.verdicts} verdict(s) unexpected{values}"
    if "observed_value" in result:
        return f"{result['observed_value']}"
    if "unexpected_count" in result:
        n, bad = result.get("element_count", 0), result.get("unexpected_count", 0)
        sample = result.get("partial_unexpected_list", [])[:5]
        return f"{bad} of {n} row(s) unexpected, e.g. {_json_safe(sample)}" if bad else f"0 of {n} row(s) unexpected"
    return json.dumps(_json_safe(result))[:200]


def _statistics(tallies: Tallies) -> dict[str, Any]:
    by_policy: dict[str, Any] = {}
    for (name, version), groups in sorted(tallies.items(), key=str):
        tally = _Tally(list(groups))
        by_policy[f"{name} v{version}"] = {
            "verdicts": tally.verdicts,
            "errors": tally.errors,
            "input_errors": tally.input_errors,  # content, not model: apart
            "labels": tally.labels(),
            "statuses": tally.statuses(),
        }
    return {"verdicts": sum(s["verdicts"] for s in by_policy.values()), "by_policy": by_policy}


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _json_safe(value: Any) -> Any:
    """NaN/NA become null and numpy scalars plain numbers, so the report is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item):
        try:
            return _json_safe(item())
        except (TypeError, ValueError):
            pass
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return str(value)
