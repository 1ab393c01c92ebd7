"""Snowflake through fakesnow (a Snowflake emulator on DuckDB): a publish/extract round trip.

snowflake-sqlalchemy and the Snowflake driver cannot share the project venv (dev/snowflake-requirements.txt),
so dev/snowflake_venv.py builds a venv of their own on the first run (about a minute; reused afterwards) and
runs dev/snowflake_roundtrip.py in it: migrations on a snowflake:// URL into a schema, a posts table beside it, two nightly
intervals extracted, verdicts staged with write_chunk, the real Great Expectations gate, the MERGE
publish, then the verdict table and every view read back. Snowflake itself is not tested here.
"""

import time

import pytest

from dev import snowflake_venv as snowflake


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_publish_extract_round_trip_on_fakesnow(tmp_path):
    t0 = time.monotonic()
    venv, build_s = snowflake.ensure_venv()
    out = snowflake.roundtrip(tmp_path, venv)
    print(f"snowflake venv build {build_s}s, round trip {time.monotonic() - t0 - build_s:.1f}s, steps {out['timings']}")

    assert out["dialect"] == "snowflake"
    assert out["revision"] == out["head"]  # every migration ran
    # Snowflake upper-cases unquoted names: ours (lower case, left unquoted by the dialect) are stored so,
    # in the warehouse schema (db_schema "analytics"); the content stays alone in PUBLIC.
    assert {"SG_VERDICTS", "SG_VERDICT_STAGING", "SG_RUNS", "SG_ALEMBIC_VERSION"} <= set(out["tables"]["analytics"])
    assert out["tables"]["public"] == ["POSTS"]

    items = out["items"]  # in the first day: our 6 awkward rows (+ up to 4 real samples)
    assert items in (6, 10)
    assert out["validation"] == {"success": True, "rows": 2 * items}
    first = out["published"]
    assert (first["method"], first["inserted"], first["updated"], first["errors"]) == ("snowflake", 2 * items, 0, 0)
    assert (out["again"]["inserted"], out["again"]["updated"], out["again"]["unchanged"]) == (0, 0, 2 * items)
    # Day 2: post "a" was edited to a violation (its two verdicts updated by MERGE), "late" is new.
    day2 = out["day2"]
    assert day2["items"] == 2
    assert (day2["published"]["inserted"], day2["published"]["updated"]) == (2, 2)

    verdicts = {(v["content_id"], v["policy"]): v for v in out["verdicts"]}
    assert len(out["verdicts"]) == out["keys"] == 2 * items + 2  # one row per key: Snowflake enforces no PK
    assert verdicts[("A", "spam")]["label"] == 1 and verdicts[("a", "spam")]["label"] == 1  # ids differ by case
    assert verdicts[("q'1", "spam")]["label"] == 1 and verdicts[("ja-1", "spam")]["label"] == 1
    assert verdicts[("ar-1", "spam")]["label"] == 0 and verdicts[("long", "spam")]["label"] == 0
    assert verdicts[("late", "self-harm")]["label"] == 1
    assert verdicts[("A", "spam")]["rule_ids"] == ["R1"]  # JSON columns round trip (VARCHAR on Snowflake)
    assert verdicts[("A", "spam")]["extra"] == {"note": "ü ✓"}
    assert {v["decided_by"] for v in out["verdicts"]} == {"model"}

    rates = {(r["policy"], str(r["day"])[:10]): r for r in out["daily_policy_rates"]}
    assert rates[("spam", "2024-03-02")]["verdicts"] == 2 and rates[("spam", "2024-03-02")]["positives"] == 2
    day1 = rates[("spam", "2024-03-01")]
    assert day1["verdicts"] == items - 1 and day1["positives"] == 3  # "a" moved to day 2
    assert out["views"]["current_verdicts"] == 2 * items + 2
    assert all(isinstance(n, int) for n in out["views"].values()), out["views"]  # every view runs
