"""`safeguard-flow eval` with the real local vLLM engine on a slice of the project's own labelled
sample; every figure of metrics.json is recomputed independently with scikit-learn from the
verdicts it wrote. This is also the CI eval run (a slice: the full moderation set is `make eval-full`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from safeguard_flow.cli import main as cli
from safeguard_flow.domain.policies import load_policy_set
from safeguard_flow.warehouse.sample_data import SAMPLE, copy_policies

pytestmark = pytest.mark.slow

# Gold columns present in the sample before and after its rewrite (it gains a `spam` column).
LABELS = {"self-harm": "SH", "violence": "V"}
ROWS = 14
BOOTSTRAP = 200


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SAFEGUARD_TEST_")]:
        monkeypatch.delenv(key)  # the helpers' port variables are not settings
    rows = [json.loads(line) for line in Path(SAMPLE).read_text().splitlines()[:ROWS]]
    # Bad input the eval must handle: a gold label that is not 0/1, a missing one, an empty text.
    rows[0] = {**rows[0], "SH": 2}
    rows[1] = {k: v for k, v in rows[1].items() if k != "V"}
    rows[2] = {**rows[2], "text": ""}
    dataset = tmp_path / "slice.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "safeguard.yaml"
    config.write_text(yaml.safe_dump({
        "home": str(tmp_path / "home"),
        "warehouse": {"url": f"sqlite:///{tmp_path / 'warehouse.db'}"},
        "model": {"max_model_len": 2048, "kv_cache_gib": 1, "max_tokens": 64, "max_num_seqs": 16},
        "evals": {"bootstrap_samples": BOOTSTRAP, "seed": 7},
    }))
    return tmp_path, config, dataset, rows, copy_policies(tmp_path / "policies", ["self-harm", "violence"])


def _gold(value):
    return value if type(value) is int and value in (0, 1) else None


def test_eval_metrics_match_scikit_learn(workspace, vllm_engine, lend_engine, capsys):
    tmp, config, dataset, rows, policies = workspace
    lend_engine(vllm_engine)  # the session's engine: the same model settings as the config's
    out = tmp / "eval"
    argv = ["--config", str(config), "eval", "--policies", str(policies), "--dataset", str(dataset), "--output", str(out)]
    for policy, column in LABELS.items():
        argv += ["--label", f"{policy}={column}"]
    assert cli.main(argv) == 0
    check_outputs(out, rows, policies)

    capsys.readouterr()
    assert cli.main(["--config", str(config), "evals", "list"]) == 0
    listing = capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["eval_id"] in listing and "self-harm" in listing


def check_outputs(out: Path, rows: list[dict], policies: Path) -> None:
    """Every figure of metrics.json, recomputed from verdicts.jsonl and the dataset with scikit-learn."""
    metrics = json.loads((out / "metrics.json").read_text())
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == len(rows) * len(LABELS)
    by_key = {(v["content_id"], v["policy"]): v for v in verdicts}
    assert by_key[(rows[2]["id"], "self-harm")]["parse_status"] != "ok"  # empty text: an error verdict

    # Independent recomputation, row by row.
    gold = {p: [_gold(r.get(c)) for r in rows] for p, c in LABELS.items()}
    pred = {p: [by_key[(r["id"], p)]["label"] if by_key[(r["id"], p)]["parse_status"] == "ok" else None for r in rows]
            for p in LABELS}
    scored = [i for i in range(len(rows)) if any(gold[p][i] is not None for p in LABELS)]
    assert metrics["rows_scored"] == len(scored) >= len(rows) - 1
    for p in LABELS:
        m = metrics["policies"][p]
        ok = [i for i in scored if gold[p][i] is not None and pred[p][i] is not None]
        y, yhat = [gold[p][i] for i in ok], [int(pred[p][i] >= 1) for i in ok]
        tn, fp, fn, tp = confusion_matrix(y, yhat, labels=[0, 1]).ravel()
        assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
        assert m["errors"] == sum(1 for i in scored if gold[p][i] is not None and pred[p][i] is None) >= 1
        assert m["skipped"] == sum(1 for g in gold[p] if g is None)
        assert m["precision"] == pytest.approx(precision_score(y, yhat, zero_division=0))
        assert m["recall"] == pytest.approx(recall_score(y, yhat, zero_division=0))
        assert m["f1"] == pytest.approx(f1_score(y, yhat, zero_division=0))
        # The bootstrap interval: the documented resampling (numpy default_rng(seed), rows with replacement).
        idx = np.random.default_rng(7).integers(0, len(scored), size=(BOOTSTRAP, len(scored)))
        draws = []
        for draw in idx:
            rows_ok = [scored[j] for j in draw if gold[p][scored[j]] is not None and pred[p][scored[j]] is not None]
            draws.append(f1_score([gold[p][i] for i in rows_ok], [int(pred[p][i] >= 1) for i in rows_ok],
                                  labels=[0, 1], zero_division=0))
        assert m["f1_ci"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])))
    assert metrics["policies"]["self-harm"]["skipped"] >= 1 and metrics["policies"]["violence"]["skipped"] >= 1
    all_match = {i: all(gold[p][i] is None or (pred[p][i] is not None and int(pred[p][i] >= 1) == gold[p][i])
                        for p in LABELS) for i in scored}
    assert metrics["multi_policy_accuracy"] == pytest.approx(sum(all_match.values()) / len(scored))
    assert not all_match[2]  # the error row is a mismatch

    expected = {p.name: p.sha256 for p in load_policy_set(policies)}
    assert metrics["policy_versions"] == {p: {"version": None, "sha256": expected[p]} for p in LABELS}
    assert metrics["engine"] == "vllm" and metrics["model"]
    assert metrics["prompt_tokens"] > 0 and metrics["completion_tokens"] > 0 and metrics["seconds"] > 0
    html = (out / "report.html").read_text()
    assert "scores.png" in html and "confusion.png" in html and "multi-policy accuracy" in html
    assert (out / "scores.png").stat().st_size > 5_000 and (out / "confusion.png").stat().st_size > 5_000

