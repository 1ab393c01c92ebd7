"""Source tables are checked against the reflected schema; nothing is spliced into SQL."""

import pytest
import sqlalchemy as sa

from safeguard_flow.warehouse import extract, runs, staging
from safeguard_flow.warehouse.errors import SourceError
from safeguard_flow.warehouse.sources import check_sources

from tests.warehouse.warehouse_helpers import DAY, SOURCE, T0, at


def test_missing_table_is_named(make_warehouse):
    wh = make_warehouse(sources=[{**SOURCE, "table": "postz"}])
    wh.create_posts()
    with pytest.raises(SourceError, match=r"sources\[0\]\.table .*'postz' not found.*posts"):
        check_sources(wh.engine, wh.settings)
    run_id = runs.create_run(wh.engine, wh.settings, "nightly", wh.policies, T0, T0 + DAY)
    with pytest.raises(SourceError, match="'postz'"):
        extract.extract_interval(wh.engine, wh.settings, run_id, T0, T0 + DAY)


@pytest.mark.parametrize("field,value", [("id_column", "post_id"), ("text_column", "content"),
                                         ("updated_at_column", "modified")])
def test_missing_column_is_named(make_warehouse, field, value):
    wh = make_warehouse(sources=[{**SOURCE, field: value}])
    wh.create_posts()
    with pytest.raises(SourceError, match=rf"sources\[0\]\.{field} .*column '{value}' not found in table 'posts' "
                                          r"\(columns: id, body, updated_at, lang\)"):
        check_sources(wh.engine, wh.settings)


def test_missing_filter_column_is_named(make_warehouse):
    wh = make_warehouse(sources=[{**SOURCE, "filters": [{"column": "lang", "value": "en"},
                                                        {"column": "region", "value": "eu"}]}])
    wh.create_posts()
    with pytest.raises(SourceError, match=r"sources\[0\]\.filters\[1\]\.column .*'region'"):
        check_sources(wh.engine, wh.settings)


def test_updated_at_must_be_a_timestamp(make_warehouse):
    wh = make_warehouse(sources=[{**SOURCE, "updated_at_column": "lang"}])
    wh.create_posts()
    with pytest.raises(SourceError, match=r"updated_at_column .*'lang' is VARCHAR\(50\)"):
        check_sources(wh.engine, wh.settings)


def test_structured_filters_select_rows(make_warehouse):
    wh = make_warehouse(sources=[{**SOURCE, "filters": [
        {"column": "lang", "op": "in", "value": ["en", "fr"]},
        {"column": "body", "op": "is not null"},
        {"column": "id", "op": "!=", "value": "3"},
    ]}])
    wh.create_posts()
    wh.add_posts([("1", "hello", at(1), "en"), ("2", "salut", at(1), "fr"), ("3", "hi", at(1), "en"),
                  ("4", "hola", at(1), "es"), ("5", None, at(1), "en")])
    run_id = wh.nightly()
    assert runs.get_run(wh.engine, wh.settings, run_id).items == 2
    ids = sorted(i.content_id for c in staging.pending_chunks(wh.engine, wh.settings, run_id)
                 for i in staging.read_chunk(wh.engine, wh.settings, run_id, c))
    assert ids == ["1", "2"]


def test_hostile_values_are_bound_not_spliced(make_warehouse):
    evil = "en'; DROP TABLE posts; --"
    wh = make_warehouse(sources=[{**SOURCE, "filters": [{"column": "lang", "value": evil}]}])
    wh.create_posts()
    wh.add_posts([("1", "x'); DELETE FROM sg_verdicts; --", at(1), evil), ("2", "fine", at(1), "en")])
    run_id = wh.run_all()
    (v1, v2) = wh.verdicts()  # one row x two policies, and the source table is intact
    assert v1["content_id"] == v2["content_id"] == "1"
    assert wh.query("SELECT COUNT(*) AS n FROM posts")[0]["n"] == 2
    assert runs.get_run(wh.engine, wh.settings, run_id).status == "published"


def test_filter_settings_are_validated(settings_factory):
    from safeguard_flow.settings import SettingsError

    with pytest.raises(SettingsError, match="column"):
        settings_factory(sources=[{**SOURCE, "filters": [{"column": "lang = 'x' OR 1=1", "value": 1}]}])
    with pytest.raises(SettingsError, match="table"):
        settings_factory(sources=[{**SOURCE, "table": "posts; drop table x"}])


def test_integer_ids_and_a_second_source(make_warehouse):
    wh = make_warehouse(sources=[SOURCE, {**SOURCE, "name": "comments", "table": "comments"}])
    posts = wh.create_posts()
    comments = wh.create_posts("comments", id_type=sa.Integer)
    wh.add_posts([("1", "buy now", at(1))], table=posts)
    wh.add_posts([(1, "buy now", at(2)), (2, "nice", at(3))], table=comments)
    run_id = wh.nightly()
    model = wh.label(run_id)
    assert len(model.requests) == 2 * 2  # "buy now" in both sources is labelled once per policy
    wh.publish(run_id)
    got = {(v["source"], v["content_id"], v["label"]) for v in wh.verdicts()}
    assert got == {("posts", "1", 1), ("comments", "1", 1), ("comments", "2", 0)}
