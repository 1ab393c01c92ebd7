-- Error verdicts per labelling run, policy version and kind of error (parse_status), from the
-- run's staged verdicts: quarantined runs (never published) show up too. Purged runs do not.
SELECT
    s.run_id,
    r.kind AS run_kind,
    r.status AS run_status,
    r.created_at AS run_created_at,
    s.policy,
    s.policy_version,
    s.parse_status,
    COUNT(*) AS errors,
    MIN(s.error) AS sample_error
FROM ${verdict_staging} s
JOIN ${runs} r ON r.id = s.run_id
WHERE s.parse_status <> 'ok'
GROUP BY s.run_id, r.kind, r.status, r.created_at, s.policy, s.policy_version, s.parse_status
