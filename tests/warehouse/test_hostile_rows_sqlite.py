"""Hostile rows only SQLite can hold (issue 9): TEXT with invalid UTF-8, integer 42 next to text '42'
in one column, timestamps as text with offsets or in no format. PostgreSQL types refuse them at write
time; the rows both databases can hold are in test_hostile_rows.py."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tests.warehouse.warehouse_helpers import DAY, T0

from safeguard_flow.domain.verdicts import INPUT_ERROR, OK
from safeguard_flow.warehouse import runs




@pytest.fixture
def warehouse_url(tmp_path) -> str:  # this module: SQLite only
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture
def sqlite_wh(make_warehouse):
    return make_warehouse()


def _untyped_posts(wh):
    """A SQLite table whose id column has no type affinity: integer 42 and text '42' stay apart."""
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE posts (id, body TEXT, updated_at DATETIME, lang TEXT)")


def test_invalid_utf8_text_becomes_an_error_verdict_not_an_extract_failure(sqlite_wh):
    wh = sqlite_wh
    _untyped_posts(wh)
    ts = "2024-03-01 01:00:00"
    with wh.engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO posts VALUES (1, CAST(X'FFFE6F6F7073' AS TEXT), '{ts}', 'en')")
        conn.exec_driver_sql(f"INSERT INTO posts VALUES (2, 'fine', '{ts}', 'en')")
        conn.exec_driver_sql(f"INSERT INTO posts VALUES (CAST(X'FF' AS TEXT), 'bad id', '{ts}', 'en')")
        with pytest.raises(sa.exc.OperationalError, match="Could not decode to UTF-8"):  # what used to happen
            conn.exec_driver_sql("SELECT body FROM posts ORDER BY id").all()
    run_id = wh.run_all()
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.status == "published" and run.items == 2
    rows = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    assert rows[("1", "spam")]["parse_status"] == INPUT_ERROR and "not valid UTF-8" in rows[("1", "spam")]["error"]
    assert rows[("2", "spam")]["parse_status"] == OK
    report = run.params["extract_report"]
    assert (report["rows_read"], report["undecodable_text"], report["bad_ids"]) == (3, 1, 1)
    assert any("not UTF-8" in w for w in run.warnings)


def test_integer_and_text_ids_that_print_the_same_are_a_duplicate_not_a_lost_run(sqlite_wh):
    wh = sqlite_wh
    _untyped_posts(wh)
    with wh.engine.begin() as conn:
        for cid in (42, "42", 7, "8", 100, "x"):  # ORDER BY id puts integers before text: 42 .. '42' apart
            conn.execute(sa.text("INSERT INTO posts VALUES (:id, :b, '2024-03-01 02:00:00', 'en')"),
                         {"id": cid, "b": f"post {cid!r}"})
    run_id = wh.run_all()
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.status == "published" and run.duplicate_ids == 1
    rows = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    assert {cid for cid, _ in rows} == {"42", "7", "8", "100", "x"}  # the 4 legitimate ones are labelled
    dup = rows[("42", "spam")]
    assert dup["parse_status"] == INPUT_ERROR
    assert "duplicate content id: 2 rows" in dup["error"] and "integer and text" in dup["error"]
    assert all(rows[(c, "spam")]["parse_status"] == OK for c in ("7", "8", "100", "x"))
    report = run.params["extract_report"]
    assert report["rows_read"] == 6 == report["items"] + report["dropped_duplicate_rows"]


def test_sqlite_text_timestamps_are_parsed_not_compared_as_text(sqlite_wh):
    wh = sqlite_wh
    _untyped_posts(wh)
    with wh.engine.begin() as conn:
        for cid, ts in [("offset", "2024-03-01 23:30-05:00"),  # = 2024-03-02 04:30 UTC: the second day
                        ("zulu", "2024-03-01T12:00:00Z"), ("naive", "2024-03-01 12:00:00.250000"),
                        ("date", "2024-03-01"), ("garbage", "last tuesday"), ("epoch", 1709251200)]:
            conn.execute(sa.text("INSERT INTO posts VALUES (:id, :id, :ts, 'en')"), {"id": cid, "ts": ts})
    day1 = wh.nightly(T0, T0 + DAY)
    assert sorted(i["content_id"] for i in wh.query("SELECT content_id FROM sg_work_items WHERE run_id = :r",
                                                      r=day1)) == ["date", "naive", "zulu"]
    report = runs.get_run(wh.engine, wh.settings, day1).params["extract_report"]["sources"]["posts"]
    assert report["unparseable_updated_at"] == 2  # "last tuesday" and a bare number
    day2 = wh.nightly(T0 + DAY, T0 + 2 * DAY)
    assert [i["content_id"] for i in wh.query("SELECT content_id FROM sg_work_items WHERE run_id = :r",
                                              r=day2)] == ["offset"]

