"""The project's own sample keeps the shape the demo, the tests and the benches count on."""

from __future__ import annotations

from collections import Counter

from safeguard_flow.policy_quality.datasets import MODERATION_2022_KEYS
from safeguard_flow.domain.policies import load_policy_set
from safeguard_flow.warehouse.sample_data import POLICIES, read_sample


def test_sample_has_three_days_unique_ids_and_a_label_column_per_example_policy():
    rows = read_sample()
    assert len({r["id"] for r in rows}) == len({r["text"] for r in rows}) == 300
    assert Counter(r["updated_at"][:10] for r in rows) == {"2026-11-20": 144, "2026-11-21": 144, "2026-11-22": 12}
    # Every example policy has a gold column, and every label is 0/1 or missing (unknown).
    assert {p.name for p in load_policy_set(POLICIES)} <= set(MODERATION_2022_KEYS)
    for row in rows:
        assert all(row.get(key) in (0, 1, None) for key in MODERATION_2022_KEYS.values()), row["id"]
    positives = {key: sum(r.get(key) == 1 for r in rows) for key in MODERATION_2022_KEYS.values()}
    assert positives.pop("S3") == 0  # on purpose: see data/README.md
    assert all(15 <= n <= 50 for n in positives.values()), positives
    assert 100 <= sum(all(r.get(k) in (0, None) for k in MODERATION_2022_KEYS.values()) for r in rows) <= 180
