-- Current verdict per (source, content_id, policy), for BI.
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
