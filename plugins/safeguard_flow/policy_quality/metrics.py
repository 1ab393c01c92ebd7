"""Evaluate a policy version against labelled examples before trusting it: precision, recall, F1.

Error verdicts are counted apart (never as a guess of 0), so a policy that makes the model fail to
answer shows up as such instead of as high precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from safeguard_flow.domain.verdicts import Verdict

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
    from safeguard_flow.console import table

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


# --- `safeguard-flow eval`: labelled datasets, metrics with bootstrap intervals, paired tests ------------


@dataclass(frozen=True)
class LabelledRow:
    """One row of a labelled dataset: its id, text, and gold label per policy (None: not 0/1, skipped)."""

    content_id: str
    text: object
    gold: dict[str, int | None]


def gold_value(value: object) -> int | None:
    """0 or 1 (int, or "0"/"1" from a CSV); anything else, missing included, is no gold label."""
    if type(value) is int and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def parse_label_map(pairs: Iterable[str] | None) -> dict[str, str]:
    """`POLICY=COLUMN` flags -> {policy: column}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        policy, sep, column = pair.partition("=")
        if not sep or not policy.strip() or not column.strip():
            raise ValueError(f"--label: expected POLICY=COLUMN, got {pair!r}")
        out[policy.strip()] = column.strip()
    return out


def read_labelled_file(path: str | Path, label_map: Mapping[str, str], id_column: str = "id",
                       text_column: str = "text") -> list[LabelledRow]:
    """Rows of a JSONL or CSV file. Ids must be unique (predictions are paired by id)."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--dataset: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        raw_rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"--dataset: {path} line {lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"--dataset: {path} line {lineno}: not a JSON object")
                raw_rows.append(row)
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            raw_rows = list(csv.DictReader(fh))
    else:
        raise ValueError(f"--dataset: {path} must be .jsonl or .csv, or the name of a warehouse table")
    return rows_from_dicts(raw_rows, label_map, id_column, text_column, where=str(path))


def rows_from_dicts(raw_rows: Iterable[Mapping], label_map: Mapping[str, str], id_column: str, text_column: str,
                    where: str) -> list[LabelledRow]:
    rows: list[LabelledRow] = []
    seen: set[str] = set()
    columns_seen: set[str] = set()
    for n, raw in enumerate(raw_rows, start=1):
        columns_seen.update(raw.keys())
        cid = raw.get(id_column)
        if cid in (None, ""):
            raise ValueError(f"{where}: row {n} has no {id_column!r} (set --id-column)")
        cid = str(cid)
        if cid in seen:
            raise ValueError(f"{where}: id {cid!r} appears twice; an eval dataset needs one row per id")
        seen.add(cid)
        rows.append(LabelledRow(cid, raw.get(text_column), {p: gold_value(raw.get(c)) for p, c in label_map.items()}))
    if rows and text_column not in columns_seen:
        raise ValueError(f"{where}: no column {text_column!r} (set --text-column; columns: {', '.join(sorted(columns_seen))})")
    missing = sorted(c for c in label_map.values() if c not in columns_seen)
    if rows and missing:
        raise ValueError(f"{where}: no gold column(s) {', '.join(missing)} (columns: {', '.join(sorted(columns_seen))})")
    return rows


def dataset_sha256(rows: Iterable[LabelledRow]) -> str:
    """Identity of the rows scored: ids, texts and gold labels, in order."""
    import hashlib

    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.content_id, r.text if isinstance(r.text, str) else repr(r.text),
                                  sorted(r.gold.items())], ensure_ascii=False).encode())
    return digest.hexdigest()


def _outcomes(rows: list[LabelledRow], verdicts: Mapping[tuple[str, str], Verdict], policy: str):
    """Per row: gold (or -1 when skipped), prediction (or -1 when an error verdict)."""
    import numpy as np

    gold = np.full(len(rows), -1, dtype=np.int8)
    pred = np.full(len(rows), -1, dtype=np.int8)
    for i, row in enumerate(rows):
        g = row.gold.get(policy)
        if g is None:
            continue
        gold[i] = g
        v = verdicts.get((row.content_id, policy))
        if v is not None and not v.is_error and v.label is not None:
            pred[i] = 1 if v.label >= 1 else 0
    return gold, pred


def _f1(tp, fp, fn):
    import numpy as np

    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def bootstrap_indices(n: int, samples: int, seed: int):
    """The resampled row indices of the F1 intervals: `samples` draws of n rows with replacement from
    numpy's default_rng(seed), one row of the matrix per draw (documented so it can be recomputed)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def compute_metrics(rows: list[LabelledRow], verdicts: Iterable[Verdict], policies: Iterable[str], *,
                    bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """The metrics.json figures (without model/engine/tokens): per policy tp/fp/fn/tn, errors, skipped,
    precision, recall, F1 and a 95% bootstrap interval of F1 over rows; multi-policy accuracy.

    A gold label other than 0/1 skips the row for that policy. An error verdict is counted apart
    (never as a 0) and, for multi-policy accuracy, as a mismatch. Rows with no gold label for any
    policy are not scored. The interval resamples the scored rows (bootstrap_indices) and takes the
    2.5th and 97.5th percentiles of F1 over the draws.
    """
    import numpy as np

    policies = list(policies)
    by_key = {(v.content_id, v.policy): v for v in verdicts}
    scored = [r for r in rows if any(r.gold.get(p) is not None for p in policies)]
    n = len(scored)
    idx = bootstrap_indices(n, bootstrap_samples, seed) if n else None
    out: dict = {"policies": {}}
    all_match = np.ones(n, dtype=bool)
    for policy in policies:
        gold, pred = _outcomes(scored, by_key, policy)
        has_gold = gold >= 0
        ok = has_gold & (pred >= 0)
        tp = ok & (gold == 1) & (pred == 1)
        fp = ok & (gold == 0) & (pred == 1)
        fn = ok & (gold == 1) & (pred == 0)
        tn = ok & (gold == 0) & (pred == 0)
        all_match &= ~has_gold | (ok & (gold == pred))
        counts = {k: int(a.sum()) for k, a in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn))}
        precision = counts["tp"] / (counts["tp"] + counts["fp"]) if counts["tp"] + counts["fp"] else 0.0
        recall = counts["tp"] / (counts["tp"] + counts["fn"]) if counts["tp"] + counts["fn"] else 0.0
        f1 = float(_f1(counts["tp"], counts["fp"], counts["fn"]))
        if n:
            draws = _f1(tp[idx].sum(axis=1), fp[idx].sum(axis=1), fn[idx].sum(axis=1))
            low, high = (float(x) for x in np.percentile(draws, [2.5, 97.5]))
        else:
            low = high = 0.0
        out["policies"][policy] = {
            **counts,
            "errors": int((has_gold & (pred < 0)).sum()),
            "skipped": int(len(rows) - has_gold.sum()),
            "precision": precision, "recall": recall, "f1": f1, "f1_ci": [low, high],
        }
    out["multi_policy_accuracy"] = float(all_match.mean()) if n else 0.0
    out["rows_scored"] = n
    out["bootstrap"] = {"samples": bootstrap_samples, "seed": seed}
    return out


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test on paired predictions of two versions over the same gold labels."""

    pairs: int  # rows with a gold label in both evals
    old_only_correct: int  # b: the old version right, the new one wrong
    new_only_correct: int  # c
    p_value: float


def mcnemar_exact(gold: list[int], old_pred: list[int | None], new_pred: list[int | None]) -> PairedTest:
    """Two-sided exact McNemar test (a binomial test on the discordant pairs). An error prediction
    (None) counts as wrong, as in multi-policy accuracy."""
    from scipy.stats import binomtest

    b = c = 0
    for g, o, n in zip(gold, old_pred, new_pred):
        old_ok, new_ok = o is not None and o == g, n is not None and n == g
        b += old_ok and not new_ok
        c += new_ok and not old_ok
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return PairedTest(len(gold), b, c, p)


def dataset_key(dataset: str) -> str:
    """How an eval names its dataset in the eval table: a file's absolute path, else ``table:<name>``."""
    path = Path(dataset).expanduser()
    if path.is_file() or path.suffix.lower() in (".jsonl", ".ndjson", ".csv"):
        return str(path.resolve())
    return f"table:{dataset}"
