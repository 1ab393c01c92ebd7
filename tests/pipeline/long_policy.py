"""A policy version whose text alone is longer than the model's context (`model.max_model_len`), as a
shadow version of `spam`: every verdict it gets is an engine error, so the gate quarantines it."""

from __future__ import annotations

from pathlib import Path

LINE = "- A post that names a product, a price and a link to buy it counts as spam under rule R{n}.\n"


def long_spam_text(policies_dir: str | Path, lines: int = 1500) -> str:
    """The spam policy file with an EXAMPLES section of `lines` rules appended (~20 tokens each)."""
    text = (Path(policies_dir) / "spam.md").read_text()
    return text + "\n## MORE EXAMPLES\n" + "".join(LINE.format(n=n) for n in range(lines))


def publish_long_shadow(engine, settings, policies_dir: str | Path, shadow: bool = True):
    """Store spam's long text as its shadow version (or, shadow=False, as its current version); the Policy."""
    from safeguard_flow.domain.policies import load_policy
    from safeguard_flow.warehouse import policy_store

    path = Path(policies_dir).parent / "long-spam" / "spam.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(long_spam_text(policies_dir))
    (result,) = policy_store.publish_policies(engine, settings, [load_policy(path)], author="test", shadow=shadow)
    assert result.created and result.shadow == shadow
    return result.policy
