"""Immutable policy versions in the warehouse.

A version row (name, version, sha256, text, ...) is written once and never updated. Publishing a
text whose sha256 is already stored for that policy creates nothing: that version becomes the
policy's current one again (a revert), so the same text never becomes two versions.

Active version (what labelling and the BI views use) = pinned_version if pinned, else current_version.

Every move of a policy's current version (by the CLI, the sync DAG or any caller) is recorded once in
the change log (``<prefix>policy_changes``) with the version it replaced, so whoever announces
changes later (the policy sync's asset events) gives the true ``previous_version``. A policy's first
version replaces nothing and is not a change to relabel for: new content is labelled with it by the
nightly runs; label the history with it by a relabel run for that policy.

A version published as shadow (``publish_policies(..., shadow=True)`` or ``shadow: true`` in the
file's front matter) is stored and recorded as the policy's shadow_version, but current_version does
not move: it labels (the relabel run of the change, and every nightly run beside the active
version: `run_policies`) while the BI views keep the promoted version, until
`policy_quality.promotion_gate.promote` passes the promotion gate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from safeguard_flow.domain.policies import OutputFormat, Policy, ReasoningEffort, policy_sha256
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import retrying, utcnow, write_tx
from safeguard_flow.warehouse.errors import WarehouseError
from safeguard_flow.warehouse.schema import tables


@dataclass(frozen=True)
class PublishResult:
    policy: Policy  # with .version set
    version: int
    changed: bool  # the policy's current version moved (new text, or a revert to an older text)
    created: bool = False  # a new version row was written
    previous_version: int | None = None
    shadow: bool = False  # stored as the policy's shadow version; current_version did not move


@dataclass(frozen=True)
class PolicyChange:
    """One move of a policy's current version (a row of the change log)."""

    id: int
    name: str
    version: int
    previous_version: int | None  # None: the policy's first version
    sha256: str
    created: bool  # the version row was new (False: a revert to a stored text)
    author: str
    changed_at: dt.datetime


def publish_policies(engine: Engine, settings: Settings, policies: Sequence[Policy], author: str,
                     shadow: bool = False) -> list[PublishResult]:
    """Store each policy's text as a version if new; make it the policy's current version, or its
    shadow version when `shadow` (or the policy file's `shadow: true`)."""
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise WarehouseError(f"publish_policies: policy names repeat in one call: {sorted(names)}")
    # One transaction per policy, retried: concurrent publishers of the same text race on the
    # unique (name, sha256) / (name, version) keys; the loser retries and finds the stored version.
    return [retrying(lambda p=p: _publish_one(engine, settings, p, author, shadow or p.shadow), what=f"publish policy {p.name}",
                     retry_on=(sa.exc.IntegrityError,)) for p in policies]


def _publish_one(engine: Engine, settings: Settings, policy: Policy, author: str, shadow: bool = False) -> PublishResult:
    t = tables(settings)
    now = utcnow()
    with write_tx(engine) as conn:
        head = _lock_policy_row(conn, settings, policy, now)
        previous = head.current_version
        existing = conn.execute(
            sa.select(t.policy_versions.c.version).where(
                t.policy_versions.c.name == policy.name, t.policy_versions.c.sha256 == policy.sha256)
        ).scalar_one_or_none()
        created = existing is None
        if created:
            latest = conn.execute(
                sa.select(sa.func.max(t.policy_versions.c.version)).where(t.policy_versions.c.name == policy.name)
            ).scalar_one_or_none() or 0
            version = latest + 1
            conn.execute(t.policy_versions.insert().values(
                name=policy.name, version=version, sha256=policy.sha256, text=policy.text, labels=list(policy.labels),
                output_format=policy.output_format.value, reasoning_effort=policy.reasoning_effort.value,
                owner=policy.owner, description=policy.description, author=author, created_at=now,
            ))
        else:
            version = existing
        if shadow:
            # The promoted version stays current; a text that is current already is just unchanged.
            as_shadow = version != previous
            if as_shadow and head.shadow_version != version:
                conn.execute(t.policies.update().where(t.policies.c.name == policy.name).values(
                    shadow_version=version, updated_at=now))
                if previous is not None:  # logged so the policy sync announces it: it relabels in shadow
                    conn.execute(t.policy_changes.insert().values(
                        name=policy.name, version=version, previous_version=previous, sha256=policy.sha256,
                        created=created, author=author, changed_at=now))
            return PublishResult(policy.with_version(version), version, False, created, previous, shadow=as_shadow)
        changed = previous != version
        if head.shadow_version == version:  # published as current: it is no longer a shadow
            conn.execute(t.policies.update().where(t.policies.c.name == policy.name).values(shadow_version=None))
        if changed or head.owner != policy.owner or head.description != policy.description:
            conn.execute(t.policies.update().where(t.policies.c.name == policy.name).values(
                current_version=version, owner=policy.owner, description=policy.description, updated_at=now))
        if changed:
            conn.execute(t.policy_changes.insert().values(
                name=policy.name, version=version, previous_version=previous, sha256=policy.sha256,
                created=created, author=author, changed_at=now))
    return PublishResult(policy.with_version(version), version, changed, created, previous)


def _lock_policy_row(conn: Connection, settings: Settings, policy: Policy, now) -> sa.Row:
    """The policy's head row, created if missing and locked (FOR UPDATE) so publishers serialize."""
    t = tables(settings).policies
    conn.execute(_insert_ignore(conn, t, dict(name=policy.name, current_version=None, pinned_version=None, shadow_version=None,
                                              owner=policy.owner, description=policy.description,
                                              created_at=now, updated_at=now)))
    return conn.execute(sa.select(t).where(t.c.name == policy.name).with_for_update()).one()


def _insert_ignore(conn: Connection, table: sa.Table, values: dict) -> sa.Executable:
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        from importlib import import_module

        insert = import_module(f"sqlalchemy.dialects.{name}").insert
        return insert(table).values(**values).on_conflict_do_nothing()
    # Generic: insert only when absent (a concurrent insert raises IntegrityError and is retried).
    pk = [table.c[c.name] == values[c.name] for c in table.primary_key.columns]
    src = sa.select(*[sa.literal(v, type_=table.c[k].type).label(k) for k, v in values.items()])
    return table.insert().from_select(list(values), src.where(~sa.exists().where(*pk)))


def get_policies(engine: Engine, settings: Settings, refs: Iterable[tuple[str, int | None]] | None = None) -> list[Policy]:
    """Stored policies by (name, version); version None (or refs None: every policy) = the active version."""
    t = tables(settings)
    with engine.connect() as conn:
        heads = {r.name: r for r in conn.execute(sa.select(t.policies))}
        if refs is None:
            # A policy published only as shadow so far has no active version yet.
            wanted = [(name, None) for name in sorted(heads)
                      if (heads[name].pinned_version or heads[name].current_version) is not None]
        else:
            wanted = [(name, version) for name, version in refs]
        out = []
        for name, version in wanted:
            if version is None:
                head = heads.get(name)
                if head is None or (head.pinned_version or head.current_version) is None:
                    raise WarehouseError(f"policy {name!r} is not published in the warehouse "
                                         f"(known: {', '.join(sorted(heads)) or 'none'}); run the policy sync first")
                version = head.pinned_version or head.current_version
            row = conn.execute(sa.select(t.policy_versions).where(
                t.policy_versions.c.name == name, t.policy_versions.c.version == int(version))).one_or_none()
            if row is None:
                raise WarehouseError(f"policy {name!r} has no stored version {version}")
            out.append(_to_policy(row))
    return out


def get_head(engine: Engine, settings: Settings, name: str) -> sa.Row | None:
    """The policy's row of the policies table (current, pinned and shadow version); None: not published."""
    t = tables(settings).policies
    with engine.connect() as conn:
        return conn.execute(sa.select(t).where(t.c.name == name)).one_or_none()


def version_sha(engine: Engine, settings: Settings, name: str, version: int) -> str:
    """The sha256 of a stored version's text: what evals are keyed by."""
    t = tables(settings).policy_versions
    with engine.connect() as conn:
        sha = conn.execute(sa.select(t.c.sha256).where(t.c.name == name, t.c.version == version)).scalar_one_or_none()
    if sha is None:
        raise WarehouseError(f"policy {name!r} has no stored version {version}")
    return sha


def with_stored_versions(engine: Engine, settings: Settings, policies: Sequence[Policy]) -> list[Policy]:
    """The policies, each with the version its text is stored as (as given when never published)."""
    t = tables(settings).policy_versions
    with engine.connect() as conn:
        found = {(r.name, r.sha256): r.version for r in conn.execute(
            sa.select(t.c.name, t.c.sha256, t.c.version).where(t.c.name.in_([p.name for p in policies])))}
    return [p.with_version(found[(p.name, p.sha256)]) if (p.name, p.sha256) in found else p for p in policies]


def run_policies(engine: Engine, settings: Settings) -> list[Policy]:
    """What a nightly run labels: the active version of every policy and, beside it, each policy's
    shadow version (a shadow labels as usual; only the current views and promotion tell them apart)."""
    t = tables(settings)
    with engine.connect() as conn:
        heads = conn.execute(sa.select(t.policies)).all()
    refs = {(h.name, int(v)) for h in heads for v in (h.pinned_version or h.current_version, h.shadow_version)
            if v is not None}
    return get_policies(engine, settings, sorted(refs))


def _to_policy(row: sa.Row) -> Policy:
    policy = Policy(
        name=row.name,
        text=row.text,
        labels=tuple(row.labels),
        output_format=OutputFormat(row.output_format),
        reasoning_effort=ReasoningEffort(row.reasoning_effort),
        owner=row.owner,
        description=row.description,
        version=row.version,
        sha256=row.sha256,
    )
    if policy_sha256(policy) != row.sha256:  # stored versions are immutable; catch tampering
        raise WarehouseError(f"policy {row.name!r} version {row.version}: stored text does not match its sha256")
    return policy


def pin_policy(engine: Engine, settings: Settings, name: str, version: int | None) -> None:
    """Pin a policy to one stored version (labelling and BI use it), or unpin with None."""
    t = tables(settings)
    with write_tx(engine) as conn:
        if version is not None and conn.execute(sa.select(t.policy_versions.c.version).where(
                t.policy_versions.c.name == name, t.policy_versions.c.version == version)).first() is None:
            raise WarehouseError(f"cannot pin policy {name!r} to version {version}: no such stored version")
        res = conn.execute(t.policies.update().where(t.policies.c.name == name).values(
            pinned_version=version, updated_at=utcnow()))
        if res.rowcount == 0:
            raise WarehouseError(f"cannot pin policy {name!r}: it is not published in the warehouse")


def list_versions(engine: Engine, settings: Settings, name: str) -> list[dict]:
    """Every stored version of a policy (without the text), oldest first."""
    t = tables(settings).policy_versions
    cols = [c for c in t.c if c.name != "text"]
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(*cols).where(t.c.name == name).order_by(t.c.version))]


def latest_changes(engine: Engine, settings: Settings) -> dict[str, PolicyChange]:
    """{policy name: its newest change}: how each policy's current version came to be current."""
    c = tables(settings).policy_changes
    newest = sa.select(sa.func.max(c.c.id)).group_by(c.c.name).scalar_subquery()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c).where(c.c.id.in_(newest)).order_by(c.c.name)).all()
    return {r.name: PolicyChange(r.id, r.name, r.version, r.previous_version, r.sha256, bool(r.created), r.author,
                                 r.changed_at) for r in rows}


def changes_to_announce(engine: Engine, settings: Settings, announced: Iterable[int]) -> list[PolicyChange]:
    """The changes a policy-change announcer still owes: per policy, its newest change, when that one
    replaced a version (a first version is not a change to relabel for) and is not in `announced`
    (change ids announced before). Unchanged policies never appear, however often this is asked."""
    done = {int(i) for i in announced}
    return [ch for ch in latest_changes(engine, settings).values()
            if ch.previous_version is not None and ch.id not in done]
