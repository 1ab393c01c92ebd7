"""Plain-text summaries for terminals and task logs."""

from __future__ import annotations

from typing import Mapping, Sequence

from safeguard_flow.labelling.loop import LabelStats


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)), line]
    out += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def summary(stats: LabelStats, model: str = "") -> str:
    policies = sorted({p for p, _ in stats.by_policy_label})
    labels = sorted({lab for _, lab in stats.by_policy_label}, key=lambda x: (x == "error", x))
    rows = [[p] + [stats.by_policy_label.get((p, lab), 0) for lab in labels] for p in policies]
    parts = [table(["policy"] + [f"label={lab}" if lab != "error" else "errors" for lab in labels], rows), ""]
    parts.append(table(
        ["items", "verdicts", "model calls", "errors", "seconds", "items/s", "tokens/s"],
        [[stats.items, stats.verdicts, stats.requests, stats.errors, stats.seconds, stats.items_per_s, stats.tokens_per_s]],
    ))
    if model:
        parts.append(f"model: {model}   prompt tokens: {stats.prompt_tokens:,}   completion tokens: {stats.completion_tokens:,}")
    return "\n".join(parts)


# --- runs and BI views (the CLI's `runs list` / `runs show`, the demo) ------------------------------


def format_views(rows_by_view: Mapping[str, Sequence[Mapping[str, object]]], limit: int) -> str:
    """The first rows of each BI view (warehouse.views.summary_rows), as plain tables."""
    parts = []
    for view, rows in rows_by_view.items():
        parts.append(f"\n== {view} (first {limit} rows) ==")
        cols = list(rows[0]) if rows else []
        parts.append(table(cols, [["" if r[c] is None else r[c] for c in cols] for r in rows]) if rows else "(no rows)")
    return "\n".join(parts)


def runs_table(runs: Sequence) -> str:
    """One line per run (runs.Run), newest first."""
    rows = []
    for r in runs:
        interval = f"{r.interval_start:%Y-%m-%d %H:%M} / {r.interval_end:%Y-%m-%d %H:%M}" if r.interval_start else ""
        rows.append([r.id, r.kind, r.status.value, interval, r.label(), _n(r.items), _n(r.verdicts), _n(r.errors),
                     f"{r.created_at:%Y-%m-%d %H:%M:%S}"])
    return table(["run", "kind", "status", "interval", "policies", "items", "verdicts", "errors", "created"], rows)


def format_run(run) -> str:
    """Everything a person asks about one run (runs.Run): counts, timings, tokens, validation, why it failed."""
    def when(value) -> str:
        return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"

    def took(a, b) -> str:
        return f" ({(b - a).total_seconds():.1f}s)" if a and b else ""

    lines = [f"run {run.id}", f"  status     {run.status.value}" + (f": {run.error}" if run.error else ""),
             f"  kind       {run.kind}   policies {run.label()}"]
    if run.interval_start:
        lines.append(f"  interval   {run.interval_start.isoformat()} / {run.interval_end.isoformat()}")
    if run.params:
        lines.append(f"  params     {', '.join(f'{k}={v}' for k, v in sorted(run.params.items()) if v is not None)}")
    lines += [
        f"  items      {_n(run.items)} item(s) ({_n(run.unique_texts)} distinct texts), {_n(run.skipped_unchanged)} "
        f"unchanged skipped, {_n(run.duplicate_ids)} duplicate id(s), {_n(run.chunks)} chunk(s); sources "
        f"{', '.join(run.sources or []) or '-'}",
        f"  verdicts   {_n(run.verdicts)} ({_n(run.positives)} positive, {_n(run.errors)} error); published "
        f"{_n(run.inserted)} new, {_n(run.updated)} updated, {_n(run.unchanged)} unchanged",
        f"  tokens     {_n(run.prompt_tokens)} prompt + {_n(run.completion_tokens)} completion; model "
        f"{run.model or '-'} ({run.engine or '-'})",
        f"  created    {when(run.created_at)}",
        f"  extract    {when(run.extract_started_at)} -> {when(run.extract_finished_at)}"
        f"{took(run.extract_started_at, run.extract_finished_at)}",
        f"  label      {when(run.label_started_at)} -> {when(run.label_finished_at)}"
        f"{took(run.label_started_at, run.label_finished_at)}",
        f"  validated  {when(run.validated_at)}   published {when(run.published_at)}",
    ]
    validation = run.validation or {}
    if validation:
        verdict = "passed" if validation.get("success") else "FAILED"
        summary = (validation.get("summary") or "").splitlines()
        lines.append(f"  validation {verdict}: {summary[0] if summary else ''}")
        lines += [f"    {line.strip()}" for line in summary[1:]]
        if validation.get("report_path"):
            lines.append(f"    report: {validation['report_path']}")
    for warning in run.warnings:
        lines.append(f"  warning    {warning}")
    return "\n".join(lines)


def format_gates(gates) -> str:
    """The quality gate per policy version of a run (run_gates.Gate rows), for `runs show`."""
    lines = ["  gate per policy version:"]
    for g in gates:
        what = f"{g.outcome}{' (shadow)' if g.shadow else ''}: {_n(g.verdicts)} verdict(s), {_n(g.errors)} error(s), "
        what += f"{_n(g.positives)} positive; {g.checks - g.failed} of {g.checks} check(s) passed"
        lines.append(f"    {g.key:<20} {what}")
        lines += [f"      - {line}" for line in (g.reason or "").splitlines()]
        if g.retry_run_id:
            lines.append(f"      relabelled by run {g.retry_run_id}")
    return "\n".join(lines)


def _n(value) -> str:
    return "-" if value is None else f"{value:,}"
