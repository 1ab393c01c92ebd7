"""BI views: current verdicts, daily rates, flips between versions, run errors.

Frozen: the view SQL below is these views as of this revision (sql/views holds the current
definitions; a change there ships as a new revision with its own copy). Key "" is the SQL for every
dialect, "sqlite" / "postgresql" the dialect's own where it differs. ${name} placeholders are the
prefixed, quoted table and view names.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-01
"""

from __future__ import annotations

import string

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TABLES = ("policies", "policy_versions", "runs", "work_items", "run_chunks", "verdict_staging", "verdicts",
           "verdict_analysis")

_VIEWS: dict[str, dict[str, str]] = {
    'current_verdicts': {
        '': '''-- Current verdict per (source, content_id, policy), for BI.
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
''',
    },
    'daily_policy_rates': {
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
    },
    'verdict_flips': {
        '': '''-- Items whose verdict differs between two versions of a policy (every pair old < new that both
-- have a verdict). Pick the pair with WHERE policy = ... AND old_version = ... AND new_version = ...
-- same_content = 0 means the text itself was edited between the two labels, so the flip may be
-- the content's doing rather than the policy's. Error rows (label NULL) count as a change.
SELECT
    a.source,
    a.content_id,
    a.policy,
    a.policy_version AS old_version,
    b.policy_version AS new_version,
    a.label AS old_label,
    b.label AS new_label,
    a.parse_status AS old_status,
    b.parse_status AS new_status,
    CASE WHEN a.content_hash = b.content_hash THEN 1 ELSE 0 END AS same_content,
    a.category AS old_category,
    b.category AS new_category,
    b.rationale AS new_rationale,
    a.labelled_at AS old_labelled_at,
    b.labelled_at AS new_labelled_at,
    b.run_id AS new_run_id
FROM ${verdicts} a
JOIN ${verdicts} b
    ON b.source = a.source
    AND b.content_id = a.content_id
    AND b.policy = a.policy
    AND b.policy_version > a.policy_version
WHERE a.label <> b.label
    OR (a.label IS NULL AND b.label IS NOT NULL)
    OR (a.label IS NOT NULL AND b.label IS NULL)
''',
    },
    'run_errors': {
        '': '''-- Error verdicts per labelling run, policy version and kind of error (parse_status), from the
-- run's staged verdicts: quarantined runs (never published) show up too. Purged runs do not.
SELECT
    s.run_id,
    r.kind AS run_kind,
    r.status AS run_status,
    r.created_at AS run_created_at,
    s.policy,
    s.policy_version,
    s.parse_status,
    COUNT(*) AS errors,
    MIN(s.error) AS sample_error
FROM ${verdict_staging} s
JOIN ${runs} r ON r.id = s.run_id
WHERE s.parse_status <> 'ok'
GROUP BY s.run_id, r.kind, r.status, r.created_at, s.policy, s.policy_version, s.parse_status
''',
    },
}


def _names(bind) -> dict[str, str]:
    """Quoted, schema-qualified names of the tables and views, with the configured prefix (env.py
    puts the prefix and schema in the Alembic config's attributes)."""
    attrs = context.config.attributes
    prefix, schema = attrs["table_prefix"], attrs["db_schema"]
    quote = bind.dialect.identifier_preparer.quote
    qual = quote(schema) + "." if schema else ""
    return {n: qual + quote(prefix + n) for n in _TABLES + tuple(_VIEWS)}


def _create(bind, names: dict[str, str], view: str, variants: dict[str, str]) -> None:
    body = string.Template(variants.get(bind.dialect.name, variants[""])).substitute(names)
    if bind.dialect.paramstyle in ("format", "pyformat"):
        body = body.replace("%", "%%")  # a literal '%' is not a driver placeholder
    bind.exec_driver_sql(f"DROP VIEW IF EXISTS {names[view]}")
    bind.exec_driver_sql(f"CREATE VIEW {names[view]} AS\n{body}")


def upgrade() -> None:
    bind = op.get_bind()
    names = _names(bind)
    for view, variants in _VIEWS.items():
        _create(bind, names, view, variants)


def downgrade() -> None:
    bind = op.get_bind()
    names = _names(bind)
    for view in reversed(tuple(_VIEWS)):
        bind.exec_driver_sql(f"DROP VIEW IF EXISTS {names[view]}")
