-- What a new policy version changes, per policy and pair of versions (old < new): the content both
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
FROM ${verdicts} a
JOIN ${verdicts} b
    ON b.source = a.source
    AND b.content_id = a.content_id
    AND b.policy = a.policy
    AND b.policy_version > a.policy_version
GROUP BY a.policy, a.policy_version, b.policy_version
