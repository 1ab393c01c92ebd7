"""Plain-text summaries for terminals and task logs."""

from __future__ import annotations

from typing import Sequence

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

_VIEWS = {
    "current_verdicts": (["source", "content_id", "policy", "policy_version", "label", "category", "parse_status"],
                         ["policy", "content_id"]),
    "daily_policy_rates": (["policy", "policy_version", "day", "verdicts", "labelled", "positives", "errors",
                            "positive_rate", "error_rate"], ["policy", "day"]),
    "verdict_flips": (["policy", "content_id", "old_version", "new_version", "old_label", "new_label"],
                      ["policy", "content_id"]),
}


def view_rows(engine, settings, view: str, limit: int = 10, order_by: Sequence[str] = ()) -> list[dict]:
    """The first rows of one BI view (by its unprefixed name)."""
    import sqlalchemy as sa

    from safeguard_flow.warehouse import schema

    name = schema.view_names(settings)[view]
    query = sa.select(sa.text("*")).select_from(sa.table(name, schema=settings.warehouse.db_schema)).limit(limit)
    if order_by:
        query = query.order_by(*[sa.column(c) for c in order_by])
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def format_views(engine, settings, limit: int = 10) -> str:
    """A few rows of each BI view, as plain tables."""
    parts = []
    for view, (cols, order) in _VIEWS.items():
        rows = view_rows(engine, settings, view, limit=limit, order_by=order)
        parts.append(f"\n== {settings.warehouse.table_prefix}{view} (first {limit} rows) ==")
        parts.append(table(cols, [["" if r.get(c) is None else r.get(c) for c in cols] for r in rows]) if rows else "(no rows)")
    return "\n".join(parts)


def print_views(engine, settings, limit: int = 10, out=None) -> None:
    import sys

    print(format_views(engine, settings, limit), file=out or sys.stdout)


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


def _n(value) -> str:
    return "-" if value is None else f"{value:,}"
