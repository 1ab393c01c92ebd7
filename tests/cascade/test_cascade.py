"""The cascade: threshold choice, the switch-off rule, training rows from verdicts with human decisions
winning, a new version never using an older version's cascade, the switch-off read back from recorded
chunks, and `cascade train`/`predict` on a file (the real encoder from PyPI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safeguard_flow.engines.cascade import Cascade
from safeguard_flow.labelling.cascade_route import switched_off
from safeguard_flow.policy_quality.cascade_train import choose_thresholds, lower_bound


def test_thresholds_hold_the_lower_bound_on_each_side():
    rng = np.random.default_rng(0)
    # 600 clear negatives, 200 clear positives, 200 doubtful with labels at random
    p = np.concatenate([rng.uniform(0, 0.1, 600), rng.uniform(0.9, 1, 200), rng.uniform(0.3, 0.7, 200)])
    y = np.concatenate([np.zeros(600, int), np.ones(200, int), rng.integers(0, 2, 200)])
    y[:3] = 1  # a few mistakes among the sure negatives
    low, high, f = choose_thresholds(p, y, 0.98, 0.95)
    assert 0.09 <= low < 0.45 and 0.55 < high <= 0.91  # the doubtful middle is left to the model
    assert f["decided"] < 950
    assert f["agreement_0_low"] >= 0.98 and f["agreement_1_low"] >= 0.98
    assert f["decided_0"] == int((p <= low).sum()) and f["decided_1"] == int((p >= high).sum())
    assert f["decided_0"] >= 590 and f["decided_1"] >= 190
    # the point estimate alone would allow more: the bound is what was used
    assert lower_bound(98, 100, 0.95) < 0.98 <= 98 / 100
    # a side that cannot reach the bound decides nothing
    low, high, f = choose_thresholds([0.1] * 50 + [0.9] * 50, [0, 1] * 50, 0.98, 0.95)
    assert (low, high) == (-1.0, 2.0) and f["decided"] == 0


def test_switch_off_rule():
    kw = dict(min_agreement=0.98, min_audit=20, confidence=0.95)
    assert not switched_off(10, 0, **kw)  # too few audited to judge
    assert not switched_off(50, 49, **kw)  # one disagreement: could be bad luck
    assert switched_off(50, 40, **kw)  # 80%: surely under 98%
    assert not switched_off(200, 200, **kw)


def _cascade(policy, version, w, low=0.2, high=0.8):
    return Cascade(policy=policy, policy_version=version, members=[{"coef": w, "intercept": 0.0, "a": -1.0, "b": 0.0}],
                   low=low, high=high, meta={"training_size": 2, "training_sha256": "x", "source": "test",
                                             "heldout": {"share_decided": 0.5, "agreement": 1.0, "agreement_low": 0.9}})


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verdicts_train_with_human_decisions_winning_and_versions_stay_apart(wh_settings, wh_engine):
    from safeguard_flow.warehouse import cascades, db
    from safeguard_flow.warehouse.schema import tables
    from tests.review.seed import labelled_run, load_posts, publish_versions, relax_gate

    relax_gate(wh_settings)
    load_posts(wh_engine)
    (spam,) = publish_versions(wh_engine, wh_settings, ("spam",))
    labelled_run(wh_engine, wh_settings, [spam], lambda i, name, version: (i % 2, 0.9, {}))
    rows = cascades.training_rows(wh_engine, wh_settings, "spam", spam.version)
    model_rows = [r for r in rows if r.source == "model"]
    assert len(model_rows) >= 20 and {r.label for r in model_rows} == {0, 1}
    # a reviewer overrules the model on two texts: the decision comes later and wins
    t = tables(wh_settings).review_decisions
    overruled = model_rows[:2]
    with db.write_tx(wh_engine) as conn:
        for r in overruled:
            conn.execute(t.insert().values(source="posts", content_id="x", policy="spam", policy_version=spam.version,
                                           content_hash=r.content_hash, decision=1 - r.label, model_label=r.label,
                                           reviewer="alice", origin="ui", decided_at=db.utcnow()))
    rows = cascades.training_rows(wh_engine, wh_settings, "spam", spam.version)
    last = {}
    for r in rows:
        last[r.content_hash] = r
    for r in overruled:
        assert last[r.content_hash].label == 1 - r.label and last[r.content_hash].source == "human"
    from safeguard_flow.policy_quality.cascade_train import training_hash
    assert training_hash(list(last.values())) != training_hash(model_rows)

    # stored for version 1: version 1 finds it, a new version 2 finds none
    cascade = _cascade("spam", spam.version, [1.0, 0.0])
    cid = cascades.save(wh_engine, wh_settings, cascade, actor="test")
    got = cascades.for_version(wh_engine, wh_settings, "spam", spam.version)
    assert got.id == cid and got.members == cascade.members and (got.low, got.high) == (0.2, 0.8)
    assert cascades.for_version(wh_engine, wh_settings, "spam", spam.version + 1) is None
    assert cascades.for_policies(wh_engine, wh_settings, [("spam", spam.version + 1)]) == {}


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_low_audit_agreement_switches_the_cascade_off_for_the_rest_of_the_run(wh_settings, wh_engine):
    from safeguard_flow.raylib.batch import cascade_stage
    from safeguard_flow.warehouse import cascades, runs
    from tests.review.seed import publish_versions

    (spam,) = publish_versions(wh_engine, wh_settings, ("spam",))
    run_id = runs.create_run(wh_engine, wh_settings, "manual", [spam])

    def chunk(no, audited, agree):
        cascades.record_chunk(wh_engine, wh_settings, run_id, no, [dict(
            policy="spam", policy_version=spam.version, cascade_id=1, items=100, decided=80, audited=audited,
            audit_agree=agree, calls_avoided=80 - audited, cascade_s=1.0, model_s=5.0, off=False, note=None)])

    chunk(0, 15, 15)
    assert cascade_stage.off_policies(wh_engine, wh_settings, run_id) == {}
    chunk(1, 15, 9)  # 24/30 audited pairs agree: 80%
    off = cascade_stage.off_policies(wh_engine, wh_settings, run_id)
    assert "spam" in off and "24/30" in off["spam"]
    f = cascade_stage.finish(wh_engine, wh_settings, run_id)[f"spam v{spam.version}"]
    assert (f["decided"], f["audited"], f["audit_agree"], f["calls_avoided"]) == (160, 30, 24, 130)
    assert any("switched off" in w for w in runs.get_run(wh_engine, wh_settings, run_id).warnings)

    # the quality gate quarantines the version: its cascade verdicts before the switch-off are suspect
    from safeguard_flow.pipeline.cascade_check import apply_cascade_checks
    from safeguard_flow.pipeline.expectations import ValidationReport, VersionGate

    report = ValidationReport(run_id, True, "", {}, versions=[VersionGate("spam", spam.version, passed=True, checks=3)])
    report = apply_cascade_checks(wh_engine, wh_settings, report)
    (gate,) = report.versions
    assert not gate.passed and not report.success and "cascade audit agreement" in gate.reason
    assert "decided 160 of 200 pairs" in " ".join(c.observed for c in report.checks)


SPAMMY = ["BUY cheap pills now!!! limited offer, click {n}", "Earn $5000 a week from home, visit my site {n}",
          "Hot singles in your area, free entry code {n}", "Crypto giveaway: send 1 BTC get 2 back {n}"]
PLAIN = ["The meeting moved to Tuesday at {n} pm.", "I made lentil soup, recipe below {n}.",
         "Our cat learned to open the fridge door {n} times.", "Train {n} was late again this morning."]


@pytest.mark.slow
def test_cascade_train_and_predict_on_a_file(settings_factory, tmp_path, capsys):
    """Rows of our own making (the shared moderation set is read by the bench): train from a file,
    predict writes one line per input row with id, decided, label when decided, probability."""
    from safeguard_flow.cli.main import main

    settings = settings_factory()
    config = tmp_path / "sg.yaml"
    config.write_text(f"home: {settings.home}\npolicies_dir: {settings.policies_dir}\n"
                      f"warehouse: {{url: '{settings.warehouse.url}'}}\n")
    train = tmp_path / "train.jsonl"
    with train.open("w") as f:
        for n in range(30):
            for k, text in enumerate(SPAMMY + PLAIN):
                f.write(json.dumps({"id": f"t{n}-{k}", "text": text.format(n=n), "spam": int(k < 4)}) + "\n")
    assert main(["--config", str(config), "policies", "publish", settings.policies_dir]) == 0
    assert main(["--config", str(config), "cascade", "train", "--policy", "spam", "--dataset", str(train),
                 "--label", "spam"]) == 0
    new = tmp_path / "new.jsonl"
    rows = [{"id": "a", "text": "FREE pills, click now to win $$$"}, {"id": "b", "text": "See you at lunch on Friday."},
            {"id": "c", "text": None}, {"id": "d", "text": "Ça va ? Le train était en retard."}]
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred.jsonl"
    assert main(["--config", str(config), "cascade", "predict", "--policy", "spam", "--input", str(new),
                 "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b", "c", "d"]
    for x in lines:
        assert set(x) >= {"id", "decided", "probability"} and ("label" in x) == x["decided"]
    assert lines[2]["decided"] is False and "error" in lines[2]
    assert lines[0]["probability"] > lines[1]["probability"]
    assert main(["--config", str(config), "cascade", "show", "spam"]) == 0
    assert "file:" in capsys.readouterr().out
