"""The policy-change flow, without Airflow: evaluate a new version on its policy's eval dataset,
then (once it has labelled the content in scope, in shadow) write its diff report and run the
promotion gate, promoting it only when policy_gate.auto_promote is on and the gate passes.

The relabel DAG calls these between its steps; anything else (a script, a test) can call them too.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from safeguard_flow.policy_quality.datasets import dataset_key
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.errors import WarehouseError

log = logging.getLogger(__name__)


def evaluate_version(sql_engine: Engine, settings: Settings, policy: str, version: int, *,
                     include_promoted: bool = True, llm=None) -> list[dict[str, Any]]:
    """Evaluate `version` (and the promoted version, when it has no eval there yet) on the policy's
    eval dataset (settings evals.policies.<policy>) with `llm` (default: the configured engine).
    Versions already evaluated on it are skipped. Returns one summary per eval run; [] when the
    policy has no eval dataset."""
    from safeguard_flow.policy_quality.eval import run_eval
    from safeguard_flow.warehouse import evals, policy_store

    cfg = settings.evals.policies.get(policy)
    if cfg is None:
        log.info("policy %s has no eval dataset (settings evals.policies.%s): not evaluated", policy, policy)
        return []
    head = policy_store.get_head(sql_engine, settings, policy)
    current = None if head is None else head.current_version
    wanted = [version] + ([current] if include_promoted and current not in (None, version) else [])
    out = []
    for v in wanted:
        stored = policy_store.get_policies(sql_engine, settings, [(policy, v)])[0]
        if evals.scores_for(sql_engine, settings, policy, stored.sha256, dataset_key(cfg.dataset)):
            log.info("%s v%d already has an eval on %s", policy, v, cfg.dataset)
            continue
        folder = _reports(settings) / "evals" / f"{_safe(policy)}-v{v}"
        result = run_eval(settings, [stored], cfg.dataset, folder, label_flags={policy: cfg.label_column},
                          limit=cfg.limit, id_column=cfg.id_column, text_column=cfg.text_column, llm=llm,
                          progress=False)
        m = result.metrics["policies"][policy]
        out.append({"policy": policy, "version": v, "eval_id": result.eval_id, "f1": m["f1"], "report": str(result.report)})
    return out


def review_version(sql_engine: Engine, settings: Settings, policy: str, version: int, actor: str) -> dict[str, Any]:
    """After a version labelled in scope: its diff report against the promoted version, the promotion
    gate, and (for a shadow version, with policy_gate.auto_promote) the promotion."""
    from safeguard_flow.policy_quality.eval_report import write_diff_report
    from safeguard_flow.policy_quality.promotion_gate import PromotionRefused, check_promotion_gate, promote
    from safeguard_flow.policy_quality.version_diff import compare_versions
    from safeguard_flow.warehouse.policy_store import get_head

    head = get_head(sql_engine, settings, policy)
    if head is None:
        raise WarehouseError(f"policy {policy!r} is not published in the warehouse")
    shadow = head.shadow_version == version and head.current_version != version
    base = head.current_version if shadow else _previous(sql_engine, settings, policy, version)
    summary: dict[str, Any] = {"policy": policy, "version": version, "shadow": shadow, "compared_with": base}
    if base is None:
        summary["note"] = "no earlier version to compare with"
        return summary
    old, new = min(base, version), max(base, version)
    diff = compare_versions(sql_engine, settings, policy, old, new)
    promotion_gate = check_promotion_gate(sql_engine, settings, policy, version) if shadow else None
    path = write_diff_report(_reports(settings) / "diffs" / f"{_safe(policy)}-v{old}-v{new}.html", diff, promotion_gate)
    summary.update(report=str(path), flips=diff.flips.flips, flip_rate=diff.flips.flip_rate,
                   gate_passed=None if promotion_gate is None else promotion_gate.passed,
                   gate_problems=[] if promotion_gate is None else promotion_gate.problems)
    if shadow and settings.policy_gate.auto_promote:
        try:
            outcome, _ = promote(sql_engine, settings, policy, version, actor=actor)
            summary["outcome"] = outcome
        except PromotionRefused:
            summary["outcome"] = "refused"  # recorded in the promotion log; promotion stays a deliberate step
    elif shadow:
        summary["outcome"] = "awaiting promotion (safeguard-flow policies promote)"
    return summary


def _previous(sql_engine: Engine, settings: Settings, policy: str, version: int) -> int | None:
    from safeguard_flow.warehouse.policy_store import list_versions

    older = [v["version"] for v in list_versions(sql_engine, settings, policy) if v["version"] < version]
    return max(older) if older else None


def _reports(settings: Settings) -> Path:
    return Path(settings.evals.output_dir).expanduser() if settings.evals.output_dir else settings.home_path / "reports"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
