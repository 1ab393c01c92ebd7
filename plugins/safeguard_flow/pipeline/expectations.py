"""The quality gate: a Great Expectations suite over one run's staged verdicts.

Nothing reaches the verdict table unless the run passes. For each policy version the run labels,
a suite is built from the policy (its label set) and the settings (``quality.*`` thresholds):

- the key columns are never null and each key has exactly one verdict;
- every label is in the policy's label set, and every ``ok`` verdict carries a label;
- the error rate of the model (engine and parse errors, among verdicts that reached it) is at most
  ``quality.max_error_rate``; input errors (NULL, empty, undecodable content, repeated ids) judge the
  content, not the model: they are counted apart and bounded by ``quality.max_input_error_rate``
  (off by default), so whoever writes a share of the posts cannot quarantine the day;
- the positive rate among labelled verdicts is within ``quality.min/max_positive_rate`` and, once the
  policy version has a history, within ``quality.drift_tolerance`` of its trailing rate over its last
  published verdicts (both need ``quality.min_sample`` labelled verdicts in the run);
- when the caller knows how many items were extracted, every item got a verdict.

Great Expectations is used as a library (an ephemeral context with a pandas data source), so this
module needs no Airflow, no warehouse and no files: :func:`validate_frame` is pure. Applying the gate
to a run (reading its staged verdicts, saving the report, validated or quarantined) is
``pipeline/validate.py``, which also writes the report file. A failed gate raises
:class:`QualityGateFailed`, whose message lists the failed expectations in words.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.verdicts import INPUT_ERROR, OK, PARSE_STATUSES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from safeguard_flow.settings import QualitySettings

# Columns of the staged frame the suite reads. The key identifies one verdict.
KEY_COLUMNS = ("source", "content_id", "policy", "policy_version")
REQUIRED_COLUMNS = (*KEY_COLUMNS, "label", "parse_status")


class QualityGateFailed(RuntimeError):
    """The run's verdicts failed the quality gate; the message is the readable summary."""

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
class ValidationReport:
    run_id: str
    success: bool
    summary: str
    result: dict[str, Any]  # JSON-safe: per-suite GX results plus our own statistics
    checks: list[CheckResult] = field(default_factory=list)
    rows: int = 0
    path: str | None = None  # where the JSON was saved, if it was

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]


def validate_frame(
    frame: pd.DataFrame,
    policies: Sequence[Policy],
    quality: QualitySettings,
    *,
    run_id: str = "",
    expected_items: int | None = None,
    trailing: dict[tuple[str, int], tuple[int, int]] | None = None,
) -> ValidationReport:
    """Run one suite per policy version over its slice of the frame; pure (no warehouse, no files).

    `trailing` maps (policy, version) to (positives, labelled) of its earlier published verdicts
    (see warehouse/verdict_rates.py), for the drift check."""
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"staged verdicts lack column(s) {', '.join(missing)}; the gate needs {', '.join(REQUIRED_COLUMNS)}")
    frame = frame.reset_index(drop=True)
    context, batch_definition = _gx_batch_definition()
    suites: dict[str, Any] = {}
    checks: list[CheckResult] = []

    # Whole-run suite: keys, statuses, and that only the run's policy versions appear.
    run_suite = _run_suite(policies, expected_items)
    outcome = _validate(context, batch_definition, run_suite, frame)
    suites[run_suite.name] = outcome
    checks += _checks(run_suite.name, outcome)

    for policy in policies:
        part = frame[(frame["policy"] == policy.name) & (frame["policy_version"] == policy.version)].copy()
        if part.empty:
            continue  # nothing to label for this policy in this run (for example an empty interval)
        labelled = part["parse_status"] == OK
        label = pd.to_numeric(part["label"], errors="coerce")
        # 1.0/0.0 for labelled verdicts, missing for errors: its mean is the positive rate among labelled
        # rows. Positive = label >= 1 (SAFE is 0), the same rule as the BI views.
        part["is_positive"] = (label >= 1).astype(float).where(labelled & label.notna())
        part["label"] = label.astype("Int64")
        n_labelled = int(part["is_positive"].notna().sum())
        history = (trailing or {}).get((policy.name, int(policy.version or 0)))
        suite = _policy_suite(policy, quality, n_labelled, history)
        outcome = _validate(context, batch_definition, suite, part)
        suites[suite.name] = outcome
        checks += _checks(suite.name, outcome)

    success = all(c.success for c in checks)
    statistics = _statistics(frame)
    result = {
        "run_id": run_id,
        "success": success,
        "validated_at": datetime.now(timezone.utc).isoformat(),
        "thresholds": quality.model_dump(),
        "policies": [{"name": p.name, "version": p.version, "labels": list(p.labels)} for p in policies],
        "statistics": statistics,
        "trailing": {f"{n} v{v}": {"positives": p, "labelled": lab} for (n, v), (p, lab) in (trailing or {}).items()},
        "suites": suites,
    }
    report = ValidationReport(run_id, success, "", _json_safe(result), checks, rows=len(frame))
    report.summary = summarise(report)
    return report


def summarise(report: ValidationReport) -> str:
    head = f"quality gate {'passed' if report.success else 'FAILED'} for run {report.run_id}: {report.rows} staged verdict(s)"
    failed = report.failed
    if not failed:
        return f"{head}, {len(report.checks)} check(s) passed"
    lines = [f"{head}, {len(failed)} of {len(report.checks)} check(s) failed:"]
    lines += [f"  - [{c.suite}] {c.check}: {c.observed}" for c in failed]
    return "\n".join(lines)


# --- suites -------------------------------------------------------------------------------------


def _run_suite(policies: Sequence[Policy], expected_items: int | None):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    refs = sorted({(p.name, p.version) for p in policies}, key=str)
    expectations = [
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c, meta={"check": f"no null {c} (part of the verdict key)"})
            for c in KEY_COLUMNS
        ],
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=list(KEY_COLUMNS), meta={"check": "one verdict per (source, content_id, policy, policy_version)"}
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="parse_status", value_set=list(PARSE_STATUSES), meta={"check": f"parse_status in {list(PARSE_STATUSES)}"}
        ),
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="policy",
            column_B="policy_version",
            value_pairs_set=[list(r) for r in refs],
            meta={"check": f"only the run's policy versions {[f'{n} v{v}' for n, v in refs]}"},
        ),
    ]
    if expected_items is not None:
        expected = expected_items * len(policies)
        expectations.append(
            gxe.ExpectTableRowCountToEqual(
                value=expected,
                meta={"check": f"a verdict for every item and policy ({expected_items} item(s) x {len(policies)} policy(ies))"},
            )
        )
    return gx.ExpectationSuite(name="run", expectations=expectations)


def _policy_suite(policy: Policy, quality: QualitySettings, n_labelled: int = 0,
                  history: tuple[int, int] | None = None):
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    labels = list(policy.labels)
    expectations = [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels, meta={"check": f"labels in the policy's label set {labels}"}),
        gxe.ExpectColumnValuesToNotBeNull(
            column="label", row_condition=Column("parse_status") == OK, meta={"check": "every 'ok' verdict has a label"}
        ),
        # `mostly` is the share of rows that must be ok, so max_error_rate maps to 1 - mostly. Only
        # verdicts that reached the model count: input errors have their own bound below.
        gxe.ExpectColumnValuesToBeInSet(
            column="parse_status",
            value_set=[OK],
            mostly=round(1.0 - quality.max_error_rate, 9),
            row_condition=Column("parse_status") != INPUT_ERROR,
            meta={"check": f"error rate <= {quality.max_error_rate:.1%} (quality.max_error_rate)", "rate": "error"},
        ),
    ]
    if quality.max_input_error_rate is not None:
        expectations.append(gxe.ExpectColumnValuesToNotBeInSet(
            column="parse_status",
            value_set=[INPUT_ERROR],
            mostly=round(1.0 - quality.max_input_error_rate, 9),
            meta={"check": f"input error rate <= {quality.max_input_error_rate:.1%} (quality.max_input_error_rate)",
                  "rate": "input"},
        ))
    # Rates of a handful of verdicts are noise, not a model fault (quality.min_sample).
    if n_labelled >= quality.min_sample:
        expectations.append(gxe.ExpectColumnMeanToBeBetween(
            column="is_positive",
            min_value=quality.min_positive_rate,
            max_value=quality.max_positive_rate,
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
            expectations.append(gxe.ExpectColumnMeanToBeBetween(
                column="is_positive",
                min_value=max(0.0, rate - tol),
                max_value=min(1.0, rate + tol),
                meta={
                    "check": (
                        f"positive rate within {tol:.1%} of this version's trailing rate {rate:.1%} over its last "
                        f"{history[1]} published labelled verdicts (quality.drift_tolerance)"
                    ),
                    "rate": "positive",
                },
            ))
    return gx.ExpectationSuite(name=f"{policy.name} v{policy.version}", expectations=expectations)


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


def _checks(suite_name: str, outcome: dict[str, Any]) -> list[CheckResult]:
    out = []
    for item in outcome.get("results", []):
        config = item.get("expectation_config") or {}
        meta = config.get("meta") or {}
        exc = item.get("exception_info") or {}
        observed = _observed(item.get("result") or {}, meta)
        if exc.get("raised_exception"):
            observed = f"could not be evaluated: {exc.get('exception_message')}"
        out.append(CheckResult(suite_name, meta.get("check", config.get("type", "?")), bool(item.get("success")), observed, config.get("type", "")))
    return out


def _observed(result: dict[str, Any], meta: dict[str, Any]) -> str:
    if meta.get("rate") == "input":
        n, bad = result.get("element_count", 0), result.get("unexpected_count", 0)
        return f"{bad / n:.1%} ({bad} of {n} verdicts are input errors)" if n else "no verdicts"
    if meta.get("rate") == "error":
        n, bad = result.get("element_count", 0), result.get("unexpected_count", 0)
        counts = ", ".join(f"{c['value']}={c['count']}" for c in result.get("partial_unexpected_counts", []))
        return f"{bad / n:.1%} ({bad} of {n} verdicts are errors: {counts})" if n else "no verdicts"
    if "observed_value" in result:
        value = result["observed_value"]
        if meta.get("rate") == "positive":
            return "no labelled verdicts" if value is None or _nan(value) else f"{float(value):.1%}"
        return f"{value}"
    if "unexpected_count" in result:
        n, bad = result.get("element_count", 0), result.get("unexpected_count", 0)
        sample = result.get("partial_unexpected_list", [])[:5]
        return f"{bad} of {n} row(s) unexpected, e.g. {_json_safe(sample)}" if bad else f"0 of {n} row(s) unexpected"
    return json.dumps(_json_safe(result))[:200]


def _statistics(frame: pd.DataFrame) -> dict[str, Any]:
    by_policy: dict[str, Any] = {}
    for (name, version), part in frame.groupby(["policy", "policy_version"], dropna=False):
        labelled = part[part["parse_status"] == OK]
        by_policy[f"{name} v{version}"] = {
            "verdicts": int(len(part)),
            "errors": int((part["parse_status"] != OK).sum()),
            "input_errors": int((part["parse_status"] == INPUT_ERROR).sum()),  # content, not model: apart
            "labels": {str(k): int(v) for k, v in labelled["label"].value_counts().sort_index().items()},
        }
    return {"verdicts": int(len(frame)), "by_policy": by_policy}


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
