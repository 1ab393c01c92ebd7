"""Rows that used to stop or silently skip a run (issue 9): undecodable text, ids that print the same,
NULL / unparseable / future updated_at, offset timestamps stored as text. SQLite and PostgreSQL where
the database can hold such a row."""

from __future__ import annotations

from tests.warehouse.warehouse_helpers import DAY, SOURCE, T0, at

from safeguard_flow.domain.verdicts import INPUT_ERROR, OK
from safeguard_flow.warehouse import extract, runs
from safeguard_flow.warehouse.sources import SourceTable


def test_ids_the_stream_sees_apart_are_merged_before_staging(wh, monkeypatch):
    """The in-database net: whatever order the source returns, one (source, id) is one work item."""
    wh.add_posts([("a", "first", at(1)), ("b", "other", at(2)), ("a", "second", at(3)), ("c", "more", at(4))])
    original = SourceTable.select_rows

    def by_time(self, *args, **kwargs):  # an order in which the repeated id is not adjacent
        return original(self, *args, **kwargs).order_by(None).order_by(self.updated_col)

    monkeypatch.setattr(SourceTable, "select_rows", by_time)
    run_id = wh.run_all()
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.status == "published" and run.items == 3 and run.duplicate_ids == 1
    rows = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    assert rows[("a", "spam")]["parse_status"] == INPUT_ERROR and "duplicate content id: 2 rows" in rows[("a", "spam")]["error"]
    assert rows[("b", "spam")]["parse_status"] == OK


def test_null_and_future_updated_at_are_counted_and_reported_then_swept(make_warehouse):
    wh = make_warehouse()
    wh.create_posts()
    wh.add_posts([("in", "inside", at(5)), ("null", "no time", None), ("future", "from 2099", at(24 * 365 * 75))])
    run_id = wh.run_all()
    run = runs.get_run(wh.engine, wh.settings, run_id)
    report = run.params["extract_report"]["sources"]["posts"]
    assert (report["null_updated_at"], report["future_updated_at"], report["items"]) == (1, 1, 1)
    warning = next(w for w in run.warnings if "updated_at_column" in w)
    assert "1 NULL" in warning and "1 in the future" in warning and "sources[0].sweep_untimed" in warning
    assert {v["content_id"] for v in wh.verdicts()} == {"in"}

    swept = make_warehouse(sources=[{**SOURCE, "sweep_untimed": True}])
    swept.posts = wh.posts
    first = swept.run_all(T0 + DAY, T0 + 2 * DAY)
    assert {v["content_id"] for v in swept.verdicts()} == {"in", "null", "future"}
    assert runs.get_run(swept.engine, swept.settings, first).items == 2
    # Swept rows are labelled once: the next interval finds them unchanged.
    again = swept.nightly(T0 + 2 * DAY, T0 + 3 * DAY)
    assert runs.get_run(swept.engine, swept.settings, again).items == 0


def test_relabel_reads_rows_without_updated_at_too(wh):
    wh.add_posts([("1", "one", at(1)), ("2", "two", None)])
    run_id = runs.create_run(wh.engine, wh.settings, "relabel", [("spam", 1)])
    assert extract.extract_relabel(wh.engine, wh.settings, run_id, "spam", 1) == 2
