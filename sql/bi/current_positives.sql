-- Items currently in violation of each policy (active version), newest first.
SELECT policy, policy_version, is_active_version, source, content_id, label, category, rationale, labelled_at
FROM sg_current_verdicts
WHERE is_positive = 1
ORDER BY policy, labelled_at DESC, content_id
