"""Eval metrics (checked against scikit-learn), label mapping, dataset checks, McNemar, policy lint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from safeguard_flow.policy_quality.datasets import LabelledRow, gold_value, parse_label_map, read_labelled_file
from safeguard_flow.policy_quality.metrics import compute_metrics, mcnemar_exact
from safeguard_flow.domain.verdicts import MALFORMED, OK, Verdict


def _rows_and_verdicts(n=60, seed=3):
    rng = np.random.default_rng(seed)
    rows, verdicts = [], []
    for i in range(n):
        g = {"a": int(rng.integers(0, 2)), "b": int(rng.integers(0, 2))}
        if i % 11 == 0:
            g["b"] = None  # not 0/1: skipped
        rows.append(LabelledRow(f"r{i}", "text", g))
        for p in ("a", "b"):
            if i % 13 == 0:
                verdicts.append(Verdict(content_id=f"r{i}", policy=p, policy_version=1, label=None, parse_status=MALFORMED))
            else:
                label = g[p] if (g[p] is not None and rng.random() < 0.7) else int(rng.integers(0, 2))
                verdicts.append(Verdict(content_id=f"r{i}", policy=p, policy_version=1, label=label, parse_status=OK))
    return rows, verdicts


def test_metrics_match_scikit_learn():
    rows, verdicts = _rows_and_verdicts()
    m = compute_metrics(rows, verdicts, ["a", "b"], bootstrap_samples=100, seed=1)
    by = {(v.content_id, v.policy): v for v in verdicts}
    for p in ("a", "b"):
        ok = [r for r in rows if r.gold[p] is not None and not by[(r.content_id, p)].is_error]
        y = [r.gold[p] for r in ok]
        yhat = [by[(r.content_id, p)].label for r in ok]
        got = m["policies"][p]
        assert got["precision"] == pytest.approx(precision_score(y, yhat))
        assert got["recall"] == pytest.approx(recall_score(y, yhat))
        assert got["f1"] == pytest.approx(f1_score(y, yhat))
        assert got["errors"] == sum(1 for r in rows if r.gold[p] is not None and by[(r.content_id, p)].is_error)
        assert got["skipped"] == sum(1 for r in rows if r.gold[p] is None)
        assert got["f1_ci"][0] <= got["f1"] <= got["f1_ci"][1]
    assert m["policies"]["b"]["skipped"] == 6 and m["policies"]["a"]["errors"] == 5
    match = [all(r.gold[p] is None or (not by[(r.content_id, p)].is_error and by[(r.content_id, p)].label == r.gold[p])
                 for p in ("a", "b")) for r in rows]
    assert m["multi_policy_accuracy"] == pytest.approx(sum(match) / len(rows))
    again = compute_metrics(rows, verdicts, ["a", "b"], bootstrap_samples=100, seed=1)
    assert again == m  # seeded: the same intervals every time


def test_rows_without_any_gold_label_are_not_scored():
    rows = [LabelledRow("x", "t", {"a": None}), LabelledRow("y", "t", {"a": 1})]
    m = compute_metrics(rows, [Verdict(content_id="y", policy="a", policy_version=1, label=1, parse_status=OK)], ["a"], bootstrap_samples=10)
    assert m["rows_scored"] == 1 and m["policies"]["a"]["skipped"] == 1 and m["multi_policy_accuracy"] == 1.0


def test_gold_values_and_label_flags():
    assert [gold_value(v) for v in (0, 1, "1", " 0 ", 2, True, None, "yes", 1.0)] == [0, 1, 1, 0, None, None, None, None, None]
    assert parse_label_map(["sexual=S", "hate = H"]) == {"sexual": "S", "hate": "H"}
    with pytest.raises(ValueError, match="POLICY=COLUMN"):
        parse_label_map(["sexual"])


def test_dataset_checks(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt": "x", "S": 1}) + "\n" + json.dumps({"id": 2, "prompt": "y"}) + "\n")
    rows = read_labelled_file(path, {"sexual": "S"}, text_column="prompt")
    assert [(r.content_id, r.gold["sexual"]) for r in rows] == [("1", 1), ("2", None)]
    with pytest.raises(ValueError, match="--text-column"):
        read_labelled_file(path, {"sexual": "S"})
    with pytest.raises(ValueError, match="no gold column"):
        read_labelled_file(path, {"sexual": "NOPE"}, text_column="prompt")
    path.write_text(json.dumps({"id": 1, "text": "x"}) + "\n" + json.dumps({"id": 1, "text": "y"}) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_labelled_file(path, {})
    csv = tmp_path / "d.csv"
    csv.write_text("id,text,S\n1,a,1\n2,b,\n3,c,0\n")
    assert [r.gold["s"] for r in read_labelled_file(csv, {"s": "S"})] == [1, None, 0]
    # The rows `label` would turn into error verdicts make a dataset unreadable instead.
    csv.write_bytes(b"id,text,S\n1,a,1\n2,bad \xff byte,0\n")
    with pytest.raises(ValueError, match="line 3: not valid UTF-8"):
        read_labelled_file(csv, {"s": "S"})
    path.write_text(json.dumps({"id": 1, "text": "x"}) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        read_labelled_file(path, {})


def test_mcnemar_exact():
    gold = [1] * 10 + [0] * 10
    same = mcnemar_exact(gold, gold, gold)
    assert (same.old_only_correct, same.new_only_correct, same.p_value) == (0, 0, 1.0)
    worse = mcnemar_exact(gold, gold, [1 - g for g in gold[:10]] + gold[10:])
    assert (worse.old_only_correct, worse.new_only_correct) == (10, 0)
    assert worse.p_value == pytest.approx(2 * 0.5 ** 10)
    errors = mcnemar_exact([1, 1], [1, 1], [None, 1])  # an error prediction counts as wrong
    assert (errors.old_only_correct, errors.new_only_correct, errors.p_value) == (1, 0, 1.0)


def test_lint_levels(settings_factory):
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.policy_quality.lint import lint
    from safeguard_flow.warehouse.sample_data import POLICIES

    policies = load_policy_set(POLICIES)[:3]
    settings = settings_factory(model={"max_model_len": 1000})
    for tokens, level in ((399, "warning"), (400, "ok"), (600, "ok"), (601, "warning"), (1000, "error")):
        assert {r.level for r in lint(policies, settings, count=lambda text, n=tokens: n)} == {level}


def test_lint_counts_with_the_harmony_encoding_for_gpt_oss(settings_factory):
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.policy_quality.lint import lint, tokenizer_for
    from safeguard_flow.warehouse.sample_data import POLICIES

    settings = settings_factory(model={"name": "openai/gpt-oss-safeguard-20b"})
    name, count = tokenizer_for(settings)
    assert name == "harmony o200k" and count("hello <|end|> world") > 3  # control-token text is text
    lengths = lint(load_policy_set(POLICIES), settings)
    assert all(300 < r.tokens < 800 for r in lengths)
