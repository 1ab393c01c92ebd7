"""A real BI client reads the views: Apache Superset (its own venv) against the test PostgreSQL.

The three views are registered as datasets through Superset's REST API (login -> access token ->
CSRF token -> database -> datasets), and /api/v1/chart/data, what a chart asks Superset for, returns
the same numbers as SQL on the view.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from tests.bi.bi_helpers import bi_settings, build

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

VIEWS = ("sg_current_verdicts", "sg_daily_policy_rates", "sg_verdict_flips")


def _day(value) -> str:
    """Superset returns temporal columns as epoch milliseconds."""
    return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc).date().isoformat()


def test_superset_reads_the_views(superset, pg_url, settings_factory, small_policies):
    wh = build(bi_settings(settings_factory, pg_url), small_policies)
    client = superset.client()
    # Superset's PostgreSQL engine spec uses psycopg2 (installed in its venv).
    uri = sa.make_url(pg_url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    database_id = client.add_database(f"safeguard-{sa.make_url(pg_url).database}", uri)
    datasets = {view: client.add_dataset(database_id, view, "public") for view in VIEWS}

    # Each dataset knows its columns, with the view's column comments as descriptions.
    for view, dataset_id in datasets.items():
        meta = client.get(f"/api/v1/dataset/{dataset_id}")["result"]
        columns = {c["column_name"]: c.get("description") for c in meta["columns"]}
        assert set(columns) == {c["name"] for c in sa.inspect(wh.engine).get_columns(view)}, view
    comments = {c["name"]: c["comment"] for c in sa.inspect(wh.engine).get_columns("sg_verdict_flips")}
    flips_meta = client.get(f"/api/v1/dataset/{datasets['sg_verdict_flips']}")["result"]
    assert {c["column_name"]: c.get("description") for c in flips_meta["columns"]} == comments

    # A table chart of the daily rates: every row and number equal to SQL on the view.
    rates = client.chart_data(datasets["sg_daily_policy_rates"], {
        "columns": ["policy", "policy_version", "day", "verdicts", "labelled", "positives", "errors", "positive_rate"],
        "orderby": [["policy", True], ["policy_version", True], ["day", True]], "row_limit": 10000})
    sql = wh.query("SELECT policy, policy_version, day, verdicts, labelled, positives, errors, positive_rate "
                   "FROM sg_daily_policy_rates ORDER BY policy, policy_version, day")
    assert len(sql) >= 6  # two policies x two days, and spam v2
    assert [{**r, "day": _day(r["day"])} for r in rates] == [{**r, "day": r["day"].isoformat()} for r in sql]

    # An aggregated chart (positive rate per policy version, as a bar chart asks): same numbers.
    agg = client.chart_data(datasets["sg_daily_policy_rates"], {
        "columns": ["policy", "policy_version"],
        "metrics": [{"expressionType": "SQL", "sqlExpression": "SUM(positives)", "label": "positives"},
                    {"expressionType": "SQL", "sqlExpression": "SUM(labelled)", "label": "labelled"}],
        "orderby": [["policy", True]], "row_limit": 1000})
    expected = wh.query("SELECT policy, policy_version, SUM(positives) AS positives, SUM(labelled) AS labelled "
                        "FROM sg_daily_policy_rates GROUP BY policy, policy_version")
    assert sorted((r["policy"], r["policy_version"], r["positives"], r["labelled"]) for r in agg) == \
        sorted((r["policy"], r["policy_version"], r["positives"], r["labelled"]) for r in expected)
    assert any(r["positives"] for r in agg)

    # The other two views read through Superset too.
    flips = client.chart_data(datasets["sg_verdict_flips"], {
        "columns": ["content_id", "policy", "old_label", "new_label"], "row_limit": 10000})
    assert sorted((r["content_id"], r["old_label"], r["new_label"]) for r in flips) == sorted(
        (r["content_id"], r["old_label"], r["new_label"]) for r in wh.view("verdict_flips"))
    current = client.chart_data(datasets["sg_current_verdicts"], {
        "metrics": [{"expressionType": "SQL", "sqlExpression": "COUNT(*)", "label": "n"}], "columns": [], "row_limit": 10})
    assert current[0]["n"] == len(wh.view("current_verdicts"))
    print(f"superset timings: {superset.timings}")
    wh.engine.dispose()
