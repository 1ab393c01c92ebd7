"""BI views (current verdicts, daily rates, flips, run errors) and the example BI queries."""

import dataclasses
import datetime as dt

import pytest
from tests.warehouse.warehouse_helpers import KeywordModel, at

from safeguard_flow.warehouse import extract, policy_store, runs, schema


def publish_spam_v2(wh, small_policies):
    spam = next(p for p in small_policies if p.name == "spam")
    (res,) = policy_store.publish_policies(wh.engine, wh.settings, [dataclasses.replace(
        spam, text=spam.text + "\nv2: posts count as spam.", sha256="", version=None)], "me")
    return res.policy


def relabel(wh, policy, limit=None, model=None):
    run_id = runs.create_run(wh.engine, wh.settings, "relabel", [policy])
    extract.extract_relabel(wh.engine, wh.settings, run_id, policy.name, policy.version, limit=limit)
    wh.label(run_id, model)
    wh.publish(run_id)
    return run_id


@pytest.fixture
def labelled(wh):
    wh.add_posts([("1", "buy now", at(1)), ("2", "a post", at(2)), ("3", "another post", at(3)),
                  ("4", "hello", at(4)), ("5", None, at(5))])
    wh.run_all()
    return wh


def current(wh, policy):
    return {r["content_id"]: r for r in wh.view("current_verdicts", "content_id") if r["policy"] == policy}


def test_current_verdicts_follow_the_active_version(labelled, small_policies):
    wh = labelled
    assert {r["policy_version"] for r in current(wh, "spam").values()} == {1}
    assert current(wh, "spam")["1"]["is_positive"] == 1 and current(wh, "spam")["5"]["is_positive"] is None

    v2 = publish_spam_v2(wh, small_policies)
    # The relabel is under way: items it reached show v2, the others keep v1 (flagged not active).
    relabel(wh, v2, limit=2, model=KeywordModel("post"))
    rows = current(wh, "spam")
    assert len(rows) == 5
    assert sorted(r["policy_version"] for r in rows.values()) == [1, 1, 1, 2, 2]
    assert all(r["is_active_version"] == (r["policy_version"] == 2) for r in rows.values())
    assert all(r["active_version"] == 2 for r in rows.values())
    assert {r["policy_version"] for r in current(wh, "self-harm").values()} == {1}

    policy_store.pin_policy(wh.engine, wh.settings, "spam", 1)  # BI stays on v1 until v2 is reviewed
    rows = current(wh, "spam")
    assert {(r["policy_version"], r["is_active_version"]) for r in rows.values()} == {(1, 1)}
    policy_store.pin_policy(wh.engine, wh.settings, "spam", None)
    relabel(wh, v2, model=KeywordModel("post"))
    rows = current(wh, "spam")
    assert {(r["policy_version"], r["is_active_version"]) for r in rows.values()} == {(2, 1)}
    assert {cid for cid, r in rows.items() if r["is_positive"]} == {"2", "3"}


def test_daily_rates_per_policy_version(labelled, small_policies):
    rows = labelled.view("daily_policy_rates", "policy")
    assert [r["policy"] for r in rows] == ["self-harm", "spam"]
    spam = rows[1]
    assert str(spam["day"])[:10] == at(0).date().isoformat()  # the run's data interval, not today
    assert (spam["policy_version"], spam["verdicts"], spam["labelled"], spam["positives"], spam["errors"]) == (1, 5, 4, 1, 1)
    assert spam["positive_rate"] == pytest.approx(0.25) and spam["error_rate"] == pytest.approx(0.2)

    # A backfill of the next interval lands on its own day; a relabel (no interval) on the day it ran.
    wh = labelled
    wh.add_posts([("6", "buy buy", at(30))])
    wh.run_all(start=at(24), end=at(48))
    relabel(wh, publish_spam_v2(wh, small_policies), model=KeywordModel("post"))
    spam_days = {(r["policy_version"], str(r["day"])[:10]): r["verdicts"]
                 for r in wh.view("daily_policy_rates", "day") if r["policy"] == "spam"}
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert spam_days == {(1, at(0).date().isoformat()): 5, (1, at(24).date().isoformat()): 1, (2, today): 6}


def test_flips_between_two_versions(labelled, small_policies):
    wh = labelled
    v2 = publish_spam_v2(wh, small_policies)
    relabel(wh, v2, model=KeywordModel("post"))  # v2 flags posts, not "buy"
    flips = wh.view("verdict_flips", "content_id")
    got = {(r["content_id"], r["old_label"], r["new_label"], r["old_version"], r["new_version"], r["same_content"])
           for r in flips}
    assert got == {("1", 1, 0, 1, 2, 1), ("2", 0, 1, 1, 2, 1), ("3", 0, 1, 1, 2, 1)}

    # Text edited after its v1 label and relabelled under v2 only: the flip is flagged same_content = 0.
    wh.edit_post("4", "hello, this is a post", at(30))
    relabel(wh, v2, model=KeywordModel("post"))
    (four,) = [r for r in wh.view("verdict_flips") if r["content_id"] == "4"]
    assert (four["old_label"], four["new_label"], four["same_content"]) == (0, 1, 0)


def test_errors_per_run_include_quarantined_runs(labelled):
    wh = labelled
    wh.add_posts([("6", "", at(6)), ("7", None, at(7))])
    run_id = wh.nightly(run_id="bad-run")
    wh.label(run_id)
    runs.transition(wh.engine, wh.settings, run_id, runs.RunStatus.QUARANTINED)
    rows = [r for r in wh.view("run_errors") if r["run_id"] == "bad-run"]
    assert {(r["policy"], r["parse_status"], r["errors"], r["run_status"]) for r in rows} == {
        ("spam", "input_error", 2, "quarantined"), ("self-harm", "input_error", 2, "quarantined")}
    assert {r["sample_error"] for r in rows} == {"content is NULL"}


def test_example_bi_queries_run(labelled, small_policies):
    wh = labelled
    relabel(wh, publish_spam_v2(wh, small_policies), model=KeywordModel("post"))
    bi = schema.sql_dir() / "bi"
    files = sorted(bi.glob("*.sql"))
    assert len(files) >= 5
    results = {f.name: wh.query(f.read_text()) for f in files}
    assert len(results["flips_between_versions.sql"]) >= 2
    assert {r["content_id"] for r in results["flip_examples.sql"]} == {"2", "3"}
    assert {(r["name"], r["version"], r["is_active"]) for r in results["policy_versions.sql"]} == {
        ("self-harm", 1, 1), ("spam", 1, 0), ("spam", 2, 1)}
    assert results["run_health.sql"] and results["current_positives.sql"]
