"""The HTML eval report (report.html) and its PNG plots, written beside metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from safeguard_flow.templating import render


def write_eval_report(out: str | Path, metrics: Mapping[str, Any], comparisons: Mapping[str, Any] | None = None) -> Path:
    out = Path(out)
    images = [plot_scores_with_ci(metrics, out / "scores.png").name, plot_confusion(metrics, out / "confusion.png").name]
    path = out / "report.html"
    path.write_text(render("eval_report.html", m=metrics, images=images, comparisons=comparisons or {}), encoding="utf-8")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores_with_ci(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Precision, recall and F1 per policy; F1 with its bootstrap interval (the eval report, `evaluate --plot`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    names = sorted(metrics["policies"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.6))
    width = 0.27
    for i, (key, color) in enumerate([("precision", "#4C78A8"), ("recall", "#F58518"), ("f1", "#54A24B")]):
        xs = [j + (i - 1) * width for j in range(len(names))]
        values = [metrics["policies"][n][key] for n in names]
        if key == "f1":
            ci = [metrics["policies"][n]["f1_ci"] for n in names]
            err = [[max(0.0, v - lo) for v, (lo, _) in zip(values, ci)], [max(0.0, hi - v) for v, (_, hi) in zip(values, ci)]]
            ax.bar(xs, values, width, label="F1 (95% CI)", color=color, yerr=err, capsize=3)
        else:
            ax.bar(xs, values, width, label=key, color=color)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Eval: {metrics['rows_scored']} rows, multi-policy accuracy {metrics['multi_policy_accuracy']:.1%}")
    ax.legend(ncols=3, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(metrics: Mapping[str, Any], path: Path) -> Path:
    plt = _pyplot()
    names = sorted(metrics["policies"])
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        m = metrics["policies"][name]
        grid = [[m["tp"], m["fn"]], [m["fp"], m["tn"]]]
        ax.imshow(grid, cmap="Blues")
        for r in range(2):
            for c in range(2):
                ax.text(c, r, str(grid[r][c]), ha="center", va="center", fontsize=11)
        ax.set_xticks([0, 1], ["pred 1", "pred 0"])
        ax.set_yticks([0, 1], ["gold 1", "gold 0"])
        ax.set_title(f"{name} (errors {m['errors']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_diff_report(path: str | Path, diff, promotion_gate=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render("diff_report.html", d=diff, gate=promotion_gate), encoding="utf-8")
    return path
