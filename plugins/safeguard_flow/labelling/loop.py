"""Label items against policies with any engine: checks, de-duplication, grouping, parsing.

The invariant every caller relies on: one verdict per (item, policy) in, never fewer, never more.
Bad content and failed requests become error verdicts; nothing raises for a single bad row.

Long content is labelled, not failed: the room for content is the model's context minus the policy
prompt and the output budget, in the engine's own tokens (`Engine.count_tokens`). Content over it is
cut into overlapping windows, each labelled like an item; the verdict combines them by the policy's
rule (any window violating -> the highest label found) and records the windows in `extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from safeguard_flow.domain import prompts
from safeguard_flow.domain.content import ContentItem, clip
from safeguard_flow.engines.base import Completion, Engine, LabelRequest
from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.verdicts import ENGINE_ERROR, INPUT_ERROR, OK, Verdict, error_verdict, parse_output

# Tokens of the chat/harmony scaffolding around policy and content: measured 13 (Qwen chat template)
# and 63 (harmony: system message with reasoning effort and channels), with room to spare.
PROMPT_OVERHEAD_TOKENS = 128
MIN_WINDOW_TOKENS = 64  # below this the policy leaves no useful room: a configuration error
WINDOW_OVERLAP_CHARS = 200  # a phrase cut by a window edge is still whole in one of the two windows


@dataclass
class LabelStats:
    items: int = 0
    verdicts: int = 0
    requests: int = 0  # model calls actually made (after de-duplication)
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the engine's prefix cache
    completion_tokens: int = 0
    seconds: float = 0.0
    by_policy_label: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, verdicts: Iterable[Verdict]) -> None:
        for v in verdicts:
            self.verdicts += 1
            self.errors += v.is_error
            key = (v.policy, "error" if v.is_error else str(v.label))
            self.by_policy_label[key] = self.by_policy_label.get(key, 0) + 1

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.seconds if self.seconds else 0.0


def label_items(
    engine: Engine,
    items: Sequence[ContentItem],
    policies: Sequence[Policy],
    *,
    max_content_chars: int = 20_000,
    stats: LabelStats | None = None,
    max_model_len: int | None = None,
    max_tokens: int | None = None,
) -> list[Verdict]:
    """Label every item against every policy. Returns verdicts ordered by (item, policy).

    max_model_len / max_tokens (default: the engine's `settings.model`) set the content budget; an
    engine without `count_tokens` gets no windows (content is only clipped to max_content_chars)."""
    requests: list[LabelRequest] = []
    first_for: dict[tuple[str, str, int], int] = {}  # (content_hash, policy, window) -> request index
    # item, policy, request indices (one per window) or None, clipped, or a configuration error
    plan: list[tuple[ContentItem, Policy, list[int] | None, bool, str | None]] = []
    budgets = {p.sha256: content_budget(engine, p, max_model_len, max_tokens) for p in policies}
    windows_of: dict[tuple[str, str], list[str]] = {}
    for item in items:
        for policy in policies:
            if item.problem is not None:
                plan.append((item, policy, None, False, None))
                continue
            budget = budgets[policy.sha256]
            if budget is not None and budget < MIN_WINDOW_TOKENS:
                plan.append((item, policy, None, False, _no_room(policy, budget)))
                continue
            text, clipped = clip(item.text or "", max_content_chars)
            key = (item.content_hash, policy.sha256)
            if key not in windows_of:
                windows_of[key] = [text] if budget is None else split_windows(text, budget, engine.count_tokens)
            indices = []
            for w, window in enumerate(windows_of[key]):
                dedupe_key = (item.content_hash, policy.sha256, w)
                if dedupe_key not in first_for:  # identical text under one policy is labelled once
                    first_for[dedupe_key] = len(requests)
                    requests.append(LabelRequest(key=len(requests), policy=policy, content=window))
                indices.append(first_for[dedupe_key])
            plan.append((item, policy, indices, clipped, None))

    # Group by policy so each long policy prefix is computed once and then served from the prefix cache.
    order = sorted(range(len(requests)), key=lambda i: (requests[i].policy.name, i))
    completions: list[Completion | None] = [None] * len(requests)
    if requests:
        grouped = [requests[i] for i in order]
        results = engine.complete(grouped)
        if len(results) != len(grouped):
            raise RuntimeError(f"engine returned {len(results)} completions for {len(grouped)} requests")
        for i, result in zip(order, results):
            completions[i] = result

    verdicts = []
    for item, policy, idx, clipped, config_error in plan:
        if config_error is not None:
            verdicts.append(error_verdict(status=ENGINE_ERROR, error=config_error, **_common(item, policy, engine.model_name)))
        elif idx is None or len(idx) == 1:
            verdicts.append(_verdict(item, policy, completions[idx[0]] if idx else None, clipped, engine.model_name))
        else:
            verdicts.append(_windowed_verdict(item, policy, [completions[i] for i in idx], clipped, engine.model_name))
    if stats is not None:
        stats.items += len(items)
        stats.requests += len(requests)
        for c in completions:
            if c is not None:
                stats.prompt_tokens += c.prompt_tokens
                stats.cached_prompt_tokens += c.cached_prompt_tokens
                stats.completion_tokens += c.completion_tokens
        stats.add(verdicts)
    assert len(verdicts) == len(items) * len(policies)
    return verdicts


def content_budget(engine: Engine, policy: Policy, max_model_len: int | None = None,
                   max_tokens: int | None = None) -> int | None:
    """Tokens of content that fit with this policy: context - policy prompt - output budget - scaffolding.
    None when the engine cannot count tokens or its context is unknown (then nothing is windowed)."""
    count = getattr(engine, "count_tokens", None)
    model = getattr(getattr(engine, "settings", None), "model", None)
    max_model_len = max_model_len or getattr(model, "max_model_len", None)
    max_tokens = max_tokens or getattr(model, "max_tokens", None) or 0
    if count is None or not max_model_len:
        return None
    return max_model_len - max_tokens - count(prompts.system_prompt(policy)) - PROMPT_OVERHEAD_TOKENS


def _no_room(policy: Policy, budget: int) -> str:
    return (f"policy {policy.name!r} v{policy.version} and the output budget leave {budget} tokens of "
            "model.max_model_len for content: raise model.max_model_len, lower model.max_tokens or shorten the policy")


def split_windows(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """`text` in pieces of at most `budget` tokens, cut at whitespace, neighbours overlapping a little."""
    if count_tokens(text) <= budget or len(text) < 2 * WINDOW_OVERLAP_CHARS:
        return [text]
    mid = len(text) // 2
    space = text.rfind(" ", mid - WINDOW_OVERLAP_CHARS, mid + WINDOW_OVERLAP_CHARS)
    mid = space if space > 0 else mid
    left, right = text[:mid + WINDOW_OVERLAP_CHARS // 2], text[max(0, mid - WINDOW_OVERLAP_CHARS // 2):]
    return split_windows(left, budget, count_tokens) + split_windows(right, budget, count_tokens)


def _common(item: ContentItem, policy: Policy, model: str) -> dict:
    return dict(content_id=item.content_id, policy=policy.name, policy_version=policy.version or 0,
                source=item.source, content_hash=item.content_hash, model=model)


def _verdict(item: ContentItem, policy: Policy, completion: Completion | None, clipped: bool, model: str) -> Verdict:
    common = dict(
        content_id=item.content_id,
        policy=policy.name,
        policy_version=policy.version or 0,
        source=item.source,
        content_hash=item.content_hash,
        model=model,
    )
    if item.problem is not None:
        return error_verdict(status=INPUT_ERROR, error=item.problem, **common)
    assert completion is not None
    if completion.error is not None:
        return error_verdict(status=ENGINE_ERROR, error=completion.error, raw_output=completion.text or "",
                             prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                             analysis=completion.analysis, **common)
    parsed = parse_output(completion.text, policy.output_format, policy.labels, completion.finish_reason)
    extra: dict = {"clipped": True} if clipped else {}
    if parsed.stated_confidence is not None:
        extra["stated_confidence"] = parsed.stated_confidence
    return Verdict(
        label=parsed.label,
        parse_status=parsed.parse_status,
        category=parsed.category,
        rationale=parsed.rationale,
        confidence=_measured_confidence(completion, parsed.label) if parsed.parse_status == OK else None,
        rule_ids=parsed.rule_ids,
        error=parsed.error,
        raw_output=completion.text or "",
        analysis=completion.analysis,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        extra=extra,
        **common,
    )


def _measured_confidence(completion: Completion, label: int | None) -> float | None:
    """The engine's probability of the label the answer holds (None when it measured none, or measured
    another label than the parser read)."""
    p = (completion.label_probs or {}).get(label) if label is not None else None
    return p if p is not None and 0.0 < p <= 1.0 else None


def _windowed_verdict(item: ContentItem, policy: Policy, completions: list[Completion | None], clipped: bool,
                      model: str) -> Verdict:
    """One verdict from the windows of one text: a violation in any window is the text's violation;
    all windows safe is safe; otherwise (no violation found, a window failed) the verdict is an error."""
    parts = [_verdict(item, policy, c, False, model) for c in completions]
    labels = [None if v.is_error else v.label for v in parts]
    extra = {"windows": len(parts), "window_labels": labels, **({"clipped": True} if clipped else {})}
    tokens = dict(prompt_tokens=sum(v.prompt_tokens for v in parts),
                  completion_tokens=sum(v.completion_tokens for v in parts))
    ok = [v for v in parts if not v.is_error]
    worst = max(ok, key=lambda v: v.label or 0, default=None)
    if worst is not None and (worst.label or 0) >= 1 or len(ok) == len(parts):
        return Verdict(**{**worst.__dict__, **tokens, "extra": {**worst.extra, **extra}})
    failed = next(i for i, v in enumerate(parts) if v.is_error)
    bad = parts[failed]
    return error_verdict(status=bad.parse_status, error=f"window {failed + 1} of {len(parts)}: {bad.error}",
                         raw_output="\n---\n".join(v.raw_output or "" for v in parts), analysis=bad.analysis,
                         extra=extra, **tokens, **_common(item, policy, model))


def chunked(items: Iterable[ContentItem], size: int) -> Iterator[list[ContentItem]]:
    chunk: list[ContentItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def label_stream(
    engine: Engine,
    items: Iterable[ContentItem],
    policies: Sequence[Policy],
    *,
    chunk_size: int = 256,
    max_content_chars: int = 20_000,
    stats: LabelStats | None = None,
    on_chunk: Callable[[list[Verdict]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[list[Verdict]]:
    """Label a stream in chunks, yielding each chunk's verdicts as it finishes."""
    import time

    for chunk in chunked(items, chunk_size):
        start = time.perf_counter()
        verdicts = label_items(engine, chunk, policies, max_content_chars=max_content_chars, stats=stats)
        if stats is not None:
            stats.seconds += time.perf_counter() - start
        if on_chunk is not None:
            on_chunk(verdicts)
        if progress is not None:
            progress(len(chunk))
        yield verdicts
