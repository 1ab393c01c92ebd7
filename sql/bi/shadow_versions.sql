-- Shadow versions awaiting promotion: how much each changes against the promoted version, its latest
-- eval F1 next to the promoted version's, and the last gate decision recorded for it.
SELECT
    p.name AS policy,
    p.current_version AS promoted_version,
    p.shadow_version,
    d.compared,
    d.to_positive,
    d.to_safe,
    d.flip_rate,
    (SELECT s.f1 FROM sg_eval_scores s JOIN sg_policy_versions v ON v.name = s.policy AND v.sha256 = s.policy_sha256
        JOIN sg_evals e ON e.id = s.eval_id
      WHERE v.name = p.name AND v.version = p.current_version ORDER BY e.created_at DESC LIMIT 1) AS promoted_f1,
    (SELECT s.f1 FROM sg_eval_scores s JOIN sg_policy_versions v ON v.name = s.policy AND v.sha256 = s.policy_sha256
        JOIN sg_evals e ON e.id = s.eval_id
      WHERE v.name = p.name AND v.version = p.shadow_version ORDER BY e.created_at DESC LIMIT 1) AS shadow_f1,
    (SELECT pr.outcome FROM sg_policy_promotions pr
      WHERE pr.policy = p.name AND pr.to_version = p.shadow_version ORDER BY pr.created_at DESC, pr.id DESC LIMIT 1) AS last_decision
FROM sg_policies p
LEFT JOIN sg_policy_version_diff d
    ON d.policy = p.name AND d.old_version = p.current_version AND d.new_version = p.shadow_version
WHERE p.shadow_version IS NOT NULL
ORDER BY p.name
