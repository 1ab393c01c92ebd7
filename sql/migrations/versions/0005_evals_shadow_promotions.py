"""Evaluations, shadow versions and promotions: eval tables, sg_policies.shadow_version, the promotion
log, and the policy_version_diff view.

Self-contained: its DDL and view SQL are written here (not read from sql/views or the library), so
this revision means the same thing whatever the code looks like later.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

# The same text as sql/views/policy_version_diff.sql (a test keeps them equal); {verdicts} is the
# quoted, schema-qualified verdict table.
POLICY_VERSION_DIFF = """-- What a new policy version changes, per policy and pair of versions (old < new): the content both
-- versions labelled (same source and content id), how many verdicts flipped 0 -> 1 and 1 -> 0, how
-- many involve an error on either side, and the flip rate over the pairs both labelled without
-- error. `safeguard-flow policies diff` and the promotion gate compute the same figures.
SELECT
    a.policy,
    a.policy_version AS old_version,
    b.policy_version AS new_version,
    COUNT(*) AS compared,
    SUM(CASE WHEN a.label IS NOT NULL AND b.label IS NOT NULL THEN 1 ELSE 0 END) AS both_labelled,
    SUM(CASE WHEN a.label = 0 AND b.label >= 1 THEN 1 ELSE 0 END) AS to_positive,
    SUM(CASE WHEN a.label >= 1 AND b.label = 0 THEN 1 ELSE 0 END) AS to_safe,
    SUM(CASE WHEN a.label IS NULL OR b.label IS NULL THEN 1 ELSE 0 END) AS with_error,
    SUM(CASE WHEN a.content_hash <> b.content_hash THEN 1 ELSE 0 END) AS content_edited,
    CAST(SUM(CASE WHEN (a.label = 0 AND b.label >= 1) OR (a.label >= 1 AND b.label = 0) THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN a.label IS NOT NULL AND b.label IS NOT NULL THEN 1 ELSE 0 END), 0) AS flip_rate
FROM {verdicts} a
JOIN {verdicts} b
    ON b.source = a.source
    AND b.content_id = a.content_id
    AND b.policy = a.policy
    AND b.policy_version > a.policy_version
GROUP BY a.policy, a.policy_version, b.policy_version
"""


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def _qualified(name: str) -> str:
    prefix, schema = _names()
    quote = op.get_bind().dialect.identifier_preparer.quote
    return (quote(schema) + "." if schema else "") + quote(prefix + name)


def upgrade() -> None:
    p, s = _names()
    op.add_column(p + "policies", sa.Column("shadow_version", sa.Integer), schema=s)
    op.create_table(
        p + "evals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(500), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("rows_scored", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("engine", sa.String(50), nullable=False),
        sa.Column("policy_refs", sa.JSON, nullable=False),
        sa.Column("label_map", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("output_dir", sa.Text),
        sa.Column("created_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        schema=s,
    )
    op.create_index(p + "ix_evals_dataset", p + "evals", ["dataset", "created_at"], schema=s)
    op.create_table(
        p + "eval_scores",
        sa.Column("eval_id", sa.String(64), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        *(sa.Column(c, sa.Integer, nullable=False) for c in ("tp", "fp", "fn", "tn", "errors", "skipped")),
        *(sa.Column(c, sa.Float, nullable=False) for c in ("precision", "recall", "f1", "f1_low", "f1_high")),
        schema=s,
    )
    op.create_index(p + "ix_eval_scores_sha", p + "eval_scores", ["policy", "policy_sha256"], schema=s)
    op.create_table(
        p + "eval_predictions",
        sa.Column("eval_id", sa.String(64), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("gold", sa.Integer, nullable=False),
        sa.Column("label", sa.Integer),
        sa.Column("parse_status", sa.String(20), nullable=False),
        schema=s,
    )
    op.create_table(
        p + "policy_promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("problems", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        schema=s,
    )
    op.create_index(p + "ix_policy_promotions_policy", p + "policy_promotions", ["policy", "created_at"], schema=s)
    view = _qualified("policy_version_diff")
    op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(f"CREATE VIEW {view} AS\n{POLICY_VERSION_DIFF.format(verdicts=_qualified('verdicts'))}")


def downgrade() -> None:
    p, s = _names()
    op.execute(f"DROP VIEW IF EXISTS {_qualified('policy_version_diff')}")
    for table in ("policy_promotions", "eval_predictions", "eval_scores", "evals"):
        op.drop_table(p + table, schema=s)
    # A plain DROP COLUMN (SQLite >= 3.35): a batch table copy would break the views on sg_policies.
    op.drop_column(p + "policies", "shadow_version", schema=s)
