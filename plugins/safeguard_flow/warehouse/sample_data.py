"""The demo content: the project's labelled sample of posts and a ``posts`` source table to load it into.

One place for the demo, the tests and the benchmarks to seed a warehouse with real text, so they all
label the same kind of table through the same source definition.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

# The source definition of the table that load_sample writes (settings `sources` entry).
POSTS_SOURCE = {"name": "posts", "table": "posts", "id_column": "id", "text_column": "body",
                "updated_at_column": "updated_at"}
# In a checkout only (a wheel ships neither the demo data nor the example policies).
_REPO = Path(__file__).resolve().parents[3]
SAMPLE = _REPO / "data" / "sample-posts.jsonl"
POLICIES = _REPO / "policies"


def copy_policies(folder: str | Path, names: Sequence[str]) -> Path:
    """A private copy of some example policies (callers may edit them); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(POLICIES / f"{name}.md", folder)
    return folder


def demo_settings(folder: str | Path, policies_dir: str | Path, warehouse_url: str | None = None):
    """Settings of a throwaway workspace in `folder`: home, the given policies, the `posts` source,
    and a SQLite warehouse in the folder unless `warehouse_url` names another."""
    from safeguard_flow.settings import load_settings

    folder = Path(folder)
    return load_settings(environ={}, home=str(folder / "home"), policies_dir=str(policies_dir),
                         warehouse={"url": warehouse_url or f"sqlite:///{folder / 'warehouse.db'}"},
                         sources=[POSTS_SOURCE])


def read_sample(path: str | Path = SAMPLE, per_day: int | None = None,
                days: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows {id, text, updated_at, <human labels>} of the sample, optionally the first `per_day` rows
    of some days (`updated_at` dates, YYYY-MM-DD)."""
    rows, seen = [], defaultdict(int)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            day = row["updated_at"][:10]
            if days is not None and day not in days:
                continue
            if per_day is not None and seen[day] >= per_day:
                continue
            seen[day] += 1
            rows.append(row)
    return rows


def sample_texts(n: int, path: str | Path = SAMPLE) -> list[str]:
    """The first n texts of the sample; a clear error when it has fewer."""
    rows = read_sample(path)
    if n > len(rows):
        raise ValueError(f"asked for {n} sample texts but {path} has {len(rows)} rows")
    return [r["text"] for r in rows[:n]]


def posts_rows(texts: Iterable[Any], updated_at: dt.datetime, prefix: str = "p") -> list[dict[str, Any]]:
    """Rows for load_sample from bare texts (str, bytes or None: bad input is welcome in tests),
    ids p0000, p0001, ... all updated at one moment."""
    return [{"id": f"{prefix}{i:04d}", "text": t, "updated_at": updated_at} for i, t in enumerate(texts)]


def load_sample(engine, rows: Iterable[dict[str, Any]], table: str = "posts") -> int:
    """(Re)create the source table and insert rows {id, text, updated_at (datetime or ISO string)};
    returns how many."""
    import sqlalchemy as sa

    posts = sa.Table(
        table, sa.MetaData(),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("body", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    values = [{"id": r["id"], "body": r["text"], "updated_at": _when(r["updated_at"])} for r in rows]
    with engine.begin() as conn:
        posts.drop(conn, checkfirst=True)
        posts.create(conn)
        if values:
            conn.execute(posts.insert(), values)
    return len(values)


def _when(value: dt.datetime | str) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
