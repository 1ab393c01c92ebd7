-- Verdicts per policy version and UTC day (day the verdict was labelled): counts, positives,
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
