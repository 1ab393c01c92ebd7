"""sg_daily_policy_rates counts a verdict on its run's data-interval day (labelling day for runs
without an interval), so backfilled intervals chart on their own days.

Frozen: _NEW is the view as of this revision, _OLD the view as of 0002, restored by downgrade().

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import string

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = ("policies", "policy_versions", "runs", "work_items", "run_chunks", "verdict_staging", "verdicts",
           "verdict_analysis")
_VIEWS = ("daily_policy_rates",)

_OLD: dict[str, str] = {
    '': '''-- Verdicts per policy version and UTC day (day the verdict was labelled): counts, positives,
-- errors and rates. positive_rate = positives / labelled (error rows excluded); a positive is a
-- label >= 1 (policies label SAFE as 0).
SELECT
    policy,
    policy_version,
    CAST(labelled_at AS DATE) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts}
GROUP BY policy, policy_version, CAST(labelled_at AS DATE)
''',
    'sqlite': '''-- Verdicts per policy version and UTC day (day the verdict was labelled): counts, positives,
-- errors and rates. positive_rate = positives / labelled (error rows excluded); a positive is a
-- label >= 1 (policies label SAFE as 0).
SELECT
    policy,
    policy_version,
    date(labelled_at) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts}
GROUP BY policy, policy_version, date(labelled_at)
''',
    'postgresql': '''-- Verdicts per policy version and UTC day (day the verdict was labelled): counts, positives,
-- errors and rates. positive_rate = positives / labelled (error rows excluded); a positive is a
-- label >= 1 (policies label SAFE as 0).
SELECT
    policy,
    policy_version,
    CAST((labelled_at AT TIME ZONE 'UTC') AS DATE) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts}
GROUP BY policy, policy_version, CAST((labelled_at AT TIME ZONE 'UTC') AS DATE)
''',
}

_NEW: dict[str, str] = {
    '': '''-- Verdicts per policy version and UTC day: counts, positives, errors and rates. The day is the
-- data interval's day of the run that labelled the verdict (a backfill of last week lands on last
-- week, not on the day it ran); verdicts of runs without an interval (relabels, manual runs) count
-- on the day they were labelled. positive_rate = positives / labelled (error rows excluded); a
-- positive is a label >= 1 (policies label SAFE as 0).
SELECT
    v.policy,
    v.policy_version,
    CAST(COALESCE(r.interval_start, v.labelled_at) AS DATE) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts} v
LEFT JOIN ${runs} r ON r.id = v.run_id
GROUP BY v.policy, v.policy_version, CAST(COALESCE(r.interval_start, v.labelled_at) AS DATE)
''',
    'sqlite': '''-- Verdicts per policy version and UTC day: counts, positives, errors and rates. The day is the
-- data interval's day of the run that labelled the verdict (a backfill of last week lands on last
-- week, not on the day it ran); verdicts of runs without an interval (relabels, manual runs) count
-- on the day they were labelled. positive_rate = positives / labelled (error rows excluded); a
-- positive is a label >= 1 (policies label SAFE as 0).
SELECT
    v.policy,
    v.policy_version,
    date(COALESCE(r.interval_start, v.labelled_at)) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts} v
LEFT JOIN ${runs} r ON r.id = v.run_id
GROUP BY v.policy, v.policy_version, date(COALESCE(r.interval_start, v.labelled_at))
''',
    'postgresql': '''-- Verdicts per policy version and UTC day: counts, positives, errors and rates. The day is the
-- data interval's day of the run that labelled the verdict (a backfill of last week lands on last
-- week, not on the day it ran); verdicts of runs without an interval (relabels, manual runs) count
-- on the day they were labelled. positive_rate = positives / labelled (error rows excluded); a
-- positive is a label >= 1 (policies label SAFE as 0).
SELECT
    v.policy,
    v.policy_version,
    CAST((COALESCE(r.interval_start, v.labelled_at) AT TIME ZONE 'UTC') AS DATE) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts} v
LEFT JOIN ${runs} r ON r.id = v.run_id
GROUP BY v.policy, v.policy_version, CAST((COALESCE(r.interval_start, v.labelled_at) AT TIME ZONE 'UTC') AS DATE)
''',
}


def _names(bind) -> dict[str, str]:
    """Quoted, schema-qualified names of the tables and views, with the configured prefix (env.py
    puts the prefix and schema in the Alembic config's attributes)."""
    attrs = context.config.attributes
    prefix, schema = attrs["table_prefix"], attrs["db_schema"]
    quote = bind.dialect.identifier_preparer.quote
    qual = quote(schema) + "." if schema else ""
    return {n: qual + quote(prefix + n) for n in _TABLES + _VIEWS}


def _create(bind, names: dict[str, str], view: str, variants: dict[str, str]) -> None:
    body = string.Template(variants.get(bind.dialect.name, variants[""])).substitute(names)
    if bind.dialect.paramstyle in ("format", "pyformat"):
        body = body.replace("%", "%%")  # a literal '%' is not a driver placeholder
    bind.exec_driver_sql(f"DROP VIEW IF EXISTS {names[view]}")
    bind.exec_driver_sql(f"CREATE VIEW {names[view]} AS\n{body}")


def upgrade() -> None:
    bind = op.get_bind()
    _create(bind, _names(bind), "daily_policy_rates", _NEW)


def downgrade() -> None:
    bind = op.get_bind()
    _create(bind, _names(bind), "daily_policy_rates", _OLD)
