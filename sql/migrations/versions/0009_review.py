"""Human review: the review queue (one entry per routed verdict, with its reasons, priority, audit
sampling probability and lease), the append-only reviewer decisions, the per-version estimates table,
and sg_current_verdicts where a reviewer's decision for the same text and policy version wins
(`decided_by` = 'human', the model's label kept as `model_label`).

Self-contained: its DDL and view SQL are written here (views as of this revision), nothing is
imported from safeguard_flow.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import string

import sqlalchemy as sa
from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

# The same text as sql/views/current_verdicts.sql at this revision (a test keeps the head's equal).
CURRENT_VERDICTS_0009 = '''-- Current verdict per (source, content_id, policy), for BI.
-- Active version of a policy = its pinned_version if pinned, else its current_version (the most
-- recently published text). Each item shows the verdict of the newest version <= the active one:
-- while a relabel for a new version is still running, items it has not reached yet keep their
-- previous version's verdict, flagged is_active_version = 0. Filter is_active_version = 1 for a
-- strict "active version only" view.
-- A reviewer's decision wins: where one exists for the same text (content_hash) and policy version,
-- label is the newest such decision and decided_by = 'human' (else the verdict's own 'model' or
-- 'cascade'); model_label keeps what the model said, reviewer and reviewed_at who decided and when.
WITH ranked AS (
    SELECT
        v.source,
        v.content_id,
        v.policy,
        v.policy_version,
        COALESCE(p.pinned_version, p.current_version) AS active_version,
        v.content_hash,
        v.label,
        v.category,
        v.rationale,
        v.confidence,
        v.parse_status,
        v.error,
        v.model,
        v.run_id,
        v.labelled_at,
        v.decided_by,
        ROW_NUMBER() OVER (
            PARTITION BY v.source, v.content_id, v.policy
            ORDER BY v.policy_version DESC
        ) AS rn
    FROM ${verdicts} v
    JOIN ${policies} p ON p.name = v.policy
    WHERE v.policy_version <= COALESCE(p.pinned_version, p.current_version)
),
newest_decision AS (
    SELECT policy, policy_version, content_hash, MAX(id) AS id
    FROM ${review_decisions}
    WHERE decision IS NOT NULL
    GROUP BY policy, policy_version, content_hash
)
SELECT
    r.source,
    r.content_id,
    r.policy,
    r.policy_version,
    r.active_version,
    CASE WHEN r.policy_version = r.active_version THEN 1 ELSE 0 END AS is_active_version,
    r.content_hash,
    COALESCE(d.decision, r.label) AS label,
    CASE WHEN COALESCE(d.decision, r.label) IS NULL THEN NULL
         WHEN COALESCE(d.decision, r.label) >= 1 THEN 1 ELSE 0 END AS is_positive,
    r.category,
    r.rationale,
    r.confidence,
    r.parse_status,
    r.error,
    r.model,
    r.run_id,
    r.labelled_at,
    CASE WHEN d.id IS NULL THEN r.decided_by ELSE 'human' END AS decided_by,
    r.label AS model_label,
    d.reviewer,
    d.decided_at AS reviewed_at
FROM ranked r
LEFT JOIN newest_decision n
    ON n.policy = r.policy AND n.policy_version = r.policy_version AND n.content_hash = r.content_hash
LEFT JOIN ${review_decisions} d ON d.id = n.id
WHERE r.rn = 1
'''

# As revision 0002 created it (what downgrade restores).
CURRENT_VERDICTS_0002 = '''-- Current verdict per (source, content_id, policy), for BI.
-- Active version of a policy = its pinned_version if pinned, else its current_version (the most
-- recently published text). Each item shows the verdict of the newest version <= the active one:
-- while a relabel for a new version is still running, items it has not reached yet keep their
-- previous version's verdict, flagged is_active_version = 0. Filter is_active_version = 1 for a
-- strict "active version only" view.
WITH ranked AS (
    SELECT
        v.source,
        v.content_id,
        v.policy,
        v.policy_version,
        COALESCE(p.pinned_version, p.current_version) AS active_version,
        v.content_hash,
        v.label,
        v.category,
        v.rationale,
        v.confidence,
        v.parse_status,
        v.error,
        v.model,
        v.run_id,
        v.labelled_at,
        ROW_NUMBER() OVER (
            PARTITION BY v.source, v.content_id, v.policy
            ORDER BY v.policy_version DESC
        ) AS rn
    FROM ${verdicts} v
    JOIN ${policies} p ON p.name = v.policy
    WHERE v.policy_version <= COALESCE(p.pinned_version, p.current_version)
)
SELECT
    source,
    content_id,
    policy,
    policy_version,
    active_version,
    CASE WHEN policy_version = active_version THEN 1 ELSE 0 END AS is_active_version,
    content_hash,
    label,
    CASE WHEN label IS NULL THEN NULL WHEN label >= 1 THEN 1 ELSE 0 END AS is_positive,
    category,
    rationale,
    confidence,
    parse_status,
    error,
    model,
    run_id,
    labelled_at
FROM ranked
WHERE rn = 1
'''


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def _qualified(name: str) -> str:
    prefix, schema = _names()
    quote = op.get_bind().dialect.identifier_preparer.quote
    return (quote(schema) + "." if schema else "") + quote(prefix + name)


def _replace_current_verdicts(sql: str) -> None:
    names = {n: _qualified(n) for n in ("verdicts", "policies", "review_decisions")}
    view = _qualified("current_verdicts")
    op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(f"CREATE VIEW {view} AS\n{string.Template(sql).substitute(names)}")


def _item() -> list[sa.Column]:
    return [sa.Column("source", sa.String(64), nullable=False),
            sa.Column("content_id", sa.String(200), nullable=False),
            sa.Column("policy", sa.String(64), nullable=False),
            sa.Column("policy_version", sa.Integer, nullable=False),
            sa.Column("content_hash", sa.String(64), nullable=False)]


def upgrade() -> None:
    p, s = _names()
    op.create_table(
        p + "review_queue",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *_item(),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("model_label", sa.Integer),
        sa.Column("confidence", sa.Float),
        sa.Column("parse_status", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(16), nullable=False, server_default="model"),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("audit", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("sampling_prob", sa.Float, nullable=False),
        sa.Column("stratum", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("leased_by", sa.String(200)),
        sa.Column("lease_until", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decided_at", TS),
        sa.UniqueConstraint("source", "content_id", "policy", "policy_version", "content_hash",
                            name=f"{p}uq_review_queue_item"),
        schema=s,
    )
    op.create_index(f"{p}ix_review_queue_next", p + "review_queue", ["policy", "status", "priority"], schema=s)
    op.create_index(f"{p}ix_review_queue_audit", p + "review_queue", ["policy", "policy_version", "audit"], schema=s)
    op.create_table(
        p + "review_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("queue_id", sa.Integer),
        *_item(),
        sa.Column("decision", sa.Integer),
        sa.Column("model_label", sa.Integer),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("decided_at", TS, nullable=False),
        schema=s,
    )
    op.create_index(f"{p}ix_review_decisions_text", p + "review_decisions",
                    ["policy", "policy_version", "content_hash", "id"], schema=s)
    op.create_index(f"{p}ix_review_decisions_queue", p + "review_decisions", ["queue_id"], schema=s)
    op.create_table(
        p + "review_estimates",
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("decisions", sa.Integer, nullable=False),
        sa.Column("agreement", sa.Float),
        sa.Column("audit_items", sa.Integer, nullable=False),
        sa.Column("audit_decided", sa.Integer, nullable=False),
        *(sa.Column(f"{m}{x}", sa.Float) for m in ("prevalence", "precision", "recall") for x in ("", "_low", "_high")),
        sa.Column("computed_at", TS, nullable=False),
        schema=s,
    )
    _replace_current_verdicts(CURRENT_VERDICTS_0009)


def downgrade() -> None:
    p, s = _names()
    _replace_current_verdicts(CURRENT_VERDICTS_0002)
    op.drop_table(p + "review_estimates", schema=s)
    op.drop_index(f"{p}ix_review_decisions_queue", p + "review_decisions", schema=s)
    op.drop_index(f"{p}ix_review_decisions_text", p + "review_decisions", schema=s)
    op.drop_table(p + "review_decisions", schema=s)
    op.drop_index(f"{p}ix_review_queue_audit", p + "review_queue", schema=s)
    op.drop_index(f"{p}ix_review_queue_next", p + "review_queue", schema=s)
    op.drop_table(p + "review_queue", schema=s)
