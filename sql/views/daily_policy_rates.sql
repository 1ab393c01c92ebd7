-- Verdicts per policy version and UTC day: counts, positives, errors and rates.
-- day is the content's own day (sg_verdicts.content_day, stored when the verdict is staged): the
-- UTC day of the source row's updated_at the verdict labelled, so every version of a policy charts
-- over the days its content arrived and a relabel lands where its content is, not on the day it ran.
-- Verdicts without a content time (a source without updated_at_column) count on their run's
-- data-interval day, else on the day they were labelled. How much was labelled on which day is
-- sg_daily_labelling.
-- positive_rate = positives / labelled (error rows excluded); a positive is a label >= 1.
SELECT
    v.policy,
    v.policy_version,
    v.content_day AS day,
    COUNT(*) AS verdicts,
    SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END) AS labelled,
    SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS positives,
    SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS errors,
    CAST(SUM(CASE WHEN v.label >= 1 THEN 1 ELSE 0 END) AS FLOAT)
        / NULLIF(SUM(CASE WHEN v.parse_status = 'ok' THEN 1 ELSE 0 END), 0) AS positive_rate,
    CAST(SUM(CASE WHEN v.parse_status <> 'ok' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*) AS error_rate
FROM ${verdicts} v
GROUP BY v.policy, v.policy_version, v.content_day
