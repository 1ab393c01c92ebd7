"""Plain-text summaries for terminals and task logs."""

from __future__ import annotations

from typing import Sequence

from safeguard_flow.labelling import LabelStats


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
