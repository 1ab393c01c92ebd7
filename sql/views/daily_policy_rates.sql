-- Verdicts per policy version and UTC day: counts, positives, errors and rates.
-- day is the content's own day: the UTC day of the source row's updated_at the verdict labelled
-- (content_updated_at), so every version of a policy charts over the days its content arrived and a
-- relabel lands where its content is, not on the day it ran. Verdicts without content_updated_at
-- (labelled before revision 0004, or a source without updated_at_column) count on their run's
-- data-interval day, else on the day they were labelled.
-- labelling_day_*: the verdicts labelled on that UTC day, whatever their content's day (how much
-- labelling happened when; days with labelling only have verdicts = 0).
-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.
WITH d AS (
    SELECT v.policy, v.policy_version, ${utc_day}(COALESCE(v.content_updated_at, r.interval_start, v.labelled_at)) AS day,
           1 AS counted, 0 AS labelled_then, v.parse_status, v.label
    FROM ${verdicts} v
    LEFT JOIN ${runs} r ON r.id = v.run_id
    UNION ALL
    SELECT v.policy, v.policy_version, ${utc_day}(v.labelled_at) AS day,
           0 AS counted, 1 AS labelled_then, v.parse_status, v.label
    FROM ${verdicts} v
)
SELECT
    d.policy,
    d.policy_version,
    d.day,
    SUM(d.counted) AS verdicts,
    SUM(CASE WHEN d.counted = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN d.counted = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN d.counted = 1 AND d.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN d.counted = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN d.counted = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN d.counted = 1 AND d.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(d.counted), 0) AS error_rate,
    SUM(d.labelled_then) AS labelling_day_verdicts,
    SUM(CASE WHEN d.labelled_then = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS labelling_day_positives,
    CAST(SUM(CASE WHEN d.labelled_then = 1 AND d.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN d.labelled_then = 1 AND d.parse_status = 'ok' THEN 1 ELSE 0 END), 0)
        AS labelling_day_positive_rate
FROM d
GROUP BY d.policy, d.policy_version, d.day
