"""BI views fast at 10M verdicts: each verdict stores its content day; daily rates read it.

- `content_day` (DATE) on staged and published verdicts: the UTC day of the content's updated_at,
  else of its run's data interval, else of its labelling (the day sg_daily_policy_rates has always
  charted on, computed once when the verdict is staged instead of per query through a join with the
  runs table). Existing rows are filled here.
- sg_daily_policy_rates groups by it, and an index on (policy, content_day, ...) covers the view, so
  "one policy, last 30 days" reads 30 days of index, not the table. The labelling-day columns move
  to their own view, sg_daily_labelling, so a day with labelling only no longer shows in the rates
  as a row with zero verdicts and empty rates.
- sg_current_verdicts without a window over every version: the active version's verdicts pass as
  they are, an older version's only when no newer one up to the active exists (a primary-key lookup),
  so a filter on policy and labelled_at reaches the new index on (policy, labelled_at).

Self-contained: its DDL and view SQL are written here (views as of this revision). It runs between
0010 and 0011 (0011 comments the views; a view recreated after it would lose its comments).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import string

import sqlalchemy as sa
from alembic import context, op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None

# The same texts as sql/views/<name>.sql at this revision (a test keeps the head's equal).
CURRENT_VERDICTS_0012 = '-- Current verdict per (source, content_id, policy), for BI.\n-- Active version of a policy = its pinned_version if pinned, else its current_version (the most\n-- recently published text). Each item shows the verdict of the newest version <= the active one:\n-- while a relabel for a new version is still running, items it has not reached yet keep their\n-- previous version\'s verdict, flagged is_active_version = 0. Filter is_active_version = 1 for a\n-- strict "active version only" view.\n-- A reviewer\'s decision wins: where one exists for the same text (content_hash) and policy version,\n-- label is the newest such decision and decided_by = \'human\' (else the verdict\'s own \'model\' or\n-- \'cascade\'); model_label keeps what the model said, reviewer and reviewed_at who decided and when.\n-- Written so that a filter on policy and labelled_at reaches the verdict table\'s indexes: an older\n-- version\'s verdict is looked up by primary key only when the item has no active-version verdict.\nWITH newest_decision AS (\n    SELECT policy, policy_version, content_hash, MAX(id) AS id\n    FROM ${review_decisions}\n    WHERE decision IS NOT NULL\n    GROUP BY policy, policy_version, content_hash\n)\nSELECT\n    v.source,\n    v.content_id,\n    v.policy,\n    v.policy_version,\n    a.active_version,\n    CASE WHEN v.policy_version = a.active_version THEN 1 ELSE 0 END AS is_active_version,\n    v.content_hash,\n    COALESCE(d.decision, v.label) AS label,\n    CASE WHEN COALESCE(d.decision, v.label) IS NULL THEN NULL\n         WHEN COALESCE(d.decision, v.label) >= 1 THEN 1 ELSE 0 END AS is_positive,\n    v.category,\n    v.rationale,\n    v.confidence,\n    v.parse_status,\n    v.error,\n    v.model,\n    v.run_id,\n    v.labelled_at,\n    CASE WHEN d.id IS NULL THEN v.decided_by ELSE \'human\' END AS decided_by,\n    v.label AS model_label,\n    d.reviewer,\n    d.decided_at AS reviewed_at\nFROM ${verdicts} v\nJOIN (\n    SELECT name, COALESCE(pinned_version, current_version) AS active_version\n    FROM ${policies}\n) a ON a.name = v.policy\nLEFT JOIN newest_decision n\n    ON n.policy = v.policy AND n.policy_version = v.policy_version AND n.content_hash = v.content_hash\nLEFT JOIN ${review_decisions} d ON d.id = n.id\nWHERE v.policy_version <= a.active_version\n    AND (v.policy_version = a.active_version OR NOT EXISTS (\n        SELECT 1\n        FROM ${verdicts} w\n        WHERE w.source = v.source\n            AND w.content_id = v.content_id\n            AND w.policy = v.policy\n            AND w.policy_version > v.policy_version\n            AND w.policy_version <= a.active_version\n    ))\n'

DAILY_POLICY_RATES_0012 = "-- Verdicts per policy version and UTC day: counts, positives, errors and rates.\n-- day is the content's own day (sg_verdicts.content_day, stored when the verdict is staged): the\n-- UTC day of the source row's updated_at the verdict labelled, so every version of a policy charts\n-- over the days its content arrived and a relabel lands where its content is, not on the day it ran.\n-- Verdicts without a content time (a source without updated_at_column) count on their run's\n-- data-interval day, else on the day they were labelled. How much was labelled on which day is\n-- sg_daily_labelling.\n-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.\nSELECT\n    v.policy,\n    v.policy_version,\n    v.content_day AS day,\n    COUNT(*) AS verdicts,\n    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,\n    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,\n    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,\n    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)\n        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,\n    CAST(SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate\nFROM ${verdicts} v\nGROUP BY v.policy, v.policy_version, v.content_day\n"

# What 0012 replaces, restored by its downgrade (sql/views at revisions 0004 and 0009).
DAILY_POLICY_RATES_0004 = "-- Verdicts per policy version and UTC day: counts, positives, errors and rates.\n-- day is the content's own day: the UTC day of the source row's updated_at the verdict labelled\n-- (content_updated_at), so every version of a policy charts over the days its content arrived and a\n-- relabel lands where its content is, not on the day it ran. Verdicts without content_updated_at\n-- (labelled before revision 0004, or a source without updated_at_column) count on their run's\n-- data-interval day, else on the day they were labelled.\n-- labelling_day_*: the verdicts labelled on that UTC day, whatever their content's day (how much\n-- labelling happened when; days with labelling only have verdicts = 0).\n-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.\nWITH d AS (\n    SELECT v.policy, v.policy_version, ${utc_day}(COALESCE(v.content_updated_at, r.interval_start, v.labelled_at)) AS day,\n           1 AS counted, 0 AS labelled_then, v.parse_status, v.label\n    FROM ${verdicts} v\n    LEFT JOIN ${runs} r ON r.id = v.run_id\n    UNION ALL\n    SELECT v.policy, v.policy_version, ${utc_day}(v.labelled_at) AS day,\n           0 AS counted, 1 AS labelled_then, v.parse_status, v.label\n    FROM ${verdicts} v\n)\nSELECT\n    d.policy,\n    d.policy_version,\n    d.day,\n    SUM(d.counted) AS verdicts,\n    SUM(CASE WHEN d.counted = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,\n    SUM(CASE WHEN d.counted = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS positives,\n    SUM(CASE WHEN d.counted = 1 AND d.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,\n    CAST(SUM(CASE WHEN d.counted = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)\n        / NULLIF(SUM(CASE WHEN d.counted = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,\n    CAST(SUM(CASE WHEN d.counted = 1 AND d.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT)\n        / NULLIF(SUM(d.counted), 0) AS error_rate,\n    SUM(d.labelled_then) AS labelling_day_verdicts,\n    SUM(CASE WHEN d.labelled_then = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS labelling_day_positives,\n    CAST(SUM(CASE WHEN d.labelled_then = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)\n        / NULLIF(SUM(CASE WHEN d.labelled_then = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END), 0)\n        AS labelling_day_positive_rate\nFROM d\nGROUP BY d.policy, d.policy_version, d.day\n"

CURRENT_VERDICTS_0009 = '-- Current verdict per (source, content_id, policy), for BI.\n-- Active version of a policy = its pinned_version if pinned, else its current_version (the most\n-- recently published text). Each item shows the verdict of the newest version <= the active one:\n-- while a relabel for a new version is still running, items it has not reached yet keep their\n-- previous version\'s verdict, flagged is_active_version = 0. Filter is_active_version = 1 for a\n-- strict "active version only" view.\n-- A reviewer\'s decision wins: where one exists for the same text (content_hash) and policy version,\n-- label is the newest such decision and decided_by = \'human\' (else the verdict\'s own \'model\' or\n-- \'cascade\'); model_label keeps what the model said, reviewer and reviewed_at who decided and when.\nWITH ranked AS (\n    SELECT\n        v.source,\n        v.content_id,\n        v.policy,\n        v.policy_version,\n        COALESCE(p.pinned_version, p.current_version) AS active_version,\n        v.content_hash,\n        v.label,\n        v.category,\n        v.rationale,\n        v.confidence,\n        v.parse_status,\n        v.error,\n        v.model,\n        v.run_id,\n        v.labelled_at,\n        v.decided_by,\n        ROW_NUMBER() OVER (\n            PARTITION BY v.source, v.content_id, v.policy\n            ORDER BY v.policy_version DESC\n        ) AS rn\n    FROM ${verdicts} v\n    JOIN ${policies} p ON p.name = v.policy\n    WHERE v.policy_version <= COALESCE(p.pinned_version, p.current_version)\n),\nnewest_decision AS (\n    SELECT policy, policy_version, content_hash, MAX(id) AS id\n    FROM ${review_decisions}\n    WHERE decision IS NOT NULL\n    GROUP BY policy, policy_version, content_hash\n)\nSELECT\n    r.source,\n    r.content_id,\n    r.policy,\n    r.policy_version,\n    r.active_version,\n    CASE WHEN r.policy_version = r.active_version THEN 1 ELSE 0 END AS is_active_version,\n    r.content_hash,\n    COALESCE(d.decision, r.label) AS label,\n    CASE WHEN COALESCE(d.decision, r.label) IS NULL THEN NULL\n         WHEN COALESCE(d.decision, r.label) >= 1 THEN 1 ELSE 0 END AS is_positive,\n    r.category,\n    r.rationale,\n    r.confidence,\n    r.parse_status,\n    r.error,\n    r.model,\n    r.run_id,\n    r.labelled_at,\n    CASE WHEN d.id IS NULL THEN r.decided_by ELSE \'human\' END AS decided_by,\n    r.label AS model_label,\n    d.reviewer,\n    d.decided_at AS reviewed_at\nFROM ranked r\nLEFT JOIN newest_decision n\n    ON n.policy = r.policy AND n.policy_version = r.policy_version AND n.content_hash = r.content_hash\nLEFT JOIN ${review_decisions} d ON d.id = n.id\nWHERE r.rn = 1\n'

DAILY_LABELLING_0012 = "-- Verdicts per policy version and the UTC day they were labelled, whatever their content's day:\n-- how much labelling happened when (a relabel of last year's content counts on the night it ran).\n-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.\nSELECT\n    v.policy,\n    v.policy_version,\n    ${utc_day}(v.labelled_at) AS day,\n    COUNT(*) AS verdicts,\n    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,\n    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,\n    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,\n    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)\n        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate\nFROM ${verdicts} v\nGROUP BY v.policy, v.policy_version, ${utc_day}(v.labelled_at)\n"


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def _qualified(name: str) -> str:
    prefix, schema = _names()
    quote = op.get_bind().dialect.identifier_preparer.quote
    return (quote(schema) + "." if schema else "") + quote(prefix + name)


def _utc_day(expr: str) -> str:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return f"date({expr})"
    if dialect == "postgresql":
        return f"CAST(({expr} AT TIME ZONE 'UTC') AS DATE)"
    return f"CAST({expr} AS DATE)"


def _create_view(name: str, sql: str) -> None:
    for expr in ("v.labelled_at", "COALESCE(v.content_updated_at, r.interval_start, v.labelled_at)"):
        sql = sql.replace("${utc_day}(%s)" % expr, _utc_day(expr))
    names = {n: _qualified(n) for n in ("verdicts", "policies", "review_decisions", "runs")}
    op.execute(f"DROP VIEW IF EXISTS {_qualified(name)}")
    op.execute(f"CREATE VIEW {_qualified(name)} AS\n{string.Template(sql).substitute(names)}")


def upgrade() -> None:
    p, s = _names()
    for view in ("current_verdicts", "daily_policy_rates"):
        op.execute(f"DROP VIEW IF EXISTS {_qualified(view)}")
    for table in ("verdict_staging", "verdicts"):
        op.add_column(p + table, sa.Column("content_day", sa.Date), schema=s)
        day = _utc_day(f"COALESCE(t.content_updated_at, (SELECT r.interval_start FROM {_qualified('runs')} r "
                       f"WHERE r.id = t.run_id), t.labelled_at)")
        # A correlated UPDATE every dialect runs (no UPDATE ... FROM); `t` names the updated table.
        op.execute(f"UPDATE {_qualified(table)} AS t SET content_day = {day}"
                   if op.get_bind().dialect.name == "postgresql" else
                   f"UPDATE {_qualified(table)} SET content_day = "
                   + day.replace("t.", _qualified(table) + "."))
    op.create_index(p + "ix_verdicts_policy_day", p + "verdicts",
                    ["policy", "content_day", "policy_version", "parse_status", "label"], schema=s)
    op.create_index(p + "ix_verdicts_policy_time", p + "verdicts", ["policy", "labelled_at"], schema=s)
    _create_view("current_verdicts", CURRENT_VERDICTS_0012)
    _create_view("daily_policy_rates", DAILY_POLICY_RATES_0012)
    _create_view("daily_labelling", DAILY_LABELLING_0012)


def downgrade() -> None:
    p, s = _names()
    for view in ("daily_labelling", "daily_policy_rates", "current_verdicts"):
        op.execute(f"DROP VIEW IF EXISTS {_qualified(view)}")
    op.drop_index(p + "ix_verdicts_policy_time", p + "verdicts", schema=s)
    op.drop_index(p + "ix_verdicts_policy_day", p + "verdicts", schema=s)
    # A plain DROP COLUMN (SQLite >= 3.35): a batch table copy would break the views on the verdicts.
    for table in ("verdicts", "verdict_staging"):
        op.drop_column(p + table, "content_day", schema=s)
    _create_view("current_verdicts", CURRENT_VERDICTS_0009)
    _create_view("daily_policy_rates", DAILY_POLICY_RATES_0004)
