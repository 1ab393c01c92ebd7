-- Daily volume, positive rate and error rate of each policy's active version.
SELECT d.policy, d.policy_version, d.day, d.verdicts, d.positives, d.errors, d.positive_rate, d.error_rate
FROM sg_daily_policy_rates d
JOIN sg_policies p ON p.name = d.policy
WHERE d.policy_version = COALESCE(p.pinned_version, p.current_version)
ORDER BY d.policy, d.day
