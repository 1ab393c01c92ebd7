"""Reads for people rather than BI tools: the rows of the BI views that the Safeguard view in the
Airflow UI and `make demo`'s summary show, and the two tables the Safeguard view shows beside them
(policy heads, a run's staged labels). Queries only: console.py and airflow/ui.py lay them out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.schema import tables, view_names

RATE_COLUMNS = ("policy", "policy_version", "day", "verdicts", "labelled", "positives", "errors",
                "positive_rate", "error_rate")
# What a terminal summary shows of each view: its columns, then its order.
SUMMARY_VIEWS = {
    "current_verdicts": (("source", "content_id", "policy", "policy_version", "label", "category", "parse_status"),
                         ("policy", "content_id")),
    "daily_policy_rates": (RATE_COLUMNS, ("policy", "day")),
    "verdict_flips": (("policy", "content_id", "old_version", "new_version", "old_label", "new_label"),
                      ("policy", "content_id")),
}
_FLIP_COLUMNS = ("policy", "source", "content_id", "old_version", "new_version", "old_label", "new_label",
                 "new_category", "same_content", "new_labelled_at")


def _view(settings: Settings, name: str) -> sa.TableClause:
    return sa.table(view_names(settings)[name], schema=settings.warehouse.db_schema)


def _rows(engine: Engine, query: sa.Select) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def _columns(names: Sequence[str]) -> list[sa.ColumnClause]:
    return [sa.column(c) for c in names]


def view_rows(engine: Engine, settings: Settings, view: str, limit: int = 10, order_by: Sequence[str] = (),
              columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The first rows of one BI view (by its unprefixed name), all its columns unless `columns` are named."""
    query = sa.select(*(_columns(columns) or [sa.text("*")])).select_from(_view(settings, view)).limit(limit)
    if order_by:
        query = query.order_by(*_columns(order_by))
    return _rows(engine, query)


def summary_rows(engine: Engine, settings: Settings, limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    """The first rows of each of SUMMARY_VIEWS, by the view's prefixed name."""
    return {settings.warehouse.table_prefix + view: view_rows(engine, settings, view, limit, order, columns)
            for view, (columns, order) in SUMMARY_VIEWS.items()}


def daily_rates(engine: Engine, settings: Settings, days: int = 30) -> list[dict[str, Any]]:
    """daily_policy_rates over the last `days` days, oldest first; `day` is a date on every dialect
    (SQLite returns text)."""
    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).date()
    query = (sa.select(*_columns(RATE_COLUMNS)).select_from(_view(settings, "daily_policy_rates"))
             .where(sa.column("day") >= sa.bindparam("since", since, type_=sa.Date))
             .order_by(sa.column("day"), sa.column("policy"), sa.column("policy_version")))
    rows = _rows(engine, query)
    for row in rows:
        row["day"] = _as_date(row["day"])
    return rows


def flip_summary(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    """Per policy and version pair: items compared, flips (any label change, verdict_flips), of which
    0->1, 1->0 and with an error on one side."""
    old, new = sa.column("old_label"), sa.column("new_label")
    pair = _columns(("policy", "old_version", "new_version"))
    flips = (
        sa.select(
            *pair, sa.func.count().label("flips"),
            sa.func.sum(sa.case((sa.and_(old == 0, new >= 1), 1), else_=0)).label("to_positive"),
            sa.func.sum(sa.case((sa.and_(old >= 1, new == 0), 1), else_=0)).label("to_safe"),
            sa.func.sum(sa.case((sa.or_(old.is_(None), new.is_(None)), 1), else_=0)).label("with_error"),
        )
        .select_from(_view(settings, "verdict_flips"))
        .group_by(*pair)
    )
    compared = sa.select(*pair, sa.column("compared")).select_from(_view(settings, "policy_version_diff"))
    out = {(r["policy"], r["old_version"], r["new_version"]): r for r in _rows(engine, flips)}
    for r in _rows(engine, compared):
        key = (r["policy"], r["old_version"], r["new_version"])
        row = out.setdefault(key, {"policy": key[0], "old_version": key[1], "new_version": key[2], "flips": 0,
                                   "to_positive": 0, "to_safe": 0, "with_error": 0})
        row["compared"] = r["compared"]
    return sorted(out.values(), key=lambda r: (r["policy"], -r["new_version"], -r["old_version"]))


def recent_flips(engine: Engine, settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The latest flipped items (verdict_flips), newest relabel first."""
    return _rows(engine, sa.select(*_columns(_FLIP_COLUMNS)).select_from(_view(settings, "verdict_flips"))
                 .order_by(sa.column("new_labelled_at").desc()).limit(limit))


def policy_heads(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    """Each policy's current, pinned and shadow version, by name."""
    t = tables(settings).policies
    return _rows(engine, sa.select(t.c.name, t.c.current_version, t.c.pinned_version, t.c.shadow_version,
                                   t.c.updated_at).order_by(t.c.name))


def run_label_counts(engine: Engine, settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """A run's staged verdicts counted by policy version and label (so quarantined runs show too)."""
    s = tables(settings).verdict_staging
    return _rows(engine, sa.select(s.c.policy, s.c.policy_version, s.c.label, sa.func.count().label("n"))
                 .where(s.c.run_id == run_id).group_by(s.c.policy, s.c.policy_version, s.c.label)
                 .order_by(s.c.policy, s.c.label))


def _as_date(value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    return dt.date.fromisoformat(str(value)[:10])
