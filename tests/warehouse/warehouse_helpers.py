"""Warehouse test helpers (imported by the tests and tests/warehouse/conftest.py).

The labelling step uses `labelling.label_items` with a keyword-rule engine: these tests are about
the warehouse (what gets extracted, staged, published), not about the model. The same path runs
with the real vLLM engine in the ray/integration tests.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from safeguard_flow.engines.base import Completion
from safeguard_flow.labelling.loop import label_items
from safeguard_flow.warehouse import extract, policy_store, publish, runs, schema, staging
from safeguard_flow.warehouse.errors import RunNotFound
from safeguard_flow.warehouse.runs import RunStatus

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


class KeywordModel:
    """Deterministic stand-in for the model: violation when the text mentions 'buy'; counts requests."""

    model_name = "keyword-rules"

    def __init__(self, keyword: str = "buy"):
        self.keyword = keyword
        self.requests: list[str] = []

    def complete(self, requests):
        self.requests.extend(r.content for r in requests)
        out = []
        for r in requests:
            if "garbage" in r.content:  # an answer that cannot be parsed
                out.append(Completion(text="I think maybe", prompt_tokens=20, completion_tokens=3))
                continue
            hit = int(self.keyword in r.content.lower())
            extra = ', "rule_ids": ["R1"], "confidence": 0.9' if hit else ""
            text = f'{{"violation": {hit}, "policy_category": "{"promo" if hit else "none"}", "rationale": "rule"{extra}}}'
            out.append(Completion(text=text, analysis="thinking...", prompt_tokens=20, completion_tokens=5))
        return out

    def close(self):
        pass


@dataclass
class Warehouse:
    settings: object
    engine: sa.Engine
    policies: list = field(default_factory=list)
    posts: sa.Table | None = None

    # -- source table -------------------------------------------------------------------------
    def create_posts(self, name: str = "posts", id_type=sa.String(300)) -> sa.Table:
        md = sa.MetaData()
        table = sa.Table(name, md, sa.Column("id", id_type), sa.Column("body", sa.Text),
                         sa.Column("updated_at", sa.DateTime), sa.Column("lang", sa.String(50)))
        md.create_all(self.engine)
        self.posts = table
        return table

    def add_posts(self, rows, table: sa.Table | None = None) -> None:
        """rows: (id, body, updated_at[, lang]); aware datetimes are stored as naive UTC."""
        table = table if table is not None else self.posts
        values = []
        for r in rows:
            ts = r[2].astimezone(dt.timezone.utc).replace(tzinfo=None) if r[2] is not None else None
            values.append(dict(id=r[0], body=r[1], updated_at=ts, lang=r[3] if len(r) > 3 else "en"))
        with self.engine.begin() as conn:
            conn.execute(table.insert(), values)

    def edit_post(self, content_id, body, updated_at) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.posts.update().where(self.posts.c.id == content_id).values(
                body=body, updated_at=updated_at.astimezone(dt.timezone.utc).replace(tzinfo=None)))

    # -- pipeline steps --------------------------------------------------------------------------
    def nightly(self, start=T0, end=T0 + DAY, run_id=None, policies=None) -> str:
        run_id = runs.create_run(self.engine, self.settings, "nightly", policies or self.policies, start, end,
                                 run_id=run_id)
        extract.extract_interval(self.engine, self.settings, run_id, start, end)
        return run_id

    def label(self, run_id: str, model: KeywordModel | None = None) -> KeywordModel:
        model = model or KeywordModel()
        refs = runs.get_run(self.engine, self.settings, run_id).policy_refs
        policies = policy_store.get_policies(self.engine, self.settings, refs)
        for chunk in staging.pending_chunks(self.engine, self.settings, run_id):
            items = staging.read_chunk(self.engine, self.settings, run_id, chunk)
            staging.write_chunk(self.engine, self.settings, run_id, chunk, label_items(model, items, policies))
        self._labelled(run_id)
        return model

    def _labelled(self, run_id: str) -> None:
        """Every chunk staged: the run is labelled (what the label job's end does)."""
        if not staging.pending_chunks(self.engine, self.settings, run_id):
            staging.finish_labelling(self.engine, self.settings, run_id)

    def publish(self, run_id: str, validate: bool = True, **kw) -> dict:
        """Publish the run; `validate` first passes it through the gate without running GX (these tests
        are about the warehouse; the real gate runs in tests/airflow/test_quality_gate.py)."""
        if validate:
            self.validate(run_id)
        return publish.publish_run(self.engine, self.settings, run_id, **kw)

    def validate(self, run_id: str) -> None:
        try:
            run = runs.get_run(self.engine, self.settings, run_id)
        except RunNotFound:
            return  # publish_run says so
        if run.extracted:
            self._labelled(run_id)
        if runs.get_run(self.engine, self.settings, run_id).status is RunStatus.LABELLED:
            runs.transition(self.engine, self.settings, run_id, RunStatus.VALIDATED,
                            validation={"success": True, "summary": "test helper: gate not run"})

    def run_all(self, start=T0, end=T0 + DAY, run_id=None, policies=None) -> str:
        run_id = self.nightly(start, end, run_id, policies)
        self.label(run_id)
        self.publish(run_id)
        return run_id

    # -- reading back ----------------------------------------------------------------------------
    def verdicts(self, where=None) -> list[dict]:
        v = schema.tables(self.settings).verdicts
        q = sa.select(v).order_by(v.c.source, v.c.content_id, v.c.policy, v.c.policy_version)
        if where is not None:
            q = q.where(where)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def query(self, sql: str, **params) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def view(self, name: str, order_by: str = "") -> list[dict]:
        qualified = schema.qualified_names(self.engine.dialect, self.settings.warehouse.table_prefix,
                                           self.settings.warehouse.db_schema)[name]
        return self.query(f"SELECT * FROM {qualified}" + (f" ORDER BY {order_by}" if order_by else ""))


SOURCE = {"name": "posts", "table": "posts", "id_column": "id", "text_column": "body", "updated_at_column": "updated_at"}


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)
