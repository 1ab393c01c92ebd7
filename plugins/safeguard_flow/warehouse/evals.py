"""Stored evaluations: one row per `safeguard-flow eval`, its per-policy scores, and the paired
predictions the version diff tests with McNemar's test; and eval datasets kept as warehouse tables.

An evaluated policy is identified by its sha256 (the text evaluated), so an eval run on a policy
file before it was published still counts for the version that text became.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from safeguard_flow.domain.verdicts import Verdict
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.db import bulk_insert, make_engine, utcnow, write_tx
from safeguard_flow.warehouse.schema import tables

if TYPE_CHECKING:  # policy_quality.datasets reads tables through this module
    from safeguard_flow.policy_quality.datasets import LabelledRow


@dataclass(frozen=True)
class EvalScore:
    eval_id: str
    created_at: Any
    dataset: str
    dataset_sha256: str
    policy: str
    policy_version: int | None
    policy_sha256: str
    f1: float
    f1_low: float
    f1_high: float
    precision: float
    recall: float
    errors: int
    model: str


def store_eval(engine: Engine, settings: Settings, metrics: Mapping[str, Any], rows: list[LabelledRow],
               verdicts: Iterable[Verdict], *, dataset: str, dataset_sha256: str, label_map: Mapping[str, str],
               output_dir: str | None = None, created_by: str = "") -> str:
    """Record one eval (metrics.json as written) with its scores and predictions; returns its id."""
    t = tables(settings)
    now = utcnow()
    eval_id = f"eval-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    by_key = {(v.content_id, v.policy): v for v in verdicts}
    refs = metrics["policy_versions"]
    predictions = []
    for policy in metrics["policies"]:
        for row in rows:
            gold = row.gold.get(policy)
            if gold is None:
                continue
            v = by_key.get((row.content_id, policy))
            label = None if v is None or v.is_error or v.label is None else int(v.label >= 1)
            predictions.append(dict(eval_id=eval_id, policy=policy, content_id=row.content_id, gold=gold, label=label,
                                    parse_status=v.parse_status if v is not None else "missing"))
    with write_tx(engine) as conn:
        conn.execute(t.evals.insert().values(
            id=eval_id, dataset=dataset, dataset_sha256=dataset_sha256, rows_scored=int(metrics["rows_scored"]),
            model=str(metrics["model"]), engine=str(metrics["engine"]), policy_refs=dict(refs),
            label_map=dict(label_map), metrics=dict(metrics), output_dir=output_dir, created_by=created_by,
            created_at=now))
        conn.execute(t.eval_scores.insert(), [dict(
            eval_id=eval_id, policy=policy, policy_version=refs[policy].get("version"),
            policy_sha256=refs[policy]["sha256"], tp=m["tp"], fp=m["fp"], fn=m["fn"], tn=m["tn"], errors=m["errors"],
            skipped=m["skipped"], precision=m["precision"], recall=m["recall"], f1=m["f1"],
            f1_low=m["f1_ci"][0], f1_high=m["f1_ci"][1]) for policy, m in metrics["policies"].items()])
        bulk_insert(conn, t.eval_predictions, predictions)
    return eval_id


def list_evals(engine: Engine, settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    t = tables(settings).evals
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit))
        return [dict(r._mapping) for r in rows]


def get_eval(engine: Engine, settings: Settings, eval_id: str) -> dict[str, Any] | None:
    t = tables(settings).evals
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.id == eval_id)).one_or_none()
    return None if row is None else dict(row._mapping)


def scores_for(engine: Engine, settings: Settings, policy: str, policy_sha256: str,
               dataset: str | None = None) -> list[EvalScore]:
    """Evals of one policy text, newest first (optionally on one dataset)."""
    t = tables(settings)
    s, e = t.eval_scores, t.evals
    q = (sa.select(s, e.c.created_at, e.c.dataset, e.c.dataset_sha256, e.c.model)
         .select_from(s.join(e, e.c.id == s.c.eval_id))
         .where(s.c.policy == policy, s.c.policy_sha256 == policy_sha256)
         .order_by(e.c.created_at.desc(), e.c.id.desc()))
    if dataset is not None:
        q = q.where(e.c.dataset == dataset)
    with engine.connect() as conn:
        return [EvalScore(r.eval_id, r.created_at, r.dataset, r.dataset_sha256, r.policy, r.policy_version,
                          r.policy_sha256, r.f1, r.f1_low, r.f1_high, r.precision, r.recall, r.errors, r.model)
                for r in conn.execute(q)]


def predictions(engine: Engine, settings: Settings, eval_id: str, policy: str) -> dict[str, tuple[int, int | None]]:
    """content_id -> (gold, predicted label or None for an error) of one policy in one eval."""
    t = tables(settings).eval_predictions
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.content_id, t.c.gold, t.c.label)
                            .where(t.c.eval_id == eval_id, t.c.policy == policy))
        return {r.content_id: (r.gold, r.label) for r in rows}


def dataset_table_rows(settings: Settings, dataset: str, schema: str | None, table: str, columns: Iterable[str],
                       order_by: str) -> list[dict[str, Any]]:
    """The `columns` of a labelled dataset kept as a table of the configured warehouse, ordered by
    `order_by`. Names are checked plain identifiers (policy_quality.datasets) and bound by reflection."""
    engine = make_engine(settings)
    try:
        try:
            t = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=engine)
        except sa.exc.NoSuchTableError:
            raise FileNotFoundError(f"--dataset: {dataset!r} is neither a file nor a table of the warehouse") from None
        cols = sorted(set(columns))
        missing = [c for c in cols if c not in t.c]
        if missing:
            raise ValueError(f"--dataset table {dataset}: no column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(t.c.keys())})")
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(*[t.c[c] for c in cols]).order_by(t.c[order_by]))]
    finally:
        engine.dispose()
