-- Verdicts per policy version and UTC day: counts, positives, errors and rates. The day is the
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
