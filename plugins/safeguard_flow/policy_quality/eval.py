"""`safeguard-flow eval`: label a labelled dataset with the configured engine and score it; and
`safeguard-flow evaluate`: score verdicts `label` already wrote, with the same metrics.

`eval` writes OUTDIR/verdicts.jsonl (one line per row and policy), OUTDIR/metrics.json and
OUTDIR/report.html (PNGs beside it), and records the eval in the warehouse's eval table (model, engine,
policy versions, metrics, paired predictions), where `evals list`, `policies diff` and the promotion
gate find it. The dataset is a JSONL/CSV file or a table of the configured warehouse.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.domain.policies import Policy, load_policy_set
from safeguard_flow.domain.verdicts import Verdict
from safeguard_flow.policy_quality.datasets import dataset_key, dataset_sha256, file_rows, read_dataset, rows_from_dicts
from safeguard_flow.policy_quality.metrics import compute_metrics
from safeguard_flow.settings import Settings


@dataclass
class EvalResult:
    eval_id: str | None
    output_dir: Path
    metrics: dict[str, Any]
    report: Path


def label_map_for(settings: Settings, policies: list[Policy], flags: Mapping[str, str]) -> dict[str, str]:
    """The gold column per policy: --label flags, else settings evals.policies.<name>.label_column."""
    if flags:
        return dict(flags)
    names = {p.name for p in policies}
    mapping = {name: cfg.label_column for name, cfg in settings.evals.policies.items() if name in names}
    if not mapping:
        raise ValueError("no label mapping: pass --label POLICY=COLUMN (repeatable) or set "
                         "evals.policies.<policy>.label_column in the settings")
    return mapping


def run_eval(settings: Settings, policies_dir: str | Path | list[Policy], dataset: str, output: str | Path, *,
             label_flags: Mapping[str, str] | None = None, limit: int | None = None, id_column: str = "id",
             text_column: str = "text", llm=None, chunk_size: int = 64, progress: bool = True) -> EvalResult:
    """Label the dataset with `llm` (default: the configured engine, built and closed here) and score it."""
    from tqdm import tqdm

    from safeguard_flow.engines import build_engine
    from safeguard_flow.labelling.files import VerdictWriter
    from safeguard_flow.labelling.loop import LabelStats, label_stream
    from safeguard_flow.policy_quality.eval_report import write_eval_report
    from safeguard_flow.warehouse import evals as eval_store
    from safeguard_flow.warehouse import policy_store, schema
    from safeguard_flow.warehouse.db import make_engine

    # A folder of policy files (the CLI), or stored versions (the relabel flow evaluates those).
    all_policies = list(policies_dir) if isinstance(policies_dir, list) else load_policy_set(policies_dir)
    label_map = label_map_for(settings, all_policies, label_flags or {})
    known = {p.name for p in all_policies}
    unknown = sorted(set(label_map) - known)
    if unknown:
        raise ValueError(f"--label: no policy named {', '.join(unknown)} in {policies_dir} (known: {', '.join(sorted(known))})")
    policies = [p for p in all_policies if p.name in label_map]
    rows = read_dataset(settings, dataset, label_map, id_column, text_column)
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"--dataset: {dataset} holds no rows")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    schema.upgrade(settings)
    sql_engine = make_engine(settings)
    try:
        policies = policy_store.with_stored_versions(sql_engine, settings, policies)
        stats = LabelStats()
        items = [ContentItem.from_raw(r.content_id, r.text, "eval") for r in rows]
        own_llm = llm is None
        llm = llm or build_engine(settings)
        verdicts = []
        started = time.perf_counter()
        try:
            with VerdictWriter(out / "verdicts.jsonl") as writer, \
                    tqdm(total=len(items), unit="row", desc="eval", disable=not progress) as bar:
                for chunk in label_stream(llm, items, policies, chunk_size=chunk_size,
                                          max_content_chars=settings.model.max_content_chars, stats=stats,
                                          progress=bar.update):
                    writer.write(chunk)
                    verdicts.extend(chunk)
        finally:
            if own_llm:
                llm.close()
        metrics = compute_metrics(rows, verdicts, [p.name for p in policies],
                                  bootstrap_samples=settings.evals.bootstrap_samples, seed=settings.evals.seed)
        key = dataset_key(dataset)
        metrics.update(
            model=llm.model_name, engine=settings.engine.kind,
            policy_versions={p.name: {"version": p.version, "sha256": p.sha256} for p in policies},
            prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
            seconds=round(time.perf_counter() - started, 3), dataset=key, dataset_sha256=dataset_sha256(rows),
            label_map=dict(label_map), rows_read=len(rows),
        )
        eval_id = eval_store.store_eval(sql_engine, settings, metrics, rows, verdicts, dataset=key,
                                        dataset_sha256=metrics["dataset_sha256"], label_map=label_map,
                                        output_dir=str(out.resolve()), created_by=current_actor())
        metrics["eval_id"] = eval_id
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        comparisons = {p.name: _previous(sql_engine, settings, p, key) for p in policies}
    finally:
        sql_engine.dispose()
    report = write_eval_report(out, metrics, {k: v for k, v in comparisons.items() if v})
    return EvalResult(eval_id, out, metrics, report)


def _previous(sql_engine, settings: Settings, policy: Policy, dataset: str):
    """The comparison with the newest other stored version of the policy evaluated on this dataset."""
    from safeguard_flow.policy_quality.version_diff import eval_comparisons
    from safeguard_flow.warehouse.policy_store import list_versions

    for v in reversed(list_versions(sql_engine, settings, policy.name)):
        if v["sha256"] == policy.sha256:
            continue
        found = eval_comparisons(sql_engine, settings, policy.name, v["sha256"], policy.sha256, dataset)
        if found:
            return {"old_version": v["version"], "new_version": policy.version, "comparison": found[0]}
    return None


def current_actor() -> str:
    """Who ran the command: the login name (recorded with evals and promotions)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


# --- `safeguard-flow evaluate`: verdicts from `label`, scored against a truth file -----------------


def score_against_truth(verdicts: list[Verdict], truth_path: str | Path, label_map: Mapping[str, str]) -> dict[str, Any]:
    """compute_metrics for every policy the verdicts hold, over the truth rows they labelled.

    Only labelled rows count (a truth file may hold more: `label --limit`, a day of the sample); a
    policy whose column the file lacks (the 2022 moderation set has no spam) has no gold labels."""
    raw = file_rows(truth_path, "--truth")
    columns = {c for row in raw for c in row}
    gold_columns = {p: c for p, c in label_map.items() if c in columns}
    labelled = {v.content_id for v in verdicts}
    rows = [r for r in rows_from_dicts(raw, gold_columns, "id", None, where=str(truth_path)) if r.content_id in labelled]
    return compute_metrics(rows, verdicts, sorted({v.policy for v in verdicts}))


def score_table(metrics: Mapping[str, Any]) -> str:
    from safeguard_flow.console import table

    return table(["policy", "scored", "tp", "fp", "fn", "tn", "errors", "precision", "recall", "F1"],
                 [[name, p["tp"] + p["fp"] + p["fn"] + p["tn"], p["tp"], p["fp"], p["fn"], p["tn"], p["errors"],
                   p["precision"], p["recall"], p["f1"]] for name, p in sorted(metrics["policies"].items())])


def score_verdicts(verdicts_path: str | Path, truth_path: str | Path, label_map: Mapping[str, str],
                   plot_path: str | Path | None = None) -> tuple[str, Path | None]:
    """`evaluate`: the score table of a verdicts JSONL file, and the bar chart's path when one is asked for."""
    from safeguard_flow.labelling.files import read_verdicts
    from safeguard_flow.policy_quality.eval_report import plot_scores_with_ci

    metrics = score_against_truth(read_verdicts(verdicts_path), truth_path, label_map)
    return score_table(metrics), plot_scores_with_ci(metrics, plot_path) if plot_path else None
