"""A labelling run: its status (an enum), its lifecycle (the legal transitions) and its record in `sg_runs`.

Every status change in the code base goes through :func:`transition` (or the helpers built on it:
:func:`fail_run`, :func:`resume_run`, :func:`reset_run`), which checks the move against
:data:`TRANSITIONS` inside the write transaction that makes it, so two processes never both win::

    created -> extracting -> extracted -> labelling -> labelled -> validated -> published
                                 |                         \\-> quarantined -> (reset) created
                                 \\-> published (an empty work list: nothing to label)
    any working state -> failed (with the reason) -> resumed at the step that failed, or reset

A step restarted after its process died without saying so (a SIGKILLed extract or label job) may
enter its working state again (extracting -> extracting, labelling -> labelling): both steps
redo only what is not committed. A run is read back as a :class:`Run` (typed fields, not a dict).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.domain.policies import Policy
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import as_utc, utcnow, write_tx
from safeguard_flow.warehouse.errors import RunConflict, RunNotFound, RunStateError, WarehouseError
from safeguard_flow.warehouse.schema import tables

KINDS = ("nightly", "backfill", "relabel", "manual", "eval")


class RunStatus(str, enum.Enum):
    """Where a run is. A str enum: it compares equal to, and is stored as, its value."""

    CREATED = "created"
    EXTRACTING = "extracting"
    EXTRACTED = "extracted"
    LABELLING = "labelling"
    LABELLED = "labelled"
    VALIDATED = "validated"
    QUARANTINED = "quarantined"
    PUBLISHED = "published"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def working(self) -> bool:
        """A state a step is in or between steps (a run here can still fail)."""
        return self in WORKING

    @property
    def finished(self) -> bool:
        """Nothing more will happen unless someone resets or resumes the run."""
        return self in (RunStatus.PUBLISHED, RunStatus.QUARANTINED, RunStatus.FAILED)


S = RunStatus
WORKING = frozenset({S.CREATED, S.EXTRACTING, S.EXTRACTED, S.LABELLING, S.LABELLED, S.VALIDATED})
# status -> the statuses it may move to.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.CREATED: frozenset({S.EXTRACTING}),
    S.EXTRACTING: frozenset({S.EXTRACTING, S.EXTRACTED}),
    S.EXTRACTED: frozenset({S.LABELLING, S.LABELLED, S.PUBLISHED}),  # -> published only when empty
    S.LABELLING: frozenset({S.LABELLING, S.LABELLED}),
    S.LABELLED: frozenset({S.VALIDATED, S.QUARANTINED}),
    S.VALIDATED: frozenset({S.PUBLISHED}),
    S.QUARANTINED: frozenset({S.CREATED}),  # reset: labelled afresh after a fix
    S.FAILED: frozenset({S.CREATED, S.EXTRACTED, S.LABELLED}),  # resume at the failed step, or reset
    S.PUBLISHED: frozenset(),
}
TRANSITIONS = {s: allowed | ({S.FAILED} if s in WORKING else frozenset()) for s, allowed in TRANSITIONS.items()}
STATUSES = tuple(s.value for s in RunStatus)

# Set by create_run / the warehouse itself, not through update_run.
_PROTECTED = {"id", "kind", "created_at", "updated_at", "policy_refs"}
_COUNTS = ("items", "unique_texts", "skipped_unchanged", "duplicate_ids", "chunks", "verdicts", "errors", "positives",
           "inserted", "updated", "unchanged", "prompt_tokens", "completion_tokens")
_TIMES = ("extract_started_at", "extract_finished_at", "label_started_at", "label_finished_at", "validated_at",
          "published_at")

PolicyRef = tuple[str, int]


class IllegalTransition(RunStateError):
    """A status change the lifecycle does not allow (the message says from, to and what is allowed)."""


@dataclass(eq=False)
class Run:
    """One row of `sg_runs`, typed (``to_dict`` gives the plain fields)."""

    id: str
    kind: str
    status: RunStatus
    policy_refs: list[PolicyRef]
    created_at: dt.datetime
    updated_at: dt.datetime
    interval_start: dt.datetime | None = None
    interval_end: dt.datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    sources: list[str] | None = None
    items: int | None = None  # work items extracted
    unique_texts: int | None = None
    skipped_unchanged: int | None = None
    duplicate_ids: int | None = None
    chunks: int | None = None
    verdicts: int | None = None
    errors: int | None = None
    positives: int | None = None
    inserted: int | None = None
    updated: int | None = None
    unchanged: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    engine: str | None = None
    validation: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # why the run failed or was quarantined
    extract_started_at: dt.datetime | None = None
    extract_finished_at: dt.datetime | None = None
    label_started_at: dt.datetime | None = None
    label_finished_at: dt.datetime | None = None
    validated_at: dt.datetime | None = None
    published_at: dt.datetime | None = None
    purged_at: dt.datetime | None = None  # migration 0007: retention deleted its text copies
    label_attempt: int = 0  # migration 0008: the fencing token of the newest label attempt
    refused_writes: int = 0  # chunk writes refused (another attempt's, or after the run left labelling)
    heartbeat_at: dt.datetime | None = None  # when the step working on the run last said it was alive

    @classmethod
    def from_row(cls, row: sa.Row) -> Run:
        d = dict(row._mapping)
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["status"] = RunStatus(d["status"])
        d["policy_refs"] = _refs(d.get("policy_refs"))
        d["params"] = d.get("params") or {}
        d["warnings"] = d.get("warnings") or []
        return cls(**d)

    # -- what the steps ask ----------------------------------------------------------------------
    @property
    def extracted(self) -> bool:
        """The work list is complete (extract finished)."""
        return self.extract_finished_at is not None

    @property
    def empty(self) -> bool:
        """Extracted with nothing to label."""
        return self.extracted and not self.items

    def resume_point(self) -> RunStatus:
        """Where a failed run picks up: the step that had not finished (its committed work is kept)."""
        if not self.extracted:
            return S.CREATED  # extract starts again (it drops a partial work list itself)
        if self.label_finished_at is None:
            return S.EXTRACTED  # label the chunks still pending
        return S.LABELLED  # validate again

    def label(self) -> str:
        return ", ".join(f"{n} v{v}" for n, v in self.policy_refs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_transition(run: Run, to: RunStatus | str) -> RunStatus:
    """The target status, if the lifecycle allows `run` to move there; IllegalTransition if not."""
    try:
        to = RunStatus(to)
    except ValueError:
        raise WarehouseError(f"run status {to!r} is not one of {', '.join(STATUSES)}") from None
    allowed = TRANSITIONS[run.status]
    if to not in allowed:
        hint = ""
        if run.status is S.QUARANTINED:
            hint = "; a quarantined run is reset (runs.reset_run) and labelled afresh"
        elif run.status is S.FAILED:
            hint = "; a failed run is resumed (runs.resume_run) or reset (runs.reset_run)"
        elif run.status is S.PUBLISHED:
            hint = "; a published run is final"
        raise IllegalTransition(
            f"run {run.id!r} is {run.status.value}: it cannot become {to.value} "
            f"(from {run.status.value} it can become {', '.join(sorted(s.value for s in allowed)) or 'nothing'}){hint}")
    if run.status is S.EXTRACTED and to is S.PUBLISHED and not run.empty:
        raise IllegalTransition(f"run {run.id!r} has {run.items} item(s) to label: only an empty run is published "
                                "straight after extract")
    return to


def policy_refs(policies: Iterable[Policy | Sequence]) -> list[PolicyRef]:
    refs = []
    for p in policies:
        name, version = (p.name, p.version) if isinstance(p, Policy) else (p[0], p[1])
        if version is None:
            raise WarehouseError(f"policy {name!r} has no version: publish it (policy_store.publish_policies) first")
        refs.append((str(name), int(version)))
    # Two versions of one policy are fine (a nightly run labels a shadow version beside the active one).
    if len(set(refs)) != len(refs):
        raise WarehouseError(f"a run names each policy version once; got {refs}")
    return sorted(refs)


def create_run(
    engine: Engine,
    settings: Settings,
    kind: str,
    policies: Iterable[Policy | Sequence],
    interval_start: dt.datetime | None = None,
    interval_end: dt.datetime | None = None,
    params: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> str:
    """Record a new run (status 'created') and return its id.

    A given run_id that already exists with the same kind, policies and interval is returned as is,
    so a retried task carries on with the same run; different ones raise RunConflict.
    """
    if kind not in KINDS:
        raise WarehouseError(f"run kind {kind!r} is not one of {', '.join(KINDS)}")
    refs = policy_refs(policies)
    if not refs:
        raise WarehouseError("a run needs at least one policy")
    start, end = as_utc(interval_start), as_utc(interval_end)
    if start and end and not start < end:
        raise WarehouseError(f"run interval is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    run_id = run_id or f"{kind}-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    t = tables(settings).runs
    now = utcnow()
    with write_tx(engine) as conn:
        existing = conn.execute(sa.select(t).where(t.c.id == run_id)).one_or_none()
        if existing is not None:
            same = (existing.kind == kind and _refs(existing.policy_refs) == refs
                    and existing.interval_start == start and existing.interval_end == end)
            if not same:
                raise RunConflict(
                    f"run {run_id!r} exists as kind={existing.kind} policies={_refs(existing.policy_refs)} "
                    f"interval=[{existing.interval_start}, {existing.interval_end}); asked for kind={kind} "
                    f"policies={refs} interval=[{start}, {end}); use another run id or runs.reset_run")
            return run_id
        conn.execute(t.insert().values(
            id=run_id, kind=kind, status=S.CREATED.value, interval_start=start, interval_end=end,
            policy_refs=[list(r) for r in refs], params=params or {}, warnings=[], created_at=now, updated_at=now))
    return run_id


def _refs(value: Any) -> list[PolicyRef]:
    return sorted((str(n), int(v)) for n, v in (value or []))


def _select(conn: Connection, settings: Settings, run_id: str, for_update: bool = False) -> Run:
    t = tables(settings).runs
    q = sa.select(t).where(t.c.id == run_id)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update()  # SQLite: write_tx already holds the database write lock
    row = conn.execute(q).one_or_none()
    if row is None:
        raise RunNotFound(f"run {run_id!r} not found in {t.name}")
    return Run.from_row(row)


def get_run(engine: Engine | Connection, settings: Settings, run_id: str) -> Run:
    if isinstance(engine, Connection):
        return _select(engine, settings, run_id)
    with engine.connect() as conn:
        return _select(conn, settings, run_id)


def _check_fields(settings: Settings, fields_: dict[str, Any]) -> None:
    t = tables(settings).runs
    unknown = sorted(set(fields_) - set(t.c.keys()))
    if unknown:
        raise WarehouseError(f"update_run: unknown field(s) {unknown}; run columns are: {', '.join(t.c.keys())}")
    bad = sorted(set(fields_) & _PROTECTED)
    if bad:
        raise WarehouseError(f"update_run: field(s) {bad} are set when the run is created and cannot change")


def update_run(engine: Engine | Connection, settings: Settings, run_id: str, /, **fields_: Any) -> None:
    """Set columns of the run row (counts, timings, model, engine, validation, ...); never its status:
    status changes go through :func:`transition`, which checks them against the lifecycle."""
    if "status" in fields_:
        raise WarehouseError(f"update_run: the status of run {run_id!r} changes only through runs.transition "
                             "(which checks the lifecycle), not update_run")
    _check_fields(settings, fields_)
    values = {**fields_, "updated_at": utcnow()}
    if isinstance(engine, Connection):
        _update(engine, tables(settings).runs, run_id, values)
    else:
        with write_tx(engine) as conn:
            _update(conn, tables(settings).runs, run_id, values)


def _update(conn: Connection, t: sa.Table, run_id: str, values: dict[str, Any]) -> None:
    if conn.execute(t.update().where(t.c.id == run_id).values(**values)).rowcount == 0:
        raise RunNotFound(f"run {run_id!r} not found in {t.name}")


def transition(engine: Engine | Connection, settings: Settings, run_id: str, to: RunStatus | str, /,
               **fields_: Any) -> Run:
    """Move the run to status `to` (setting `fields_` with it) if the lifecycle allows; returns the run
    as it is now. Checked and written in one transaction: of two processes racing for the same
    move out of one status, the second sees the first's result. Moving to 'validated' needs the
    passing gate's `validation` result."""
    _check_fields(settings, fields_)
    if isinstance(engine, Connection):
        return _transition(engine, settings, run_id, to, fields_)
    with write_tx(engine) as conn:
        return _transition(conn, settings, run_id, to, fields_)


def _transition(conn: Connection, settings: Settings, run_id: str, to, fields_: dict[str, Any]) -> Run:
    run = _select(conn, settings, run_id, for_update=True)
    to = check_transition(run, to)
    if to is S.VALIDATED and not (fields_.get("validation") or {}).get("success"):
        raise IllegalTransition(f"run {run_id!r}: 'validated' needs a passing validation result (validation="
                                "{'success': True, ...}); the quality gate sets it")
    t = tables(settings).runs
    # Compare-and-set on the status read above: never overwrite a move another process just made.
    result = conn.execute(t.update().where(t.c.id == run_id, t.c.status == run.status.value)
                          .values(**fields_, status=to.value, updated_at=utcnow()))
    if result.rowcount != 1:
        now = _select(conn, settings, run_id)
        raise IllegalTransition(f"run {run_id!r} changed from {run.status.value} to {now.status.value} while "
                                f"moving it to {to.value}")
    return _select(conn, settings, run_id)


def fail_run(engine: Engine | Connection, settings: Settings, run_id: str, reason: str) -> bool:
    """Mark a run failed with the reason (why it stopped, for `runs show` and the UI). A run that is not
    in a working state (already failed, quarantined or published) is left as it is: returns False."""
    def fail(conn: Connection) -> bool:
        run = _select(conn, settings, run_id, for_update=True)
        if not run.status.working:
            return False
        _transition(conn, settings, run_id, S.FAILED, {"error": reason[:20_000]})
        return True

    if isinstance(engine, Connection):
        return fail(engine)
    with write_tx(engine) as conn:
        return fail(conn)


def resume_run(engine: Engine, settings: Settings, run_id: str) -> Run:
    """Resume a failed run at the step that had not finished (finished chunks are kept); returns the
    resumed run (its status is where it resumes). The failure stays in the run's warnings."""
    with write_tx(engine) as conn:
        run = _select(conn, settings, run_id, for_update=True)
        if run.status is not S.FAILED:
            raise IllegalTransition(f"run {run_id!r} is {run.status.value}, not failed: nothing to resume")
        point = run.resume_point()
        note = f"resumed at {point.value} after a failure: {run.error or 'no reason recorded'}"
        return _transition(conn, settings, run_id, point, {"error": None, "warnings": [*run.warnings, note[:2000]]})


def start_label_attempt(engine: Engine, settings: Settings, run_id: str, /, **fields_: Any) -> Run:
    """Move the run to labelling as a new label attempt: its `label_attempt` (the fencing token every
    chunk write of this attempt carries) is bumped in the same transaction, so of two jobs started on
    one run only the newer one's writes are accepted."""
    _check_fields(settings, fields_)
    with write_tx(engine) as conn:
        run = _select(conn, settings, run_id, for_update=True)
        return _transition(conn, settings, run_id, S.LABELLING,
                           {**fields_, "label_attempt": run.label_attempt + 1, "heartbeat_at": utcnow()})


def heartbeat(engine: Engine, settings: Settings, run_id: str, attempt: int | None = None) -> bool:
    """Say the step working on the run is alive (the run's `heartbeat_at`). With `attempt`, only while
    that label attempt is the run's newest and the run is labelling: False once it was superseded."""
    t = tables(settings).runs
    q = t.update().where(t.c.id == run_id)
    if attempt is not None:
        q = q.where(t.c.label_attempt == attempt, t.c.status == S.LABELLING.value)
    with write_tx(engine) as conn:
        return conn.execute(q.values(heartbeat_at=utcnow())).rowcount == 1


def count_refused_write(conn: Connection, settings: Settings, run_id: str) -> None:
    t = tables(settings).runs
    conn.execute(t.update().where(t.c.id == run_id).values(refused_writes=t.c.refused_writes + 1))


def add_warning(conn: Connection, settings: Settings, run_id: str, message: str) -> None:
    t = tables(settings).runs
    warnings = conn.execute(sa.select(t.c.warnings).where(t.c.id == run_id)).scalar_one_or_none() or []
    conn.execute(t.update().where(t.c.id == run_id).values(warnings=[*warnings, message], updated_at=utcnow()))


def list_runs(engine: Engine, settings: Settings, limit: int = 50, kind: str | None = None,
              status: RunStatus | str | None = None) -> list[Run]:
    t = tables(settings).runs
    q = sa.select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit)
    if kind:
        q = q.where(t.c.kind == kind)
    if status:
        q = q.where(t.c.status == RunStatus(status).value)
    with engine.connect() as conn:
        return [Run.from_row(r) for r in conn.execute(q)]


def reset_run(engine: Engine, settings: Settings, run_id: str) -> Run:
    """Start a quarantined or failed run afresh: forget its work list, chunks and staged verdicts
    (published verdicts stay), clear its counts; status 'created'."""
    t = tables(settings)
    with write_tx(engine) as conn:
        check_transition(_select(conn, settings, run_id, for_update=True), S.CREATED)
        for table in (t.work_items, t.run_chunks, t.verdict_staging):
            conn.execute(table.delete().where(table.c.run_id == run_id))
        cleared = {c: None for c in (*_COUNTS, *_TIMES, "validation", "error")}
        return _transition(conn, settings, run_id, S.CREATED, {**cleared, "warnings": []})
