-- Current verdict per (source, content_id, policy), for BI.
-- Active version of a policy = its pinned_version if pinned, else its current_version (the most
-- recently published text). Each item shows the verdict of the newest version <= the active one:
-- while a relabel for a new version is still running, items it has not reached yet keep their
-- previous version's verdict, flagged is_active_version = 0. Filter is_active_version = 1 for a
-- strict "active version only" view.
-- A reviewer's decision wins: where one exists for the same text (content_hash) and policy version,
-- label is the newest such decision and decided_by = 'human' (else the verdict's own 'model' or
-- 'cascade'); model_label keeps what the model said, reviewer and reviewed_at who decided and when.
-- Written so that a filter on policy and labelled_at reaches the verdict table's indexes: an older
-- version's verdict is looked up by primary key only when the item has no active-version verdict.
WITH newest_decision AS (
    SELECT policy, policy_version, content_hash, MAX(id) AS id
    FROM ${review_decisions}
    WHERE decision IS NOT NULL
    GROUP BY policy, policy_version, content_hash
)
SELECT
    v.source,
    v.content_id,
    v.policy,
    v.policy_version,
    a.active_version,
    CASE WHEN v.policy_version = a.active_version THEN 1 ELSE 0 END AS is_active_version,
    v.content_hash,
    COALESCE(d.decision, v.label) AS label,
    CASE WHEN COALESCE(d.decision, v.label) IS NULL THEN NULL
         WHEN COALESCE(d.decision, v.label) >= 1 THEN 1 ELSE 0 END AS is_positive,
    v.category,
    v.rationale,
    v.confidence,
    v.parse_status,
    v.error,
    v.model,
    v.run_id,
    v.labelled_at,
    CASE WHEN d.id IS NULL THEN v.decided_by ELSE 'human' END AS decided_by,
    v.label AS model_label,
    d.reviewer,
    d.decided_at AS reviewed_at
FROM ${verdicts} v
JOIN (
    SELECT name, COALESCE(pinned_version, current_version) AS active_version
    FROM ${policies}
) a ON a.name = v.policy
LEFT JOIN newest_decision n
    ON n.policy = v.policy AND n.policy_version = v.policy_version AND n.content_hash = v.content_hash
LEFT JOIN ${review_decisions} d ON d.id = n.id
WHERE v.policy_version <= a.active_version
    AND (v.policy_version = a.active_version OR NOT EXISTS (
        SELECT 1
        FROM ${verdicts} w
        WHERE w.source = v.source
            AND w.content_id = v.content_id
            AND w.policy = v.policy
            AND w.policy_version > v.policy_version
            AND w.policy_version <= a.active_version
    ))
