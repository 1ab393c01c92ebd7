"""The demo sample and its posts table: what the demo, the tests and the benchmarks seed from."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from safeguard_flow.warehouse.sample_data import load_sample, posts_rows, read_sample, sample_texts


def test_sample_days_and_a_clear_error_past_its_end():
    rows = read_sample()
    assert len(rows) == 300 and {"id", "text", "updated_at"} <= set(rows[0])
    first_two = read_sample(per_day=2, days=["2026-11-20", "2026-11-21"])
    assert [r["updated_at"][:10] for r in first_two] == ["2026-11-20"] * 2 + ["2026-11-21"] * 2
    assert sample_texts(3) == [r["text"] for r in rows[:3]]
    with pytest.raises(ValueError, match="asked for 301 sample texts but .* has 300 rows"):
        sample_texts(301)


def test_load_sample_replaces_the_table_and_keeps_bad_text(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    when = dt.datetime(2024, 3, 1, 1, tzinfo=dt.timezone.utc)
    assert load_sample(engine, posts_rows(["a", "b", "c"], when)) == 3
    assert load_sample(engine, posts_rows(["fine", b"\xff\xfe", None], when)) == 3  # recreated, not appended
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, body FROM posts ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("p0000", "fine"), ("p0001", b"\xff\xfe"), ("p0002", None)]
    assert load_sample(engine, read_sample(per_day=1, days=["2026-11-22"])) == 1  # ISO strings are parsed
