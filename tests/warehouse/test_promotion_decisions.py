"""The approver's answer (policy_quality.promotion_gate.decide_promotions), on a real SQLite warehouse:
reject leaves the version in shadow and logs the refusal with the approver; approve promotes with the
approver as actor. The Airflow approval task around it runs in tests/airflow/test_promotion_approval.py."""

from __future__ import annotations

from safeguard_flow.domain.policies import load_policy_set
from safeguard_flow.policy_quality.policy_change import review_version
from safeguard_flow.policy_quality.promotion_gate import approval_request, decide_promotions
from safeguard_flow.warehouse import db, policy_store
from safeguard_flow.warehouse.promotions import list_promotions
from safeguard_flow.warehouse.sample_data import copy_policies


def test_reject_then_approve_are_logged_with_the_approver(sqlite_wh_settings, policies_dir, tmp_path):
    settings = sqlite_wh_settings
    engine = db.make_engine(settings)
    try:
        policy_store.publish_policies(engine, settings, load_policy_set(policies_dir), author="test")
        edited = copy_policies(tmp_path / "edited", ("spam",))
        (edited / "spam.md").write_text((edited / "spam.md").read_text() + "\n- Paid group chats are spam.\n")
        policy_store.publish_policies(engine, settings, load_policy_set(edited), author="test", shadow=True)
        summary = review_version(engine, settings, "spam", 2, actor="test")
        assert summary["outcome"].startswith("awaiting")

        request = approval_request(engine, settings, [summary], "http://af.example:8080/")
        assert request.subject == "Promote spam v2?" and len(request.candidates) == 1
        assert "(http://af.example:8080/safeguard/diff/spam/1/2)" in request.body
        assert approval_request(engine, settings, [{**summary, "shadow": False}]) is None  # nothing awaits

        (no,) = decide_promotions(engine, settings, request.candidates, approved=False, approver="alice", where="test run")
        assert no == {"policy": "spam", "version": 2, "outcome": "refused", "actor": "alice"}
        head = policy_store.get_head(engine, settings, "spam")
        assert (head.current_version, head.shadow_version) == (1, 2)  # still in shadow

        (yes,) = decide_promotions(engine, settings, request.candidates, approved=True, approver="bob", where="test run")
        assert yes["outcome"] == "promoted"
        assert policy_store.get_head(engine, settings, "spam").current_version == 2
        log = list_promotions(engine, settings, "spam")
        assert [(r["outcome"], r["actor"], r["reason"]) for r in log] == [
            ("promoted", "bob", "approved by bob (test run)"), ("refused", "alice", "rejected by alice (test run)")]
        # Answered again (the version is current now): nothing left to decide, nothing logged.
        (again,) = decide_promotions(engine, settings, request.candidates, approved=True, approver="bob", where="x")
        assert again["outcome"] == "unchanged" and len(list_promotions(engine, settings, "spam")) == 2
    finally:
        engine.dispose()
