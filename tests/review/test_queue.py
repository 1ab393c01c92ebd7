"""Routing, leases, decisions winning in sg_current_verdicts, disagreement flagging and the estimates
table, on SQLite and PostgreSQL, through the real publish path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from safeguard_flow.review import queue
from safeguard_flow.warehouse import review_store as store
from safeguard_flow.warehouse import policy_store, schema
from safeguard_flow.domain.policies import load_policy
from tests.review.seed import labelled_run, load_posts, publish_versions, relax_gate


def choose(i: int, policy: str, version: int):
    """post-0i0: error; -1: doubtful positive; -2: confident 0 the cascade called 1; else confident i % 2."""
    kind = i % 10
    if kind == 0:
        return None, None, {}
    if kind == 1:
        return 1, 0.55, {}
    if kind == 2:
        return 0, 0.9, {"cascade": {"label": 1, "probability": 0.8}}
    return i % 2, 0.95, {}


@pytest.fixture
def review_wh(wh_settings, wh_engine):
    relax_gate(wh_settings)
    wh_settings.review.audit_rate = 0.25
    wh_settings.review.audit_rate_doubtful = 0.5
    wh_settings.review.seed = "tests"
    load_posts(wh_engine)
    (spam,) = publish_versions(wh_engine, wh_settings)
    run_id, published = labelled_run(wh_engine, wh_settings, [spam], choose)
    return wh_engine, wh_settings, spam, run_id, published


def _current(engine, settings, content_id: str) -> dict:
    view = schema.view_names(settings)["current_verdicts"]
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(f"SELECT * FROM {view} WHERE content_id = :c AND policy = 'spam'"),
                                 {"c": content_id}).one()._mapping)


def test_publish_routes_by_the_rules_and_routing_again_adds_nothing(review_wh):
    engine, settings, spam, run_id, published = review_wh
    routed = published["review"]
    assert routed["verdicts"] == 40 and routed["added"] == routed["routed"]
    items = {r["content_id"]: r for r in store.queue_items(engine, settings, "spam")}
    ids = lambda kind: {f"post-{i:03d}" for i in range(1, 41) if i % 10 == kind}  # noqa: E731
    assert {c for c, r in items.items() if "error" in r["reasons"]} == ids(0)
    assert {c for c, r in items.items() if "low_confidence" in r["reasons"]} == ids(1)
    assert {c for c, r in items.items() if "cascade_disagreement" in r["reasons"]} == ids(2)
    assert all(r["reason"] == "error" and r["priority"] == 80 for c, r in items.items() if c in ids(0))
    # Errors and doubtful items are the doubtful stratum (rate 0.5); the rest were drawn at 0.25.
    for r in items.values():
        assert r["sampling_prob"] == (0.5 if r["stratum"] == "doubtful" else 0.25)
        assert r["audit"] == ("audit" in r["reasons"])
        assert r["text"] and r["run_id"] == run_id
    audited_confident = [r for r in items.values() if r["audit"] and r["stratum"] == "confident"]
    assert 2 <= len(audited_confident) <= 16  # ~25% of 28; the draw is a hash, so the same every time
    again = queue.route_run(engine, settings, run_id)
    assert again["added"] == 0 and again["already_queued"] == routed["routed"]
    assert again["by_reason"] == routed["by_reason"]
    est = {(e["policy"], e["policy_version"]): e for e in store.read_estimates(engine, settings)}
    assert est[("spam", spam.version)]["audit_items"] == sum(1 for r in items.values() if r["audit"])


def test_leases_never_give_one_item_to_two_reviewers_and_expire(review_wh):
    engine, settings, *_ = review_wh
    lease = settings.review.lease_seconds
    a = store.claim_next(engine, settings, "spam", "alice", lease)
    b = store.claim_next(engine, settings, "spam", "bob", lease)
    assert a.id != b.id and a.reason == "error" and a.leased_by == "alice"
    assert store.claim_next(engine, settings, "spam", "alice", lease).id == a.id  # still hers
    # Alice's lease expires; Carol (a minute after it ran out) takes the most urgent free item: Alice's.
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lease + 60)
    c = store.claim_next(engine, settings, "spam", "carol", lease, now=later)
    assert c.id == a.id and c.leased_by == "carol"
    with pytest.raises(store.LeaseLost):
        queue.decide(engine, settings, a.id, "alice", 1)
    queue.decide(engine, settings, c.id, "carol", 0, note="not spam")
    # Skipping puts an item back for others but not for the one who skipped it.
    queue.decide(engine, settings, b.id, "bob", None, note="unsure")
    assert store.claim_next(engine, settings, "spam", "bob", lease).id not in (b.id, c.id)
    assert store.claim_next(engine, settings, "spam", "dave", lease).id == b.id
    history = store.decision_history(engine, settings, "spam", b.content_hash)
    assert [(h["reviewer"], h["decision"], h["note"]) for h in history] == [("bob", None, "unsure")]


def test_a_decision_wins_and_a_disagreeing_model_verdict_is_flagged(review_wh, policies_dir):
    engine, settings, spam, run_id, _ = review_wh
    lease = settings.review.lease_seconds
    # post-011 is a doubtful positive; the reviewer says 0.
    item = next(r for r in store.queue_items(engine, settings, "spam") if r["content_id"] == "post-011")
    before = _current(engine, settings, "post-011")
    assert before["label"] == 1 and before["decided_by"] == "model" and before["reviewer"] is None
    while (got := store.claim_next(engine, settings, "spam", "rita", lease)).id != item["id"]:
        queue.decide(engine, settings, got.id, "rita", None)  # skip until we reach it
    queue.decide(engine, settings, item["id"], "rita", 0, note="a joke, not spam")
    now = _current(engine, settings, "post-011")
    assert (now["label"], now["is_positive"], now["decided_by"], now["model_label"], now["reviewer"]) == \
        (0, 0, "human", 1, "rita")
    assert _current(engine, settings, "post-012")["decided_by"] == "model"

    # Routing the same run again does not reopen what the reviewer decided on that very verdict.
    again = queue.route_run(engine, settings, run_id)
    assert again["by_reason"]["disagrees_with_human"] == 1 and again["reopened"] == 0
    entry = next(r for r in store.queue_items(engine, settings, "spam") if r["content_id"] == "post-011")
    assert entry["status"] == "decided" and entry["decision"] == 0
    assert _current(engine, settings, "post-011")["decided_by"] == "human"

    # A new policy version: its verdict is the model's (the decision was for v1), flagged and routed.
    path = Path(policies_dir) / "spam.md"
    path.write_text(path.read_text() + "\n\nAlso: chain letters.\n")
    (v2,) = [r.policy for r in policy_store.publish_policies(engine, settings, [load_policy(path)], author="t")]
    _, published = labelled_run(engine, settings, [v2], choose, relabel_of=v2)
    flagged = [r for r in store.queue_items(engine, settings, "spam")
               if r["policy_version"] == v2.version and "disagrees_with_human" in r["reasons"]]
    assert [r["content_id"] for r in flagged] == ["post-011"]
    cur = _current(engine, settings, "post-011")
    assert (cur["policy_version"], cur["label"], cur["decided_by"]) == (v2.version, 1, "model")
    assert flagged[0]["id"] == store.claim_next(engine, settings, "spam", "rita", lease).id  # most urgent


def test_estimates_refresh_from_audit_decisions(review_wh):
    engine, settings, spam, *_ = review_wh
    audit = [r for r in store.queue_items(engine, settings, "spam") if r["audit"]]
    for r in audit:  # the reviewer agrees with every positive and says the negatives were right too
        store.record_decision(engine, settings, reviewer="ann", decision=r["model_label"] or 0, origin="ui",
                              item_id=r["id"])
    (row,) = queue.refresh_estimates(engine, settings, "spam", spam.version)
    errors = sum(1 for r in audit if r["model_label"] is None)  # an error verdict never agrees
    assert row["audit_decided"] == len(audit) and row["agreement"] == pytest.approx(1 - errors / len(audit))
    if any(r["model_label"] == 1 for r in audit):
        assert row["precision"] == 1.0 and row["precision_low"] < 1.0
    stored = {(e["policy"], e["policy_version"]): e for e in store.read_estimates(engine, settings)}
    assert stored[("spam", spam.version)]["audit_decided"] == len(audit)
