"""Initial warehouse tables: policies, policy versions, runs, work list, staging, verdicts, audit.

Frozen: the DDL below is the schema as of this revision; later changes are new revisions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _prefix_schema() -> tuple[str, str | None]:
    """The configured table prefix and schema (sql/migrations/env.py puts them in the config)."""
    attrs = context.config.attributes
    return attrs["table_prefix"], attrs["db_schema"]


def _verdict_columns() -> list[sa.Column]:
    return [
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.Integer),
        sa.Column("category", sa.Text),
        sa.Column("rationale", sa.Text),
        sa.Column("confidence", sa.Float),
        sa.Column("rule_ids", sa.JSON),
        sa.Column("parse_status", sa.String(20), nullable=False),
        sa.Column("raw_output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("model", sa.String(200), nullable=False, server_default=""),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("extra", sa.JSON),
        sa.Column("labelled_at", TS, nullable=False),
        sa.Column("extracted_at", TS, nullable=False),
    ]


def upgrade() -> None:
    p, s = _prefix_schema()
    op.create_table(
        p + "policies",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("current_version", sa.Integer),
        sa.Column("pinned_version", sa.Integer),
        sa.Column("owner", sa.String(200), nullable=False, server_default=""),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        schema=s,
    )
    op.create_table(
        p + "policy_versions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("output_format", sa.String(20), nullable=False),
        sa.Column("reasoning_effort", sa.String(10), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False, server_default=""),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("author", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("name", "sha256", name=p + "uq_policy_versions_sha256"),
        schema=s,
    )
    op.create_table(
        p + "runs",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("interval_start", TS),
        sa.Column("interval_end", TS),
        sa.Column("policy_refs", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON),
        sa.Column("sources", sa.JSON),
        *(sa.Column(c, sa.Integer) for c in ("items", "unique_texts", "skipped_unchanged", "duplicate_ids", "chunks",
                                             "verdicts", "errors", "positives", "inserted", "updated", "unchanged")),
        sa.Column("prompt_tokens", sa.BigInteger),
        sa.Column("completion_tokens", sa.BigInteger),
        sa.Column("model", sa.String(200)),
        sa.Column("engine", sa.String(50)),
        sa.Column("validation", sa.JSON),
        sa.Column("warnings", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *(sa.Column(c, TS) for c in ("extract_started_at", "extract_finished_at", "label_started_at",
                                     "label_finished_at", "validated_at", "published_at")),
        schema=s,
    )
    op.create_index(p + "ix_runs_created_at", p + "runs", ["created_at"], schema=s)
    op.create_table(
        p + "work_items",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("item_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bucket", sa.Integer, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("content_id", sa.String(200), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("problem", sa.Text),
        schema=s,
    )
    op.create_index(p + "ix_work_items_bucket", p + "work_items", ["run_id", "bucket"], schema=s)
    op.create_table(
        p + "run_chunks",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bucket_lo", sa.Integer, nullable=False),
        sa.Column("bucket_hi", sa.BigInteger, nullable=False),
        sa.Column("items", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("verdicts", sa.Integer),
        sa.Column("errors", sa.Integer),
        sa.Column("positives", sa.Integer),
        sa.Column("prompt_tokens", sa.BigInteger),
        sa.Column("completion_tokens", sa.BigInteger),
        sa.Column("finished_at", TS),
        schema=s,
    )
    op.create_table(
        p + "verdict_staging",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        *_verdict_columns(),
        schema=s,
    )
    op.create_index(p + "ix_verdict_staging_chunk", p + "verdict_staging", ["run_id", "chunk_no"], schema=s)
    op.create_table(
        p + "verdicts",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        *_verdict_columns(),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("published_at", TS, nullable=False),
        schema=s,
    )
    op.create_index(p + "ix_verdicts_policy_labelled", p + "verdicts", ["policy", "policy_version", "labelled_at"],
                    schema=s)
    op.create_index(p + "ix_verdicts_run", p + "verdicts", ["run_id"], schema=s)
    op.create_table(
        p + "verdict_analysis",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("analysis", sa.Text),
        sa.Column("raw_output", sa.Text),
        sa.Column("labelled_at", TS, nullable=False),
        schema=s,
    )


def downgrade() -> None:
    p, s = _prefix_schema()
    for table in ("verdict_analysis", "verdicts", "verdict_staging", "run_chunks", "work_items", "runs",
                  "policy_versions", "policies"):
        op.drop_table(p + table, schema=s)
