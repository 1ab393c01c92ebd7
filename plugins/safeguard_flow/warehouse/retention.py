"""Retention: what runs leave behind is deleted after `retention.*` days (settings.py).

- **Text copies** (`work_items.text`) of published runs: cleared `text_days` after publishing (default
  0: `publish` clears its run's copies itself, so content erased at the source does not live on
  here). The run's `purged_at` says when.
- **Work lists, chunks and staged verdicts** of published runs, `staging_days` after publishing (the
  published verdicts are in the verdict table; the run row keeps every count and timing, and its
  per-version gate rows stay, so `runs show` answers for a purged run).
- **The model's analysis** (`verdict_analysis`) `analysis_days` after labelling; **eval predictions**
  `eval_predictions_days` after their eval (the eval and its scores stay).
- **Files** under `home`: validation reports after `reports_days`, the CLI's per-run logs
  (`<home>/logs/*.log`) after `logs_days`; the local Ray head's log, appended to for as long as the
  head lives, is rotated (copied, then emptied in place: the head keeps its descriptor) past `log_max_mb`.

Runs that are not published (quarantined, failed, in progress) keep everything: they are resumed or
reset from it. Every purge is idempotent; `dry_run` only counts.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import utcnow, write_tx
from safeguard_flow.warehouse.runs import RunStatus
from safeguard_flow.warehouse.schema import tables

log = logging.getLogger(__name__)

DAY_S = 86_400


@dataclass
class RetentionReport:
    """What one pass deleted (or, with dry_run, would delete)."""

    dry_run: bool = False
    text_runs: list[str] = field(default_factory=list)  # runs whose text copies were cleared
    texts_cleared: int = 0
    staging_runs: list[str] = field(default_factory=list)  # runs whose work list and staging were deleted
    rows_deleted: dict[str, int] = field(default_factory=dict)  # table -> rows
    files_deleted: list[str] = field(default_factory=list)
    logs_rotated: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would purge" if self.dry_run else "purged"
        rows = ", ".join(f"{n:,} {t}" for t, n in sorted(self.rows_deleted.items()) if n) or "no rows"
        return (f"retention {verb}: text copies of {len(self.text_runs)} published run(s) ({self.texts_cleared:,} "
                f"texts), work lists and staging of {len(self.staging_runs)} run(s); {rows}; "
                f"{len(self.files_deleted)} file(s) deleted, {len(self.logs_rotated)} log(s) rotated")


def _cutoff(days: int | None, now: dt.datetime) -> dt.datetime | None:
    return None if days is None else now - dt.timedelta(days=days)


def apply_retention(engine: Engine, settings: Settings, *, dry_run: bool = False,
                    now: dt.datetime | None = None) -> RetentionReport:
    """One retention pass over the warehouse and `home`, as `retention.*` says."""
    r = settings.retention
    now = now or utcnow()
    report = RetentionReport(dry_run=dry_run)
    cut = _cutoff(r.text_days, now)
    if cut is not None:
        for run_id in _published_runs(engine, settings, cut, with_text=True):
            n = clear_texts(engine, settings, run_id, dry_run=dry_run)
            report.text_runs.append(run_id)
            report.texts_cleared += n
    cut = _cutoff(r.staging_days, now)
    if cut is not None:
        for run_id in _published_runs(engine, settings, cut, with_text=False):
            report.staging_runs.append(run_id)
            for table, n in _purge_staging(engine, settings, run_id, dry_run, now).items():
                report.rows_deleted[table] = report.rows_deleted.get(table, 0) + n
    t = tables(settings)
    cut = _cutoff(r.analysis_days, now)
    if cut is not None:
        a = t.verdict_analysis
        report.rows_deleted[a.name] = _delete(engine, a, a.c.labelled_at < cut, dry_run)
    cut = _cutoff(r.eval_predictions_days, now)
    if cut is not None:
        p, e = t.eval_predictions, t.evals
        old = sa.select(e.c.id).where(e.c.created_at < cut)
        report.rows_deleted[p.name] = _delete(engine, p, p.c.eval_id.in_(old), dry_run)
    _files(settings, report, now)
    log.info("%s", report.summary())
    return report


def clear_texts(engine: Engine, settings: Settings, run_id: str, *, dry_run: bool = False) -> int:
    """Clear the text copies of a published run's work items and note when on the run; the number cleared.
    A run that is not published is left alone (0): its next step may still need them."""
    w, runs = tables(settings).work_items, tables(settings).runs
    with write_tx(engine) as conn:
        status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar_one_or_none()
        if status != RunStatus.PUBLISHED.value:
            return 0
        has_text = sa.and_(w.c.run_id == run_id, w.c.text.is_not(None))
        if dry_run:
            return int(conn.execute(sa.select(sa.func.count()).where(has_text)).scalar_one())
        n = conn.execute(w.update().where(has_text).values(text=None)).rowcount
        conn.execute(runs.update().where(runs.c.id == run_id, runs.c.purged_at.is_(None)).values(purged_at=utcnow()))
    return int(n or 0)


def _published_runs(engine: Engine, settings: Settings, cutoff: dt.datetime, *, with_text: bool) -> list[str]:
    """Published runs published by `cutoff` that still hold text copies (with_text) or any work-list or
    staged row (not with_text). A handful of runs a day: one EXISTS per run on its key's index."""
    t = tables(settings)
    runs, w, s = t.runs, t.work_items, t.verdict_staging
    if with_text:
        holds = sa.exists().where(w.c.run_id == runs.c.id, w.c.text.is_not(None))
    else:
        holds = sa.or_(sa.exists().where(w.c.run_id == runs.c.id), sa.exists().where(s.c.run_id == runs.c.id),
                       sa.exists().where(t.run_chunks.c.run_id == runs.c.id))
    q = (sa.select(runs.c.id).where(runs.c.status == RunStatus.PUBLISHED.value, runs.c.published_at <= cutoff, holds)
         .order_by(runs.c.published_at))
    with engine.connect() as conn:
        return list(conn.execute(q).scalars())


def _purge_staging(engine: Engine, settings: Settings, run_id: str, dry_run: bool, now: dt.datetime) -> dict[str, int]:
    t = tables(settings)
    out = {}
    with write_tx(engine) as conn:
        for table in (t.work_items, t.run_chunks, t.verdict_staging):
            where = table.c.run_id == run_id
            out[table.name] = (int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())
                               if dry_run else int(conn.execute(table.delete().where(where)).rowcount or 0))
        if not dry_run:
            conn.execute(t.runs.update().where(t.runs.c.id == run_id, t.runs.c.purged_at.is_(None))
                         .values(purged_at=now))
    return out


def _delete(engine: Engine, table: sa.Table, where, dry_run: bool) -> int:
    with write_tx(engine) as conn:
        if dry_run:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())
        return int(conn.execute(table.delete().where(where)).rowcount or 0)


# --- files under home ------------------------------------------------------------------------------


def _files(settings: Settings, report: RetentionReport, now: dt.datetime) -> None:
    r = settings.retention
    home = settings.home_path
    stamp = now.timestamp()
    if r.reports_days is not None:
        for folder in sorted((home / "reports").glob("*/")):
            report_file = folder / "validation.json"
            if report_file.is_file() and stamp - report_file.stat().st_mtime > r.reports_days * DAY_S:
                report.files_deleted.append(str(folder))
                if not report.dry_run:
                    shutil.rmtree(folder, ignore_errors=True)
    if r.logs_days is not None:
        for path in sorted((home / "logs").glob("*.log")):
            if stamp - path.stat().st_mtime > r.logs_days * DAY_S:
                report.files_deleted.append(str(path))
                if not report.dry_run:
                    path.unlink(missing_ok=True)
    for path in sorted((home / "ray").glob("head-*.log")):
        if path.stat().st_size > r.log_max_mb * 1024 * 1024:
            report.logs_rotated.append(str(path))
            if not report.dry_run:
                rotate_log(path, r.log_backups)


def rotate_log(path: Path, backups: int) -> None:
    """Copy `path` to `path.1` (shifting older copies, keeping `backups`), then empty it in place: a
    process appending to it (O_APPEND) keeps its descriptor and writes on from the start."""
    if backups > 0:
        for i in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{i + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)
