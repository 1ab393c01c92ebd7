-- Verdicts per policy version and the UTC day they were labelled, whatever their content's day:
-- how much labelling happened when (a relabel of last year's content counts on the night it ran).
-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.
SELECT
    v.policy,
    v.policy_version,
    ${utc_day}(v.labelled_at) AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate
FROM ${verdicts} v
GROUP BY v.policy, v.policy_version, ${utc_day}(v.labelled_at)
