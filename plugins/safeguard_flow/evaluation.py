"""Evaluate a policy version against labelled examples before trusting it: precision, recall, F1.

Error verdicts are counted apart (never as a guess of 0), so a policy that makes the model fail to
answer shows up as such instead of as high precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from safeguard_flow.verdicts import Verdict

# Label columns by policy name: the codes of OpenAI's 2022 moderation evaluation set (read from its
# path outside the repo), which the project's own sample (data/sample-posts.jsonl) reuses, plus spam.
MODERATION_2022_KEYS = {
    "sexual": "S", "hate": "H", "violence": "V", "harassment": "HR", "self-harm": "SH",
    "sexual/minors": "S3", "hate/threatening": "H2", "violence/graphic": "V2", "spam": "spam",
}


@dataclass
class PolicyScore:
    policy: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    errors: int = 0
    unlabelled: int = 0  # no ground truth for the item

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def scored(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def load_truth(path: str | Path, keys: Mapping[str, str]) -> dict[tuple[str, str], int]:
    """(content_id, policy) -> 0/1 from a JSONL file with one 0/1 column per policy."""
    truth: dict[tuple[str, str], int] = {}
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            for policy, key in keys.items():
                if isinstance(row, dict) and row.get(key) in (0, 1):
                    truth[(str(row.get("id")), policy)] = int(row[key])
    return truth


def score(verdicts: Iterable[Verdict], truth: Mapping[tuple[str, str], int]) -> list[PolicyScore]:
    scores: dict[str, PolicyScore] = {}
    for v in verdicts:
        s = scores.setdefault(v.policy, PolicyScore(v.policy))
        expected = truth.get((v.content_id, v.policy))
        if expected is None:
            s.unlabelled += 1
        elif v.is_error:
            s.errors += 1
        elif v.label == 1:
            s.tp += expected == 1
            s.fp += expected == 0
        else:
            s.fn += expected == 1
            s.tn += expected == 0
    return sorted(scores.values(), key=lambda s: s.policy)


def score_table(scores: list[PolicyScore]) -> str:
    from safeguard_flow.report import table

    return table(
        ["policy", "scored", "tp", "fp", "fn", "tn", "errors", "precision", "recall", "F1"],
        [[s.policy, s.scored, s.tp, s.fp, s.fn, s.tn, s.errors, s.precision, s.recall, s.f1] for s in scores],
    )


def plot_scores(scores: list[PolicyScore], path: str | Path) -> Path:
    """A bar chart of precision / recall / F1 per policy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [s.policy for s in scores]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.6))
    width = 0.27
    for i, (metric, color) in enumerate([("precision", "#4C78A8"), ("recall", "#F58518"), ("f1", "#54A24B")]):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, [getattr(s, metric) for s in scores], width, label=metric, color=color)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Policy evaluation against labelled examples")
    ax.legend(ncols=3, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
