-- Error verdicts per run and kind of error, worst first (includes quarantined runs).
SELECT run_id, run_kind, run_status, policy, policy_version, parse_status, errors, sample_error
FROM sg_run_errors
ORDER BY errors DESC, run_created_at DESC
