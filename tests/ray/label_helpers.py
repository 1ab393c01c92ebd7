"""Ray test helpers: ports, and a real warehouse run (source table, published policies, extracted work list)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import sqlalchemy as sa

from safeguard_flow.warehouse.sample_data import POSTS_SOURCE, load_sample, posts_rows

ROOT = Path(__file__).resolve().parents[2]
# The session's local Ray head (GCS port; its other ports follow it), its dashboard, and Serve's HTTP port.
RAY_TEST_PORT = int(os.environ.get("SAFEGUARD_TEST_RAY_PORT", "18101"))
RAY_TEST_DASHBOARD_PORT = int(os.environ.get("SAFEGUARD_TEST_RAY_DASHBOARD_PORT", "18165"))
RAY_TEST_SERVE_PORT = int(os.environ.get("SAFEGUARD_TEST_RAY_SERVE_PORT", "18180"))
SOURCE = POSTS_SOURCE
# Imported by every Python process of the cluster (it is on their PYTHONPATH): drop the venv's
# editable safeguard-flow install and any source checkout from the import system.
HIDE_PACKAGE = '''
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if "Editable" not in repr(h)]
sys.path[:] = [p for p in sys.path if "__editable__" not in p and not p.rstrip("/").endswith("/plugins")]
sys.path_importer_cache.clear()
'''

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


def make_run(settings, policies, texts, run_id: str | None = None) -> str:
    """Migrate, load `texts` (str / bytes / None) into a posts table, publish policies, create and extract a run."""
    from safeguard_flow.warehouse import db, extract, policy_store, runs, schema

    schema.upgrade(settings)
    engine = db.make_engine(settings)
    try:
        load_sample(engine, posts_rows(texts, T0 + dt.timedelta(hours=1)))
        published = policy_store.publish_policies(engine, settings, policies, author="ray-tests")
        run_id = runs.create_run(engine, settings, "manual", [r.policy for r in published], T0, T0 + DAY, run_id=run_id)
        extract.extract_interval(engine, settings, run_id, T0, T0 + DAY)
        return run_id
    finally:
        engine.dispose()


def chunk_marks(settings, run_id: str) -> dict[int, tuple[bool, object]]:
    """chunk_no -> (done, finished_at): a relabelled chunk gets a new finished_at."""
    from safeguard_flow.warehouse import db, schema

    engine = db.make_engine(settings)
    try:
        c = schema.tables(settings).run_chunks
        with engine.connect() as conn:
            rows = conn.execute(sa.select(c.c.chunk_no, c.c.done, c.c.finished_at).where(c.c.run_id == run_id))
            return {int(r.chunk_no): (bool(r.done), r.finished_at) for r in rows}
    finally:
        engine.dispose()


def staged(settings, run_id: str):
    from safeguard_flow.warehouse import db, staging

    engine = db.make_engine(settings)
    try:
        return staging.staged_frame(engine, settings, run_id)
    finally:
        engine.dispose()


def assert_complete_once(settings, run_id: str, n_items: int, policies) -> None:
    """Every (item, policy) staged exactly once: 0 duplicates, 0 missing."""
    frame = staged(settings, run_id)
    keys = list(zip(frame["content_id"], frame["policy"]))
    assert len(keys) == len(set(keys)), "an (item, policy) was staged twice"
    expected = {(f"p{i:04d}", p.name) for i in range(n_items) for p in policies}
    assert set(keys) == expected, f"missing {sorted(expected - set(keys))[:5]}, unexpected {sorted(set(keys) - expected)[:5]}"
