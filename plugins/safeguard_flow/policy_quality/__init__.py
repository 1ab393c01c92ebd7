"""Knowing a policy version is right before trusting it: datasets, metrics, eval and its report,
policy lint, the diff between two versions, the promotion gate and the policy-change flow."""
