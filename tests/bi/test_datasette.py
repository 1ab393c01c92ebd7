"""`make bi`: Datasette over the embedded SQLite warehouse, read through its JSON API the way
dev/datasette_bi.py serves it (same metadata, same command, without the browser)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from tests.bi.bi_helpers import bi_settings, build
from tests.bi.conftest import DATASETTE_PORT
from tests.warehouse.warehouse_helpers import T0

from dev import datasette_bi

pytestmark = pytest.mark.slow  # a server process (about 2 s)


@pytest.fixture
def datasette(sqlite_url, settings_factory, small_policies, tmp_path):
    settings = bi_settings(settings_factory, sqlite_url)
    wh = build(settings, small_policies)
    db_file = datasette_bi.warehouse_file(settings)
    metadata = datasette_bi.render_metadata(settings, db_file, tmp_path)
    log = open(tmp_path / "datasette.log", "wb")
    proc = subprocess.Popen(datasette_bi.command(db_file, metadata, DATASETTE_PORT, browser=False),
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{DATASETTE_PORT}/{db_file.stem}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}.json", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "datasette.log").read_text()[-3000:]) from None
            time.sleep(0.2)
    yield wh, base
    proc.terminate()
    proc.wait(10)
    log.close()
    wh.engine.dispose()


def get(base: str, path: str, **params) -> list[dict]:
    query = urllib.parse.urlencode({"_shape": "array", "_size": "max", **params})
    with urllib.request.urlopen(f"{base}/{path}.json?{query}", timeout=30) as resp:
        return json.loads(resp.read())


def test_views_and_canned_queries_as_json(datasette):
    wh, base = datasette
    # Each BI view reads as JSON with the same rows SQL gives.
    for view in ("current_verdicts", "daily_policy_rates", "verdict_flips", "policy_version_diff"):
        rows = get(base, f"sg_{view}")
        assert rows, view
        assert sorted(map(json.dumps, rows)) == sorted(json.dumps(r, default=str) for r in wh.view(view)), view
    # Every view and canned query is listed; the pipeline's internals are hidden.
    with urllib.request.urlopen(f"{base}.json", timeout=30) as resp:
        listing = json.loads(resp.read())
    assert {"positive_rate_today", "what_flipped"} <= {q["name"] for q in listing["queries"]}
    assert "sg_current_verdicts" in {v["name"] for v in listing["views"]}
    hidden = {t["name"] for t in listing["tables"] if t["hidden"]}
    assert {"sg_work_items", "sg_verdict_staging"} <= hidden

    # Today's positive rate per policy, on the sample's first day: the active versions' rows.
    day = T0.date().isoformat()
    today = get(base, "positive_rate_today", day=day)
    expected = wh.query(
        "SELECT r.policy, r.policy_version, r.positives, r.labelled, r.positive_rate FROM sg_daily_policy_rates r "
        "JOIN sg_policies p ON p.name = r.policy AND r.policy_version = p.current_version WHERE r.day = :day", day=day)
    assert {(r["policy"], r["policy_version"]) for r in today} == {("self-harm", 1), ("spam", 2)}
    assert sorted((r["policy"], r["positives"], r["labelled"], r["positive_rate"]) for r in today) == \
        sorted((r["policy"], r["positives"], r["labelled"], r["positive_rate"]) for r in expected)
    assert get(base, "positive_rate_today") == []  # nothing labelled with today's content

    # What flipped: the spam v1 -> v2 changes, newest first; one policy at a time.
    flipped = get(base, "what_flipped")
    assert {(r["content_id"], r["old_label"], r["new_label"]) for r in flipped} == {
        (r["content_id"], r["old_label"], r["new_label"]) for r in wh.view("verdict_flips")}
    assert {r["policy"] for r in flipped} == {"spam"}
    assert get(base, "what_flipped", policy="self-harm") == []
