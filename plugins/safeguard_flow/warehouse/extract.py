"""Extract: write a run's work list (what to label) from the configured sources.

- Nightly/backfill (`extract_interval`): rows whose updated_at is in [start, end).
- Relabel (`extract_relabel`): every row in scope (optionally updated since a date, at most `limit`)
  that has no verdict for the given policy version yet.

In both, an item is skipped when a verdict already exists for its (source, content_id, content_hash,
policy, version) for every policy of the run: unchanged content is never labelled twice, edited
content (new hash) is. Verdicts that failed for a transient reason (parse_status 'engine_error')
do not count, so a rerun retries them.

Identical texts are labelled once: each work item gets a bucket from its content hash, and chunks
are bucket ranges decided when extraction ends, so all copies of a text share a chunk and
`labelling.label_items` (which dedupes per call) makes one request for them and fans the answer out.

Repeated content ids in a source are not merged: the first row of the id becomes an error item
("duplicate content id"), the other rows are dropped, and the run gets a warning and a count.

Rows stream from a server-side cursor (yield_per) and are written in batches: memory stays flat
however big the table is.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from tqdm.auto import tqdm

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.settings import Settings
from safeguard_flow.domain.verdicts import ENGINE_ERROR
from safeguard_flow.warehouse.db import as_utc, bulk_insert, utcnow, write_tx
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError
from safeguard_flow.warehouse.tables import BUCKETS, bucket_of
from safeguard_flow.warehouse.runs import RunStatus, get_run, transition
from safeguard_flow.warehouse.schema import tables
from safeguard_flow.warehouse.sources import SourceTable, open_sources

log = logging.getLogger(__name__)

BATCH = 1000  # rows per verdict lookup and per work-item insert
MAX_ID_LEN = 200  # content_id column width
_EXAMPLES = 10  # ids quoted in a warning


@dataclass
class _Stats:
    items: int = 0
    skipped_unchanged: int = 0
    duplicate_ids: int = 0  # ids with more than one row
    dropped_duplicate_rows: int = 0
    bad_ids: int = 0
    undecodable: int = 0  # rows whose text is not valid UTF-8 (each got an error verdict)
    rows_read: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # per-source report (run params)
    dup_examples: list[str] = field(default_factory=list)
    bad_examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def extract_interval(engine: Engine, settings: Settings, run_id: str, start: dt.datetime, end: dt.datetime,
                     sources: list[str] | None = None) -> int:
    """Write the work list of content updated in [start, end); returns the number of work items."""
    start, end = as_utc(start), as_utc(end)
    if not start < end:
        raise WarehouseError(f"extract interval is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    return _extract(engine, settings, run_id, sources, refs=None, start=start, end=end, limit=None)


def extract_relabel(engine: Engine, settings: Settings, run_id: str, policy_name: str, version: int,
                    since: dt.datetime | None = None, limit: int | None = None,
                    sources: list[str] | None = None) -> int:
    """Write the work list of content in scope without a verdict for (policy_name, version)."""
    if limit is not None and limit < 1:
        raise WarehouseError(f"extract_relabel: limit must be at least 1, got {limit}")
    return _extract(engine, settings, run_id, sources, refs=[(policy_name, int(version))],
                    start=as_utc(since), end=None, limit=limit)


def _extract(engine: Engine, settings: Settings, run_id: str, source_names: list[str] | None,
             refs: list[tuple[str, int]] | None, start: dt.datetime | None, end: dt.datetime | None,
             limit: int | None) -> int:
    run = get_run(engine, settings, run_id)
    if run.extracted:
        return int(run.items or 0)  # a retried task: the work list is already complete
    if run.status not in (RunStatus.CREATED, RunStatus.EXTRACTING):
        raise RunStateError(f"run {run_id!r} is {run.status}; extract needs a new run (or runs.reset_run)")
    if refs is None:
        refs = run.policy_refs
    elif not set(refs) <= set(run.policy_refs):
        raise WarehouseError(f"run {run_id!r} labels {run.policy_refs}, not {refs}: create the relabel run "
                             f"with that policy version")
    with open_sources(engine, settings, source_names) as srcs:
        return _extract_sources(engine, settings, run_id, srcs, refs, start, end, limit)


def _extract_sources(engine: Engine, settings: Settings, run_id: str, srcs: list[SourceTable],
                     refs: list[tuple[str, int]], start: dt.datetime | None, end: dt.datetime | None,
                     limit: int | None) -> int:
    t = tables(settings)
    started = utcnow()
    with write_tx(engine) as conn:  # a crashed earlier attempt may have left a partial list
        for table in (t.work_items, t.run_chunks, t.verdict_staging):
            conn.execute(table.delete().where(table.c.run_id == run_id))
        # extracting -> extracting too: an earlier attempt died mid-way
        transition(conn, settings, run_id, RunStatus.EXTRACTING, extract_started_at=started,
                   sources=[s.name for s in srcs])

    stats = _Stats()
    item_no = 0
    for src in srcs:
        item_no = _extract_source(engine, settings, run_id, src, refs, start, end, limit, item_no, stats)
        if limit is not None and stats.items >= limit:
            break

    _finish(engine, settings, run_id, stats)
    return stats.items


def _scope(src: SourceTable, start: dt.datetime | None, end: dt.datetime | None, stats: _Stats,
           now: dt.datetime):
    if src.updated_col is None and (start is not None or end is not None):
        if end is None:  # relabel `since` really needs the column
            return src.select_rows(start, end)  # raises SourceError naming the setting
        msg = (f"source {src.name!r} has no updated_at_column: scanned all its rows; unchanged content was "
               "skipped by content hash")
        stats.warnings.append(msg)
        log.warning(msg)
        return src.select_rows()
    return src.select_rows(start, end, sweep_before=now if src.settings.sweep_untimed else None)


def _report_untimed(engine: Engine, src: SourceTable, now: dt.datetime, report: dict[str, int],
                    stats: _Stats) -> None:
    """Count the rows no interval ever selects (updated_at NULL, unparseable, in the future) and say so."""
    if src.updated_col is None:
        return
    with (src.engine or engine).connect() as conn:
        null, bad, future = (int(x) for x in conn.execute(src.updated_at_report(now)).one())
    report.update(null_updated_at=null, unparseable_updated_at=bad, future_updated_at=future)
    if null or bad or future:
        col = f"sources[{src.index}].updated_at_column ({src.settings.updated_at_column!r})"
        what = ", ".join(f"{n} {w}" for n, w in ((null, "NULL"), (bad, "unparseable"), (future, "in the future"))
                         if n)
        fix = ("swept into this run (sources[%d].sweep_untimed)" % src.index if src.settings.sweep_untimed else
               f"never selected by any interval: fix the column or set sources[{src.index}].sweep_untimed")
        stats.warnings.append(f"source {src.name!r}: {null + bad + future} row(s) with {col} {what}; {fix}")


def _extract_source(engine: Engine, settings: Settings, run_id: str, src: SourceTable, refs, start, end,
                    limit: int | None, item_no: int, stats: _Stats) -> int:
    now = utcnow()
    before = (stats.rows_read, stats.items, stats.skipped_unchanged, stats.bad_ids, stats.duplicate_ids,
              stats.dropped_duplicate_rows, stats.undecodable)
    query = _scope(src, start, end, stats, now)
    with (src.engine or engine).connect() as read_conn:  # the source's own database, or the warehouse
        rows = read_conn.execution_options(yield_per=BATCH).execute(query)
        bar = tqdm(desc=f"extract {src.name}", unit="rows", disable=None, leave=False)
        batch: list[tuple[ContentItem, bool, dt.datetime | None]] = []  # (item, never skip, its updated_at)
        for item in _items(rows, src, stats, bar):
            batch.append(item)
            if len(batch) >= BATCH:
                item_no = _write_batch(engine, settings, run_id, src, refs, batch, item_no, limit, stats)
                batch = []
                if limit is not None and stats.items >= limit:
                    break
        if batch and (limit is None or stats.items < limit):
            item_no = _write_batch(engine, settings, run_id, src, refs, batch, item_no, limit, stats)
        bar.close()
        rows.close()
    after = (stats.rows_read, stats.items, stats.skipped_unchanged, stats.bad_ids, stats.duplicate_ids,
             stats.dropped_duplicate_rows, stats.undecodable)
    keys = ("rows_read", "items", "skipped_unchanged", "bad_ids", "duplicate_ids", "dropped_duplicate_rows",
            "undecodable_text")
    report = {k: a - b for k, a, b in zip(keys, after, before)}
    _report_untimed(engine, src, now, report, stats)
    stats.sources[src.name] = report
    return item_no


def _canonical_id(raw_id: object) -> tuple[str | None, str | None]:
    """(content_id, why unusable): the id as the text it is stored under. SQLite gives bytes (CAST AS
    BLOB), so integer 42 and text '42' both become '42' and are compared as the same id."""
    if raw_id is None:
        return None, "NULL"
    if isinstance(raw_id, (bytes, bytearray, memoryview)):
        try:
            cid = bytes(raw_id).decode("utf-8")
        except UnicodeDecodeError:
            return None, f"not valid UTF-8 ({bytes(raw_id)[:40]!r})"
    else:
        cid = str(raw_id)
    if not cid:
        return None, "empty"
    if len(cid) > MAX_ID_LEN:
        return None, f"longer than {MAX_ID_LEN} characters ({cid[:40]!r}...)"
    if "\x00" in cid:
        return None, f"holds a NUL character ({cid[:40]!r})"
    return cid, None


def _items(rows: sa.CursorResult, src: SourceTable, stats: _Stats,
           bar) -> Iterator[tuple[ContentItem, bool, dt.datetime | None]]:
    """Content items from (id, id_type, text[, updated_at]) rows ordered by canonical id; repeated ids
    become one error item."""
    for cid, group in itertools.groupby(rows, key=lambda r: _canonical_id(r.id)):
        group = list(group)
        bar.update(len(group))
        stats.rows_read += len(group)
        cid, why = cid
        if cid is None:
            stats.bad_ids += len(group)
            if len(stats.bad_examples) < _EXAMPLES:
                stats.bad_examples.append(why)
            continue
        item = ContentItem.from_raw(cid, group[0].text, src.name)
        updated = content_time(group[0]._mapping.get("updated_at"))
        if item.problem is not None and "UTF-8" in item.problem:
            stats.undecodable += 1
        if len(group) > 1:
            stats.duplicate_ids += 1
            stats.dropped_duplicate_rows += len(group) - 1
            if len(stats.dup_examples) < _EXAMPLES:
                stats.dup_examples.append(cid)
            types = sorted({str(r.id_type) for r in group})
            typed = f" (stored as {' and '.join(types)})" if len(types) > 1 else ""
            problem = (f"duplicate content id: {len(group)} rows of source {src.name!r} have id {cid!r}{typed}; "
                       "not labelled until the source has one row per id")
            yield ContentItem(cid, None, src.name, item.content_hash, problem=problem), True, updated
        else:
            yield item, False, updated


def content_time(value) -> dt.datetime | None:
    """A source row's updated_at as aware UTC (naive values are UTC by convention; a date is its midnight)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:  # unparseable text: counted apart by extract's untimed-row report
            return None
    if not isinstance(value, dt.datetime):
        if not hasattr(value, "year"):
            return None
        value = dt.datetime(value.year, value.month, value.day)
    return as_utc(value)


def _write_batch(engine: Engine, settings: Settings, run_id: str, src: SourceTable, refs, batch, item_no: int,
                 limit: int | None, stats: _Stats) -> int:
    labelled = _already_labelled(engine, settings, src.name, [i.content_id for i, _, _ in batch], refs)
    rows = []
    for item, never_skip, updated in batch:
        if not never_skip and labelled.get(item.content_id) == _need(item, refs):
            stats.skipped_unchanged += 1
            continue
        if limit is not None and stats.items + len(rows) >= limit:
            break
        rows.append(dict(run_id=run_id, item_no=item_no, bucket=bucket_of(item.content_hash), source=src.name,
                         content_id=item.content_id, content_hash=item.content_hash,
                         # PostgreSQL text cannot hold NUL; the hash ignores NULs too (content.normalise)
                         text=item.text.replace("\x00", "") if item.text is not None else None,
                         problem=item.problem, content_updated_at=updated))
        item_no += 1
    if rows:
        t = tables(settings).work_items
        with write_tx(engine) as conn:
            bulk_insert(conn, t, rows)
        stats.items += len(rows)
    return item_no


def _need(item: ContentItem, refs) -> frozenset:
    return frozenset((name, version, item.content_hash) for name, version in refs)


def _already_labelled(engine: Engine, settings: Settings, source: str, ids: list[str], refs) -> dict[str, frozenset]:
    """content_id -> {(policy, version, content_hash)} of its usable verdicts for the run's policies."""
    v = tables(settings).verdicts
    wanted = set(refs)
    found: dict[str, set] = {}
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one array parameter: a constant, prepared statement
            from sqlalchemy.dialects.postgresql import ARRAY

            id_match = v.c.content_id == sa.any_(sa.bindparam("ids", ids, type_=ARRAY(sa.String)))
        else:
            id_match = v.c.content_id.in_(ids)
        q = (sa.select(v.c.content_id, v.c.policy, v.c.policy_version, v.c.content_hash)
             .where(v.c.source == source, id_match, v.c.policy.in_(sorted({n for n, _ in refs})),
                    v.c.parse_status != ENGINE_ERROR))
        for r in conn.execute(q):
            if (r.policy, r.policy_version) in wanted:
                found.setdefault(r.content_id, set()).add((r.policy, r.policy_version, r.content_hash))
    return {k: frozenset(s) for k, s in found.items()}


def _finish(engine: Engine, settings: Settings, run_id: str, stats: _Stats) -> None:
    """Cut the work list into chunks (bucket ranges) and mark the extraction complete, atomically."""
    t = tables(settings)
    w = t.work_items
    if stats.duplicate_ids:
        stats.warnings.append(
            f"{stats.duplicate_ids} content id(s) appear in more than one source row "
            f"({stats.dropped_duplicate_rows} extra rows dropped); each got an error verdict "
            f"(e.g. {', '.join(stats.dup_examples)})")
    if stats.bad_ids:
        stats.warnings.append(f"{stats.bad_ids} source row(s) skipped: content id NULL, empty, not UTF-8, with a "
                              f"NUL or longer than {MAX_ID_LEN} characters (e.g. {'; '.join(stats.bad_examples)})")
    if stats.undecodable:
        stats.warnings.append(f"{stats.undecodable} row(s) hold text that is not valid UTF-8; each got an error "
                              "verdict")
    with write_tx(engine) as conn:
        merged = _merge_colliding_ids(conn, w, run_id)
        if merged:
            stats.items -= merged["dropped"]
            stats.duplicate_ids += merged["ids"]
            stats.dropped_duplicate_rows += merged["dropped"]
            stats.warnings.append(f"{merged['ids']} content id(s) read as different values compare equal once "
                                  f"canonical ({merged['dropped']} extra rows dropped); each got a duplicate-id "
                                  "error verdict")
    for msg in stats.warnings:
        log.warning("run %s: %s", run_id, msg)
    n_chunks = math.ceil(stats.items / settings.warehouse.chunk_size) if stats.items else 0
    run = get_run(engine, settings, run_id)
    params = {**(run.params), "extract_report": {
        "rows_read": stats.rows_read, "items": stats.items, "skipped_unchanged": stats.skipped_unchanged,
        "bad_ids": stats.bad_ids, "duplicate_ids": stats.duplicate_ids,
        "dropped_duplicate_rows": stats.dropped_duplicate_rows, "undecodable_text": stats.undecodable,
        "sources": stats.sources}}
    with write_tx(engine) as conn:
        unique = 0
        if n_chunks:
            # Chunk i holds buckets [ceil(i*B/n), ceil((i+1)*B/n)): bucket b is in chunk floor(b*n/B).
            # Cut inside the database, so nothing here grows with the run; empty ranges are left out.
            n = sa.literal(n_chunks, sa.BigInteger)
            chunk = ((sa.cast(w.c.bucket, sa.BigInteger) * n) // BUCKETS).label("chunk_no")
            per_chunk = (sa.select(chunk, sa.func.count().label("items")).where(w.c.run_id == run_id)
                         .group_by(chunk).subquery())
            lo = (per_chunk.c.chunk_no * BUCKETS + n - 1) // n
            hi = ((per_chunk.c.chunk_no + 1) * BUCKETS + n - 1) // n
            conn.execute(t.run_chunks.insert().from_select(
                ["run_id", "chunk_no", "bucket_lo", "bucket_hi", "items", "done"],
                sa.select(sa.literal(run_id), per_chunk.c.chunk_no, lo, hi, per_chunk.c["items"], sa.false())))
            unique = conn.execute(sa.select(sa.func.count(sa.distinct(w.c.content_hash)))
                                  .where(w.c.run_id == run_id)).scalar_one()
        c = t.run_chunks
        chunks, chunked_items = conn.execute(sa.select(sa.func.count(), sa.func.sum(c.c["items"]))
                                             .where(c.c.run_id == run_id)).one()
        if int(chunked_items or 0) != stats.items:
            raise AssertionError(f"run {run_id}: chunks hold {chunked_items} items, extract wrote {stats.items}")
        transition(conn, settings, run_id, RunStatus.EXTRACTED, items=stats.items, unique_texts=unique,
                   skipped_unchanged=stats.skipped_unchanged, duplicate_ids=stats.duplicate_ids,
                   chunks=int(chunks), warnings=stats.warnings, params=params, extract_finished_at=utcnow())


def _merge_colliding_ids(conn, w: sa.Table, run_id: str) -> dict[str, int] | None:
    """Safety net, in the database: work items of one (source, content_id) that the streamed grouping did
    not see together (ids the database orders apart) become one duplicate-id error item, so staging's key
    never breaks. Nothing here grows with the run but the number of colliding ids."""
    dup = (sa.select(w.c.source, w.c.content_id, sa.func.count().label("n"), sa.func.min(w.c.item_no).label("first"))
           .where(w.c.run_id == run_id).group_by(w.c.source, w.c.content_id).having(sa.func.count() > 1))
    ids = dropped = 0
    for row in conn.execute(dup).all():
        ids += 1
        dropped += row.n - 1
        problem = (f"duplicate content id: {row.n} rows of source {row.source!r} have id {row.content_id!r} "
                   "(stored as different values); not labelled until the source has one row per id")
        same = [w.c.run_id == run_id, w.c.source == row.source, w.c.content_id == row.content_id]
        conn.execute(w.delete().where(*same, w.c.item_no != row.first))
        conn.execute(w.update().where(*same).values(problem=problem, text=None))
    return {"ids": ids, "dropped": dropped} if ids else None
