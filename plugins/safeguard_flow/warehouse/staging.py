"""The label job's side of a run: read chunks of the work list, stage verdicts chunk by chunk.

`write_chunk` stores a chunk's verdicts and its done mark in one transaction, so a restarted job
(`pending_chunks`) skips exactly the chunks that finished. It also checks the label job's
invariant: one verdict per (work item, run policy), no more, no fewer.
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.settings import Settings
from safeguard_flow.domain.verdicts import Verdict
from safeguard_flow.warehouse.db import bulk_insert, retrying, utcnow, write_tx
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError
from safeguard_flow.warehouse.runs import Run, RunStatus, count_refused_write, get_run, transition
from safeguard_flow.warehouse.schema import tables

_SHOW = 5  # keys quoted in an error


def _extracted_run(conn, settings: Settings, run_id: str) -> Run:
    run = get_run(conn, settings, run_id)
    if not run.extracted:
        raise RunStateError(f"run {run_id!r} has no complete work list yet (status {run.status}); run extract first")
    return run


def pending_chunks(engine: Engine, settings: Settings, run_id: str) -> list[int]:
    """Chunk numbers of the run not labelled yet, in order."""
    c = tables(settings).run_chunks
    with engine.connect() as conn:
        _extracted_run(conn, settings, run_id)
        return list(conn.execute(sa.select(c.c.chunk_no).where(c.c.run_id == run_id, c.c.done == sa.false())
                                 .order_by(c.c.chunk_no)).scalars())


def _chunk(conn, settings: Settings, run_id: str, chunk_no: int) -> sa.Row:
    c = tables(settings).run_chunks
    row = conn.execute(sa.select(c).where(c.c.run_id == run_id, c.c.chunk_no == chunk_no)).one_or_none()
    if row is None:
        raise WarehouseError(f"run {run_id!r} has no chunk {chunk_no}")
    return row


def _chunk_items_query(settings: Settings, run_id: str, chunk: sa.Row, *cols) -> sa.Select:
    w = tables(settings).work_items
    return (sa.select(*(cols or (w,))).where(w.c.run_id == run_id, w.c.bucket >= chunk.bucket_lo,
                                             w.c.bucket < chunk.bucket_hi).order_by(w.c.item_no))


def read_chunk(engine: Engine, settings: Settings, run_id: str, chunk_no: int) -> list[ContentItem]:
    """The chunk's content items. Every copy of a text in the run is in the same chunk."""
    with engine.connect() as conn:
        _extracted_run(conn, settings, run_id)
        chunk = _chunk(conn, settings, run_id, chunk_no)
        texts: dict[str, str | None] = {}  # one string object per distinct text in the chunk
        items = []
        for r in conn.execute(_chunk_items_query(settings, run_id, chunk)):
            text = texts.setdefault(r.content_hash, r.text) if r.problem is None else r.text
            items.append(ContentItem(r.content_id, text, r.source, r.content_hash, r.problem))
        return items


class StaleWrite(RunStateError):
    """A chunk write refused by the run's fence: another label attempt owns the run, or it left labelling."""


def write_chunk(engine: Engine, settings: Settings, run_id: str, chunk_no: int, verdicts: Sequence[Verdict],
                attempt: int | None = None) -> None:
    """Stage the chunk's verdicts and mark it done, in one transaction (rewriting replaces the chunk).

    attempt: the label attempt's fencing token (runs.start_label_attempt). The write is refused
    (StaleWrite, counted in the run's `refused_writes`) unless the run is labelling under that very
    attempt; without a token (a caller labelling by hand) only while the run is extracted or labelling.
    So a stale job never rewrites chunks after validation, or after a reset of the run."""
    refused = retrying(lambda: _write_chunk(engine, settings, run_id, chunk_no, verdicts, attempt),
                       what=f"write chunk {chunk_no}")
    if refused:
        raise StaleWrite(f"write_chunk(run {run_id!r}, chunk {chunk_no}) refused: {refused}")


def _fence(conn, settings: Settings, run_id: str, attempt: int | None) -> tuple[Run, str | None]:
    """The run (its row share-locked on PostgreSQL until the write commits) and why the write is refused, if it is."""
    r = tables(settings).runs
    q = sa.select(r).where(r.c.id == run_id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(read=True)  # a status change waits for the writes in flight
    row = conn.execute(q).one_or_none()
    run = _extracted_run(conn, settings, run_id) if row is None else Run.from_row(row)
    if attempt is None:
        if run.status not in (RunStatus.EXTRACTED, RunStatus.LABELLING):
            return run, f"the run is {run.status.value}, not extracted or labelling"
    elif run.status is not RunStatus.LABELLING:
        return run, f"the run is {run.status.value}: label attempt {attempt} ended"
    elif run.label_attempt != attempt:
        return run, f"label attempt {attempt} is stale: attempt {run.label_attempt} owns the run"
    return run, None


def _write_chunk(engine: Engine, settings: Settings, run_id: str, chunk_no: int, verdicts: Sequence[Verdict],
                 attempt: int | None = None) -> str | None:
    t = tables(settings)
    now = utcnow()
    with write_tx(engine) as conn:
        run, refused = _fence(conn, settings, run_id, attempt)
        if refused is not None:
            count_refused_write(conn, settings, run_id)
            return refused
        run = _extracted_run(conn, settings, run_id)
        chunk = _chunk(conn, settings, run_id, chunk_no)
        w = t.work_items
        items = conn.execute(_chunk_items_query(settings, run_id, chunk, w.c.source, w.c.content_id,
                                                w.c.content_hash, w.c.content_updated_at)).all()
        _check_complete(run_id, chunk_no, items, run.policy_refs, verdicts)
        updated_at = {(it.source, it.content_id): it.content_updated_at for it in items}

        rows, analysis = [], []
        tokens: dict[tuple[str, str], tuple[int, int]] = {}  # copies of a text share one request
        for v in verdicts:
            key = dict(run_id=run_id, source=v.source, content_id=v.content_id, policy=v.policy,
                       policy_version=v.policy_version)
            rows.append(dict(
                key, chunk_no=chunk_no, content_hash=v.content_hash, label=v.label if not v.is_error else None,
                category=v.category, rationale=v.rationale, confidence=v.confidence, rule_ids=v.rule_ids,
                parse_status=v.parse_status, raw_output=v.raw_output if v.is_error else None, error=v.error,
                model=v.model or "", prompt_tokens=v.prompt_tokens, completion_tokens=v.completion_tokens,
                extra=v.extra or None, decided_by=v.decided_by, labelled_at=now, extracted_at=run.extract_started_at,
                content_updated_at=updated_at[(v.source, v.content_id)],
                content_day=content_day(updated_at[(v.source, v.content_id)], run.interval_start, now)))
            tokens[(v.content_hash, v.policy)] = (v.prompt_tokens, v.completion_tokens)
            if settings.warehouse.store_analysis and (v.analysis or v.raw_output):
                analysis.append(dict(key, content_hash=v.content_hash, analysis=v.analysis, raw_output=v.raw_output,
                                     labelled_at=now))

        s = t.verdict_staging
        conn.execute(s.delete().where(s.c.run_id == run_id, s.c.chunk_no == chunk_no))
        bulk_insert(conn, s, rows)
        if settings.warehouse.store_analysis:
            a = t.verdict_analysis
            for source in {it.source for it in items}:
                ids = [it.content_id for it in items if it.source == source]
                for i in range(0, len(ids), 500):
                    conn.execute(a.delete().where(a.c.run_id == run_id, a.c.source == source,
                                                  a.c.content_id.in_(ids[i:i + 500])))
            bulk_insert(conn, a, analysis)
        c = t.run_chunks
        conn.execute(c.update().where(c.c.run_id == run_id, c.c.chunk_no == chunk_no).values(
            done=True, verdicts=len(rows), errors=sum(v.is_error for v in verdicts),
            positives=sum(1 for v in verdicts if not v.is_error and v.label is not None and v.label >= 1),
            prompt_tokens=sum(p for p, _ in tokens.values()), completion_tokens=sum(q for _, q in tokens.values()),
            finished_at=now))
    return None


def content_day(content_updated_at: dt.datetime | None, interval_start: dt.datetime | None,
                labelled_at: dt.datetime) -> dt.date:
    """The UTC day sg_daily_policy_rates charts a verdict on: its content's, else its run's interval's,
    else its labelling's."""
    at = content_updated_at or interval_start or labelled_at
    return (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc).date()


def _check_complete(run_id: str, chunk_no: int, items, refs, verdicts: Sequence[Verdict]) -> None:
    expected = {(it.source, it.content_id, name, version) for it in items for name, version in refs}
    got = [(v.source, v.content_id, v.policy, v.policy_version) for v in verdicts]
    got_set = set(got)
    where = f"write_chunk(run {run_id!r}, chunk {chunk_no})"
    if len(got_set) != len(got):
        dups = sorted({k for k in got if got.count(k) > 1})[:_SHOW]
        raise WarehouseError(f"{where}: more than one verdict for {dups}")
    if got_set != expected:
        missing, extra = sorted(expected - got_set)[:_SHOW], sorted(got_set - expected)[:_SHOW]
        raise WarehouseError(f"{where}: verdicts must be one per (work item, run policy {refs}); "
                             f"missing {len(expected - got_set)} e.g. {missing}; unexpected {len(got_set - expected)} "
                             f"e.g. {extra}")
    hashes = {(it.source, it.content_id): it.content_hash for it in items}
    wrong = [v.content_id for v in verdicts if v.content_hash != hashes[(v.source, v.content_id)]]
    if wrong:
        raise WarehouseError(f"{where}: verdict content_hash differs from the work item for ids {wrong[:_SHOW]}")


def progress(engine: Engine, settings: Settings, run_id: str) -> dict[str, int]:
    """Chunks done / total and what they hold so far."""
    c = tables(settings).run_chunks
    q = sa.select(
        sa.func.count(), sa.func.sum(sa.case((c.c.done == sa.true(), 1), else_=0)), sa.func.sum(c.c["items"]),
        sa.func.sum(c.c.verdicts), sa.func.sum(c.c.errors), sa.func.sum(c.c.positives), sa.func.sum(c.c.prompt_tokens),
        sa.func.sum(c.c.completion_tokens),
    ).where(c.c.run_id == run_id)
    with engine.connect() as conn:
        row = conn.execute(q).one()
    keys = ("chunks", "done", "items", "verdicts", "errors", "positives", "prompt_tokens", "completion_tokens")
    return {k: int(v or 0) for k, v in zip(keys, row)}


STAGED_COLUMNS = ("run_id", "source", "content_id", "policy", "policy_version", "content_hash", "label", "category",
                  "rationale", "confidence", "rule_ids", "parse_status", "raw_output", "error", "model",
                  "prompt_tokens", "completion_tokens", "labelled_at", "chunk_no")


def staged_frame(engine: Engine, settings: Settings, run_id: str):
    """The run's staged verdicts as a pandas DataFrame (one row per (item, policy); for validation)."""
    import pandas as pd

    s = tables(settings).verdict_staging
    q = (sa.select(*(s.c[c] for c in STAGED_COLUMNS)).where(s.c.run_id == run_id)
         .order_by(s.c.source, s.c.content_id, s.c.policy, s.c.policy_version))
    with engine.connect() as conn:
        get_run(conn, settings, run_id)
        result = conn.execute(q)
        frame = pd.DataFrame.from_records(result.all(), columns=list(STAGED_COLUMNS))
    # Nullable integers keep "no label" (error rows) apart from 0.
    frame["label"] = frame["label"].astype("Int64")
    frame["policy_version"] = frame["policy_version"].astype("int64")
    return frame


def staged_tally(engine: Engine, settings: Settings, run_id: str) -> dict[tuple[str, int], list[tuple[str, int | None, int]]]:
    """The run's staged verdicts counted per (policy, version) -> [(parse_status, label, verdicts)], in
    one GROUP BY on the database: what the quality gate judges, without reading a verdict (texts,
    rationales and raw output stay in the database; the result has a few rows whatever the run's size)."""
    s = tables(settings).verdict_staging
    q = (sa.select(s.c.policy, s.c.policy_version, s.c.parse_status, s.c.label, sa.func.count())
         .where(s.c.run_id == run_id).group_by(s.c.policy, s.c.policy_version, s.c.parse_status, s.c.label))
    out: dict[tuple[str, int], list[tuple[str, int | None, int]]] = {}
    with engine.connect() as conn:
        get_run(conn, settings, run_id)
        for policy, version, status, label, n in conn.execute(q):
            out.setdefault((policy, int(version)), []).append((status, None if label is None else int(label), int(n)))
    return out


def purge_run(engine: Engine, settings: Settings, run_id: str, force: bool = False) -> dict[str, int]:
    """Delete a finished run's work list and staged verdicts (the run row and published verdicts stay)."""
    t = tables(settings)
    with write_tx(engine) as conn:
        run = get_run(conn, settings, run_id)
        if not run.status.finished and not force:
            raise RunStateError(f"run {run_id!r} is {run.status}; purge only finished runs (or force=True)")
        return {table.name: conn.execute(table.delete().where(table.c.run_id == run_id)).rowcount
                for table in (t.work_items, t.run_chunks, t.verdict_staging)}


def finish_labelling(engine: Engine, settings: Settings, run_id: str) -> Run:
    """Close the label step of a run whose chunks are all staged (by a label job, or written directly
    with write_chunk): labelled, with the whole run's token counts. A run labelled already is left as
    it is; RunStateError while chunks are pending. Here, not in the pipeline, so the Ray job that
    stages the chunks needs only the warehouse."""
    run = get_run(engine, settings, run_id)
    if run.status in (RunStatus.LABELLED, RunStatus.VALIDATED, RunStatus.PUBLISHED):
        return run
    pending = pending_chunks(engine, settings, run_id)
    if pending:
        raise RunStateError(f"run {run_id!r} has {len(pending)} chunk(s) not labelled yet: {pending[:20]}")
    totals = progress(engine, settings, run_id)  # earlier (killed) jobs included
    return transition(engine, settings, run_id, RunStatus.LABELLED, label_finished_at=utcnow(),
                      prompt_tokens=totals["prompt_tokens"], completion_tokens=totals["completion_tokens"])
