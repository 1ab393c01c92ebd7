-- Items whose verdict differs between two versions of a policy (every pair old < new that both
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
