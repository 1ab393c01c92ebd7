"""Publish: merge a run's staged verdicts into the verdict table, in one transaction.

Upsert on the key (source, content_id, policy, policy_version), done inside the database
(INSERT ... SELECT from staging, nothing streams through Python):

- PostgreSQL: ``INSERT ... SELECT ... ORDER BY key ON CONFLICT DO UPDATE ... WHERE ...``, in a CTE
  with ``RETURNING (xmax = 0)`` so inserted/updated are counted exactly, server-side.
- SQLite: the same ``ON CONFLICT DO UPDATE`` (writers hold the database lock, so a count taken
  before the upsert in the same transaction is exact).
- Both: when none of the run's keys is in the verdict table yet (nightly runs of new content,
  relabels for a new version) a plain ``INSERT ... SELECT`` does it, skipping the upsert's
  per-row speculative insertion. On PostgreSQL the plain insert is simply tried first, in a
  savepoint: an existing key (or one a concurrent publisher commits first) makes it fail with a
  unique violation, rolled back to the savepoint, and the upsert runs instead. No plan there
  depends on table statistics: a "does any key exist yet" join over fresh, never-analysed tables
  was planned as a walk of the (policy, version, labelled_at) index per staged row (197 s for 20k
  rows against 100k verdicts). SQLite checks with a primary-key probe per staged row.
- generic (any other SQLAlchemy dialect, or ``method="generic"``): a correlated ``UPDATE`` of the
  existing keys, then ``INSERT ... SELECT ... WHERE NOT EXISTS`` for the new ones, in one
  transaction. A concurrent publisher inserting the same new key makes one of them fail with a
  unique violation; the whole transaction is then retried, so the result is the same.

The update only happens when the stored row came from another run AND was extracted no later than
the staged one: publishing a run twice changes nothing, and an older run published late never
overwrites what a newer run labelled. Rows are upserted in key order, so two runs publishing
overlapping verdicts at once lock rows in the same order (no deadlock; any deadlock or
serialization failure is retried anyway). A connection lost mid-publish rolls the transaction
back: the verdict table is as before, and publishing again writes everything once.
"""

from __future__ import annotations

import time
from importlib import import_module
from typing import Any, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import UTCDateTime, retrying, utcnow, write_tx
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError
from safeguard_flow.warehouse.runs import Run, RunStatus, get_run, transition
from safeguard_flow.warehouse.schema import tables

KEY = ("source", "content_id", "policy", "policy_version")
# One upsert per dialect (UPSERTS, below the functions); any other dialect takes the generic path.
METHODS = ("postgresql", "sqlite", "mysql", "duckdb", "snowflake", "generic")
_DIALECT_METHOD = {"mariadb": "mysql"}  # SQLAlchemy's name for MariaDB through a mariadb+ URL
_ROWCOUNT = {"preserve_rowcount": True}  # INSERT ... SELECT rowcount is not kept by default


def publish_run(engine: Engine, settings: Settings, run_id: str, allow_partial: bool = False,
                method: str | None = None, _after_upsert: Callable[[Connection], None] | None = None,
                versions: Sequence[tuple[str, int]] | None = None) -> dict[str, Any]:
    """Merge the run's staged verdicts into the verdict table and mark the run published.

    Only a run the quality gate validated is published, whoever calls this (RunStateError otherwise).
    Publishing a published run again merges the same rows (changing nothing) and leaves its record.
    `versions`: merge only these (policy, version)s of the run (the ones the gate passed; None: all),
    and count only them in the run's record.
    """
    native = _DIALECT_METHOD.get(engine.dialect.name, engine.dialect.name)
    native = native if native in METHODS else "generic"
    method = method or native
    if method not in METHODS or method not in (native, "generic"):
        raise WarehouseError(f"publish method {method!r} cannot be used on {engine.dialect.name}; "
                             f"use {native}" + (" or generic" if native != "generic" else ""))
    # A unique violation means a concurrent publisher inserted one of our new keys first: retry.
    retry_on = (sa.exc.IntegrityError,)
    return retrying(lambda: _publish(engine, settings, run_id, allow_partial, method, _after_upsert, versions),
                    what=f"publish run {run_id}", retry_on=retry_on)


def _publish(engine: Engine, settings: Settings, run_id: str, allow_partial: bool, method: str,
             after_upsert: Callable[[Connection], None] | None,
             versions: Sequence[tuple[str, int]] | None = None) -> dict[str, Any]:
    t = tables(settings)
    s = t.verdict_staging
    started = time.perf_counter()
    with write_tx(engine) as conn:
        run = _check_run(conn, settings, run_id, allow_partial)
        summary = _staged_summary(conn, settings, run_id)
        rows = StagedRows(run_id, None if versions is None else tuple(versions))
        if rows.versions is not None:  # part of the run: its own counts (tokens stay the whole run's)
            summary.update(_version_counts(conn, s, rows))
        now = utcnow()
        inserted, updated = UPSERTS[method](conn, t.verdicts, s, rows, now)
        if after_upsert is not None:
            after_upsert(conn)  # tests: drop the connection here, mid-transaction
        counts = dict(verdicts=summary["staged"], errors=summary["errors"], positives=summary["positives"],
                      inserted=inserted, updated=updated, unchanged=summary["staged"] - inserted - updated,
                      prompt_tokens=summary["prompt_tokens"], completion_tokens=summary["completion_tokens"])
        if run.status is RunStatus.VALIDATED:  # in the same transaction as the merge
            transition(conn, settings, run_id, RunStatus.PUBLISHED, published_at=now,
                       model=run.model or summary["model"], **counts)
    return dict(run_id=run_id, method=method, staged=summary["staged"], seconds=round(time.perf_counter() - started, 3),
                **{k: counts[k] for k in ("inserted", "updated", "unchanged", "errors", "positives")})


def _check_run(conn: Connection, settings: Settings, run_id: str, allow_partial: bool) -> Run:
    t = tables(settings)
    run = get_run(conn, settings, run_id)
    if run.status is RunStatus.QUARANTINED:
        raise RunStateError(f"run {run_id!r} is quarantined (validation failed): its verdicts are not published")
    if not run.extracted:
        raise RunStateError(f"run {run_id!r} has no complete work list (status {run.status}); nothing to publish")
    if run.status not in (RunStatus.VALIDATED, RunStatus.PUBLISHED):
        raise RunStateError(f"run {run_id!r} is {run.status}, not validated: only a run that passed the quality "
                            "gate is published (validate it first: pipeline.validate_run or the DAG's validate task)")
    c = t.run_chunks
    pending = conn.execute(sa.select(sa.func.count()).where(c.c.run_id == run_id, c.c.done == sa.false())).scalar_one()
    if pending and not allow_partial:
        raise RunStateError(f"run {run_id!r} has {pending} chunk(s) not labelled yet; finish the label job first "
                            "(or publish with allow_partial=True)")
    pv = t.policy_versions
    for name, version in run.policy_refs:
        if conn.execute(sa.select(pv.c.version).where(pv.c.name == name, pv.c.version == version)).first() is None:
            raise WarehouseError(f"run {run_id!r} labels policy {name!r} version {version}, which is not stored "
                                 "in the policy table")
    return run


def _staged_summary(conn: Connection, settings: Settings, run_id: str) -> dict[str, Any]:
    """What the run staged, from its finished chunks' counters (write_chunk keeps them with the rows)."""
    t = tables(settings)
    c = t.run_chunks
    row = conn.execute(sa.select(
        sa.func.sum(c.c.verdicts), sa.func.sum(c.c.errors), sa.func.sum(c.c.positives),
        sa.func.sum(c.c.prompt_tokens), sa.func.sum(c.c.completion_tokens),
    ).where(c.c.run_id == run_id, c.c.done == sa.true())).one()
    s = t.verdict_staging
    model = conn.execute(sa.select(s.c.model).where(s.c.run_id == run_id).limit(1)).scalar_one_or_none()
    staged, errors, positives, prompt, completion = (int(x or 0) for x in row)
    return dict(staged=staged, errors=errors, positives=positives, model=model or None,
                prompt_tokens=prompt, completion_tokens=completion)


class StagedRows(str):
    """The staged rows a publish merges: the run's (a str, its run id) and, when `versions` is set, only
    those (policy, version)s: the ones the quality gate passed."""

    versions: tuple[tuple[str, int], ...] | None

    def __new__(cls, run_id: str, versions: tuple[tuple[str, int], ...] | None = None):
        obj = super().__new__(cls, run_id)
        obj.versions = versions
        return obj


def _run_rows(s, run_id: str) -> sa.ColumnElement:
    """`s`'s rows of the run (s: the staging table or an alias of it), only the passed versions if set."""
    cond = s.c.run_id == str(run_id)
    versions = getattr(run_id, "versions", None)
    if versions is not None:
        cond = sa.and_(cond, sa.or_(sa.false(), *(sa.and_(s.c.policy == n, s.c.policy_version == int(v))
                                                 for n, v in versions)))
    return cond


def _version_counts(conn: Connection, s: sa.Table, rows: StagedRows) -> dict[str, int]:
    staged, errors, positives = conn.execute(sa.select(
        sa.func.count(), sa.func.sum(sa.case((s.c.parse_status != "ok", 1), else_=0)),
        sa.func.sum(sa.case((sa.and_(s.c.parse_status == "ok", s.c.label >= 1), 1), else_=0)),
    ).where(_run_rows(s, rows))).one()
    return dict(staged=int(staged or 0), errors=int(errors or 0), positives=int(positives or 0))


def _columns(v: sa.Table) -> list[str]:
    return [c.name for c in v.c]


def _source_select(v: sa.Table, s: sa.Table, run_id: str, now) -> sa.Select:
    """Staged rows shaped like verdict rows, in key order."""
    cols = []
    for name in _columns(v):
        if name == "published_at":
            cols.append(sa.literal(now, UTCDateTime).label(name))
        else:
            cols.append(s.c[name])
    return sa.select(*cols).where(_run_rows(s, run_id)).order_by(*(s.c[k] for k in KEY))


def _update_guard(v: sa.Table, new) -> sa.ColumnElement:
    # Same run again: no change. Older content (extracted earlier) never overwrites newer.
    return sa.and_(v.c.run_id != new.run_id, v.c.extracted_at <= new.extracted_at)


def _upsert_native(dialect: str, v: sa.Table, s: sa.Table, run_id: str, now):
    insert = import_module(f"sqlalchemy.dialects.{dialect}").insert
    stmt = insert(v).from_select(_columns(v), _source_select(v, s, run_id, now))
    return stmt.on_conflict_do_update(
        index_elements=[v.c[k] for k in KEY],
        set_={c: stmt.excluded[c] for c in _columns(v) if c not in KEY},
        where=_update_guard(v, stmt.excluded),
    )


def _all_new(conn: Connection, v: sa.Table, s: sa.Table, run_id: str) -> bool:
    """True when no staged key is in the verdict table yet (nightly runs of new content, relabels)."""
    overlap = sa.select(sa.literal(1)).where(_run_rows(s, run_id), *(v.c[k] == s.c[k] for k in KEY)).exists()
    return not conn.execute(sa.select(overlap)).scalar_one()


def _insert_new(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> int:
    """Plain INSERT ... SELECT: the upsert's speculative insertion costs ~1.6x when nothing conflicts.
    A concurrent publisher inserting one of these keys first makes this fail with a unique
    violation; publish_run then retries the whole transaction, which takes the upsert path."""
    stmt = v.insert().from_select(_columns(v), _source_select(v, s, run_id, now))
    return int(conn.execute(stmt, execution_options=_ROWCOUNT).rowcount)


def _upsert_postgresql(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> tuple[int, int]:
    try:  # every key new (the common case): a plain insert; its unique index finds any existing key
        with conn.begin_nested():
            return _insert_new(conn, v, s, run_id, now), 0
    except sa.exc.IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != "23505":  # not a unique violation: a real error
            raise
    # xmax = 0 on a returned row means it was inserted, not updated (PostgreSQL MVCC).
    up = _upsert_native("postgresql", v, s, run_id, now).returning(
        sa.literal_column("(xmax = 0)", sa.Boolean).label("ins")).cte("up")
    total, inserted = conn.execute(sa.select(sa.func.count(), sa.func.count().filter(up.c.ins))).one()
    return int(inserted), int(total) - int(inserted)


def _upsert_sqlite(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> tuple[int, int]:
    # Writers hold SQLite's database lock (BEGIN IMMEDIATE): counts taken here stay exact.
    if _all_new(conn, v, s, run_id):
        return _insert_new(conn, v, s, run_id, now), 0
    new = conn.execute(sa.select(sa.func.count()).select_from(s).where(
        _run_rows(s, run_id), ~sa.exists().where(*(v.c[k] == s.c[k] for k in KEY)))).scalar_one()
    affected = conn.execute(_upsert_native("sqlite", v, s, run_id, now), execution_options=_ROWCOUNT).rowcount
    return int(new), int(affected) - int(new)


def _pending_counts(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, lock: bool) -> tuple[int, int]:
    """(new keys, keys the upsert will update), counted before it in the same transaction. `lock`: take
    row locks on what is read (MySQL), so no concurrent publisher changes them before the upsert."""
    old = v.alias("old")
    joined = s.outerjoin(old, sa.and_(*(old.c[k] == s.c[k] for k in KEY)))
    q = sa.select(
        sa.func.coalesce(sa.func.sum(sa.case((old.c.source.is_(None), 1), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((sa.and_(old.c.source.is_not(None), old.c.run_id != s.c.run_id,
                                                      old.c.extracted_at <= s.c.extracted_at), 1), else_=0)), 0),
    ).select_from(joined).where(_run_rows(s, run_id))
    new, updated = conn.execute(q.with_for_update() if lock else q).one()
    return int(new), int(updated)


def _upsert_mysql(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> tuple[int, int]:
    """INSERT ... SELECT ... ON DUPLICATE KEY UPDATE (MySQL, MariaDB). MySQL evaluates the assignments
    left to right, each seeing the ones before: the guard's own columns (extracted_at, run_id) go last,
    so every column is decided on the stored row's values. Counts come from a locking read first."""
    from sqlalchemy.dialects.mysql import insert

    new, updated = _pending_counts(conn, v, s, run_id, lock=True)
    stmt = insert(v).from_select(_columns(v), _source_select(v, s, run_id, now))
    guard = _update_guard(v, stmt.inserted)
    last = ("extracted_at", "run_id")
    order = [c for c in _columns(v) if c not in KEY and c not in last] + list(last)
    conn.execute(stmt.on_duplicate_key_update([(c, sa.case((guard, stmt.inserted[c]), else_=v.c[c])) for c in order]))
    return new, updated


def _upsert_duckdb(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> tuple[int, int]:
    """DuckDB: ON CONFLICT DO UPDATE (PostgreSQL's syntax). Its concurrency is optimistic: a concurrent
    writer of the same rows fails the transaction (retried), so counts taken first stay exact."""
    new, updated = _pending_counts(conn, v, s, run_id, lock=False)
    if not updated and _all_new(conn, v, s, run_id):
        return _insert_new(conn, v, s, run_id, now), 0
    conn.execute(_upsert_native("postgresql", v, s, run_id, now))
    return new, updated


def _upsert_generic(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> tuple[int, int]:
    match = [s.c[k] == v.c[k] for k in KEY]
    staged = s.alias("staged")
    staged_match = [staged.c[k] == v.c[k] for k in KEY]
    values = {}
    for name in _columns(v):
        if name in KEY:
            continue
        if name == "published_at":
            values[name] = sa.literal(now, UTCDateTime)
        else:
            values[name] = (sa.select(staged.c[name]).where(_run_rows(staged, run_id), *staged_match)
                            .scalar_subquery())
    updated = conn.execute(v.update().values(values).where(sa.exists().where(
        _run_rows(s, run_id), *match, _update_guard(v, s.c))), execution_options=_ROWCOUNT).rowcount
    new_rows = _source_select(v, s, run_id, now).where(~sa.exists().where(*match))
    inserted = conn.execute(v.insert().from_select(_columns(v), new_rows), execution_options=_ROWCOUNT).rowcount
    return int(inserted), int(updated)


def _upsert_snowflake(conn: Connection, v: sa.Table, s: sa.Table, run_id: str, now) -> tuple[int, int]:
    """MERGE (snowflake-sqlalchemy's MergeInto). Snowflake declares but never enforces primary keys, so the
    one statement matching on the key is what keeps one verdict per key; it reports its own counts."""
    from snowflake.sqlalchemy import MergeInto

    new = _source_select(v, s, run_id, now).order_by(None).subquery("staged")
    merge = MergeInto(v, new, sa.and_(*(v.c[k] == new.c[k] for k in KEY)))
    merge.when_matched_then_update().where(_update_guard(v, new.c)).values(
        **{c: new.c[c] for c in _columns(v) if c not in KEY})
    merge.when_not_matched_then_insert().values(**{c: new.c[c] for c in _columns(v)})
    counts = conn.execute(merge).mappings().one()  # "number of rows inserted", "number of rows updated"
    return int(counts["number of rows inserted"]), int(counts["number of rows updated"])


UPSERTS: dict[str, Callable[[Connection, sa.Table, sa.Table, str, Any], tuple[int, int]]] = {
    "postgresql": _upsert_postgresql, "sqlite": _upsert_sqlite, "mysql": _upsert_mysql, "duckdb": _upsert_duckdb,
    "snowflake": _upsert_snowflake, "generic": _upsert_generic,
}
