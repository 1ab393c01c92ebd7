-- Every stored policy version, who published it and when, and which one is active.
SELECT v.name, v.version, v.sha256, v.author, v.created_at, v.output_format, v.reasoning_effort,
       CASE WHEN v.version = COALESCE(p.pinned_version, p.current_version) THEN 1 ELSE 0 END AS is_active,
       CASE WHEN p.pinned_version IS NOT NULL THEN 1 ELSE 0 END AS policy_is_pinned
FROM sg_policy_versions v
JOIN sg_policies p ON p.name = v.name
ORDER BY v.name, v.version
