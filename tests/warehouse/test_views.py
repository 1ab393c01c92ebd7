"""BI views (current verdicts, daily rates, flips, run errors) and the example BI queries."""

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa
from tests.conftest import EVERY_WAREHOUSE, warehouse_url_for
from tests.warehouse.warehouse_helpers import KeywordModel, at

from safeguard_flow.warehouse import extract, policy_store, runs, schema, views


@pytest.fixture(params=EVERY_WAREHOUSE)
def warehouse_url(request, tmp_path):
    """The views are plain SQL: the same rows on SQLite, PostgreSQL, MariaDB and DuckDB."""
    return warehouse_url_for(request, tmp_path, request.param)


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
    rows = [r for r in labelled.view("daily_policy_rates", "policy") if r["verdicts"]]
    assert [r["policy"] for r in rows] == ["self-harm", "spam"]
    spam = rows[1]
    assert str(spam["day"])[:10] == at(0).date().isoformat()  # the content's day, not today
    assert (spam["policy_version"], spam["verdicts"], spam["labelled"], spam["positives"], spam["errors"]) == (1, 5, 4, 1, 1)
    assert spam["positive_rate"] == pytest.approx(0.25) and spam["error_rate"] == pytest.approx(0.2)
    # What the Safeguard view charts: the same row, its day a date on every dialect.
    since = (dt.datetime.now(dt.timezone.utc).date() - at(0).date()).days + 1
    (charted,) = [r for r in views.daily_rates(labelled.engine, labelled.settings, since)
                  if r["policy"] == "spam" and r["verdicts"]]
    assert charted["day"] == at(0).date() and charted["positives"] == spam["positives"]


def test_two_versions_chart_over_the_content_days(labelled, small_policies):
    """A relabel counts on its content's days (v1 and v2 line up); sg_daily_labelling keeps what was
    labelled when (all of it today), and the rates show no day without content (no zero rows)."""
    wh = labelled
    wh.add_posts([("6", "buy buy", at(30))])
    wh.run_all(start=at(24), end=at(48))
    relabel(wh, publish_spam_v2(wh, small_policies), model=KeywordModel("post"))
    rows = [r for r in wh.view("daily_policy_rates", "day") if r["policy"] == "spam"]
    d0, d1 = at(0).date().isoformat(), at(24).date().isoformat()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    by_content = {(r["policy_version"], str(r["day"])[:10]): r["verdicts"] for r in rows}
    assert by_content == {(1, d0): 5, (1, d1): 1, (2, d0): 5, (2, d1): 1}
    assert all(r["verdicts"] > 0 for r in wh.view("daily_policy_rates", "day"))
    labelling = [r for r in wh.view("daily_labelling", "day") if r["policy"] == "spam"]
    assert {(r["policy_version"], str(r["day"])[:10]): r["verdicts"] for r in labelling} == {(1, today): 6, (2, today): 6}
    (v2_today,) = [r for r in labelling if r["policy_version"] == 2]
    assert v2_today["positives"] == 2 and v2_today["positive_rate"] == pytest.approx(2 / 5)

    # Each verdict keeps its content's own updated_at; an edit moves the relabelled verdict's day.
    v = {(r["content_id"], r["policy_version"]): r for r in wh.verdicts() if r["policy"] == "spam"}
    assert v[("1", 1)]["content_updated_at"] == at(1) and v[("6", 2)]["content_updated_at"] == at(30)
    wh.edit_post("4", "hello, this is a post", at(50))
    relabel(wh, policy_store.get_policies(wh.engine, wh.settings, [("spam", 2)])[0], model=KeywordModel("post"))
    spam_v2 = {str(r["day"])[:10]: r["verdicts"] for r in wh.view("daily_policy_rates", "day")
               if r["policy"] == "spam" and r["policy_version"] == 2 and r["verdicts"]}
    assert spam_v2 == {d0: 4, d1: 1, at(50).date().isoformat(): 1}


def test_verdicts_without_a_content_time_count_on_their_interval_day(labelled):
    """Verdicts from before migration 0004 (no content_updated_at) keep 0003's day: the run's interval."""
    wh = labelled
    v = schema.tables(wh.settings).verdicts
    with wh.engine.begin() as conn:
        conn.execute(v.update().values(content_updated_at=None))
    days = {str(r["day"])[:10] for r in wh.view("daily_policy_rates") if r["verdicts"]}
    assert days == {at(0).date().isoformat()}


def test_timestamps_carry_their_zone_on_every_dialect(labelled):
    wh = labelled
    t = schema.tables(wh.settings)
    with wh.engine.connect() as conn:
        if conn.dialect.name == "sqlite":  # stored as text: the zone is written out
            raw = conn.exec_driver_sql(f"SELECT labelled_at, extracted_at, published_at, content_updated_at "
                                       f"FROM {t.verdicts.name}").all()
            raw += conn.exec_driver_sql(f"SELECT created_at, interval_start, published_at, NULL FROM {t.runs.name}").all()
            values = [x for row in raw for x in row if x is not None]
            assert values and all(x.endswith("+00:00") and len(x) == 32 for x in values), values[:4]
        else:
            names = {c.name for table in t.metadata.tables.values() for c in table.c
                     if c.name.endswith("_at") or c.name.startswith("interval_")}
            cols = conn.execute(sa.text(
                "SELECT column_name, lower(data_type), datetime_precision FROM information_schema.columns "
                "WHERE table_name IN :tables AND table_schema = current_schema()" if conn.dialect.name != "mysql" else
                "SELECT column_name, lower(data_type), datetime_precision FROM information_schema.columns "
                "WHERE table_name IN :tables AND table_schema = database()").bindparams(
                    sa.bindparam("tables", expanding=True)), {"tables": [x.name for x in t.metadata.tables.values()]}).all()
            types = {(typ, prec) for name, typ, prec in cols if name in names}
            # MySQL/MariaDB: DATETIME(6) holding UTC (it has no zone-aware type); elsewhere a zone-aware type.
            expect = {"mysql": {("datetime", 6)}, "duckdb": {("timestamp with time zone", None)}}.get(
                conn.dialect.name, {("timestamp with time zone", 6)})  # DuckDB's are microseconds, unreported
            assert types == expect
        got = conn.execute(sa.select(t.verdicts.c.labelled_at, t.verdicts.c.content_updated_at)).first()
    assert got.labelled_at.utcoffset() == dt.timedelta(0) and got.content_updated_at.utcoffset() == dt.timedelta(0)


def test_flips_between_two_versions(labelled, small_policies):
    wh = labelled
    v2 = publish_spam_v2(wh, small_policies)
    relabel(wh, v2, model=KeywordModel("post"))  # v2 flags posts, not "buy"
    flips = wh.view("verdict_flips", "content_id")
    got = {(r["content_id"], r["old_label"], r["new_label"], r["old_version"], r["new_version"], r["same_content"])
           for r in flips}
    assert got == {("1", 1, 0, 1, 2, 1), ("2", 0, 1, 1, 2, 1), ("3", 0, 1, 1, 2, 1)}
    # The Safeguard view's summary of the pair: the error row (item 5, NULL on both sides) is compared, no flip.
    assert views.flip_summary(wh.engine, wh.settings) == [{
        "policy": "spam", "old_version": 1, "new_version": 2, "flips": 3, "to_positive": 2, "to_safe": 1,
        "with_error": 0, "compared": 5}]
    assert {r["content_id"] for r in views.recent_flips(wh.engine, wh.settings)} == {"1", "2", "3"}

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
