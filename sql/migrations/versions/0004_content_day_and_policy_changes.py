"""Verdicts keep their content's own updated_at; daily rates count a verdict on its content's day
(with labelling-day columns for what was labelled when); a policy change log with the version each
change replaced; SQLite timestamps carry their zone (``+00:00``), as PostgreSQL's always did.

Self-contained: its SQL is written out here (views as of this revision), nothing is imported from
safeguard_flow, so later changes to the library or to sql/views never rewrite this step.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

# Every timestamp column of revision 0003, for the SQLite text rewrite.
TIMESTAMPS_0003 = {
    "policies": ("created_at", "updated_at"),
    "policy_versions": ("created_at",),
    "runs": ("interval_start", "interval_end", "created_at", "updated_at", "extract_started_at",
             "extract_finished_at", "label_started_at", "label_finished_at", "validated_at", "published_at"),
    "run_chunks": ("finished_at",),
    "verdict_staging": ("labelled_at", "extracted_at"),
    "verdicts": ("labelled_at", "extracted_at", "published_at"),
    "verdict_analysis": ("labelled_at",),
}
CONTENT_DAY_TABLES = ("work_items", "verdict_staging", "verdicts")

_RATE_COLUMNS = """
    CAST(SUM(CASE WHEN d.counted = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN d.counted = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN d.counted = 1 AND d.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(d.counted), 0) AS error_rate,"""

# {day} / {labelled_day}: the dialect's "UTC day of" expressions.
RATES_0004 = """-- Verdicts per policy version and UTC day: counts, positives, errors and rates.
-- day is the content's own day: the UTC day of the source row's updated_at the verdict labelled
-- (content_updated_at), so every version of a policy charts over the days its content arrived and a
-- relabel lands where its content is, not on the day it ran. Verdicts without content_updated_at
-- (labelled before revision 0004, or a source without updated_at_column) count on their run's
-- data-interval day, else on the day they were labelled.
-- labelling_day_*: the verdicts labelled on that UTC day, whatever their content's day (how much
-- labelling happened when; days with labelling only have verdicts = 0).
-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.
WITH d AS (
    SELECT v.policy, v.policy_version, {day} AS day,
           1 AS counted, 0 AS labelled_then, v.parse_status, v.label
    FROM ${verdicts} v
    LEFT JOIN ${runs} r ON r.id = v.run_id
    UNION ALL
    SELECT v.policy, v.policy_version, {labelled_day} AS day,
           0 AS counted, 1 AS labelled_then, v.parse_status, v.label
    FROM ${verdicts} v
)
SELECT
    d.policy,
    d.policy_version,
    d.day,
    SUM(d.counted) AS verdicts,
    SUM(CASE WHEN d.counted = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN d.counted = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN d.counted = 1 AND d.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,""" + _RATE_COLUMNS + """
    SUM(d.labelled_then) AS labelling_day_verdicts,
    SUM(CASE WHEN d.labelled_then = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS labelling_day_positives,
    CAST(SUM(CASE WHEN d.labelled_then = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN d.labelled_then = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END), 0)
        AS labelling_day_positive_rate
FROM d
GROUP BY d.policy, d.policy_version, d.day
"""

RATES_0003 = """-- Verdicts per policy version and UTC day: counts, positives, errors and rates. The day is the
-- data interval's day of the run that labelled the verdict (a backfill of last week lands on last
-- week, not on the day it ran); verdicts of runs without an interval (relabels, manual runs) count
-- on the day they were labelled. positive_rate = positives / labelled (error rows excluded); a
-- positive is a label >= 1 (policies label SAFE as 0).
SELECT
    v.policy,
    v.policy_version,
    {day} AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts} v
LEFT JOIN ${runs} r ON r.id = v.run_id
GROUP BY v.policy, v.policy_version, {day}
"""


def _utc_day(dialect: str, expr: str) -> str:
    if dialect == "sqlite":
        return f"date({expr})"
    if dialect == "postgresql":
        return f"CAST(({expr} AT TIME ZONE 'UTC') AS DATE)"
    return f"CAST({expr} AS DATE)"


def _names() -> tuple[str, str | None]:
    settings = context.config.attributes["settings"]
    return settings.warehouse.table_prefix, settings.warehouse.db_schema


def _qualified(name: str) -> str:
    prefix, schema = _names()
    quote = op.get_bind().dialect.identifier_preparer.quote
    return (quote(schema) + "." if schema else "") + quote(prefix + name)


def _run(sql: str) -> None:
    bind = op.get_bind()
    if bind.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("%", "%%")  # a literal '%' is not a driver placeholder
    bind.exec_driver_sql(sql)


def _create_rates_view(template: str, day_expr: str) -> None:
    dialect = op.get_bind().dialect.name
    body = template.replace("${verdicts}", _qualified("verdicts")).replace("${runs}", _qualified("runs"))
    body = body.format(day=_utc_day(dialect, day_expr), labelled_day=_utc_day(dialect, "v.labelled_at"))
    _run(f"DROP VIEW IF EXISTS {_qualified('daily_policy_rates')}")
    _run(f"CREATE VIEW {_qualified('daily_policy_rates')} AS\n{body}")


def upgrade() -> None:
    prefix, schema = _names()
    dialect = op.get_bind().dialect.name
    _run(f"DROP VIEW IF EXISTS {_qualified('daily_policy_rates')}")
    if dialect == "sqlite":  # UTC wall time -> ISO text with the zone (fixed width: text order = time order)
        for table, cols in TIMESTAMPS_0003.items():
            for col in cols:
                _run(f"UPDATE {_qualified(table)} SET {col} = CASE WHEN length({col}) = 19 "
                     f"THEN replace({col}, 'T', ' ') || '.000000+00:00' ELSE replace({col}, 'T', ' ') || '+00:00' END "
                     f"WHERE {col} IS NOT NULL AND {col} NOT LIKE '%+00:00'")
    for table in CONTENT_DAY_TABLES:
        op.add_column(prefix + table, sa.Column("content_updated_at", TS), schema=schema)
    op.create_table(
        prefix + "policy_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous_version", sa.Integer),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created", sa.Boolean, nullable=False),
        sa.Column("author", sa.String(200), nullable=False, server_default=""),
        sa.Column("changed_at", TS, nullable=False),
        schema=schema,
    )
    op.create_index(prefix + "ix_policy_changes_name", prefix + "policy_changes", ["name", "id"], schema=schema)
    # Each policy's current version as its first known change: nothing published before is announced again.
    _run(f"INSERT INTO {_qualified('policy_changes')} (name, version, previous_version, sha256, created, author, changed_at) "
         f"SELECT p.name, p.current_version, NULL, pv.sha256, TRUE, 'migration 0004', p.updated_at "
         f"FROM {_qualified('policies')} p JOIN {_qualified('policy_versions')} pv "
         f"ON pv.name = p.name AND pv.version = p.current_version ORDER BY p.name")
    _create_rates_view(RATES_0004, "COALESCE(v.content_updated_at, r.interval_start, v.labelled_at)")


def downgrade() -> None:
    prefix, schema = _names()
    dialect = op.get_bind().dialect.name
    _run(f"DROP VIEW IF EXISTS {_qualified('daily_policy_rates')}")
    op.drop_index(prefix + "ix_policy_changes_name", table_name=prefix + "policy_changes", schema=schema)
    op.drop_table(prefix + "policy_changes", schema=schema)
    for table in CONTENT_DAY_TABLES:
        _run(f"ALTER TABLE {_qualified(table)} DROP COLUMN content_updated_at")
    if dialect == "sqlite":
        for table, cols in TIMESTAMPS_0003.items():
            for col in cols:
                _run(f"UPDATE {_qualified(table)} SET {col} = substr({col}, 1, length({col}) - 6) "
                     f"WHERE {col} LIKE '%+00:00'")
    _create_rates_view(RATES_0003, "COALESCE(r.interval_start, v.labelled_at)")
