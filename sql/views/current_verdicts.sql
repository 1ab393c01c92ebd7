-- Current verdict per (source, content_id, policy), for BI.
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
