"""Label items against policies with any engine: checks, de-duplication, grouping, parsing.

The invariant every caller relies on: one verdict per (item, policy) in, never fewer, never more.
Bad content and failed requests become error verdicts; nothing raises for a single bad row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from safeguard_flow.content import ContentItem, clip
from safeguard_flow.engines.base import Completion, Engine, LabelRequest
from safeguard_flow.policies import Policy
from safeguard_flow.verdicts import ENGINE_ERROR, INPUT_ERROR, Verdict, error_verdict, parse_output


@dataclass
class LabelStats:
    items: int = 0
    verdicts: int = 0
    requests: int = 0  # model calls actually made (after de-duplication)
    errors: int = 0
    prompt_tokens: int = 0
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
) -> list[Verdict]:
    """Label every item against every policy. Returns verdicts ordered by (item, policy)."""
    requests: list[LabelRequest] = []
    first_for: dict[tuple[str, str], int] = {}  # (content_hash, policy) -> request index
    plan: list[tuple[ContentItem, Policy, int | None, bool]] = []  # item, policy, request index, clipped
    for item in items:
        for policy in policies:
            if item.problem is not None:
                plan.append((item, policy, None, False))
                continue
            text, clipped = clip(item.text or "", max_content_chars)
            dedupe_key = (item.content_hash, policy.sha256)
            if dedupe_key not in first_for:  # identical text under one policy is labelled once
                first_for[dedupe_key] = len(requests)
                requests.append(LabelRequest(key=len(requests), policy=policy, content=text))
            plan.append((item, policy, first_for[dedupe_key], clipped))

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

    verdicts = [_verdict(item, policy, completions[idx] if idx is not None else None, clipped, engine.model_name)
                for item, policy, idx, clipped in plan]
    if stats is not None:
        stats.items += len(items)
        stats.requests += len(requests)
        for c in completions:
            if c is not None:
                stats.prompt_tokens += c.prompt_tokens
                stats.completion_tokens += c.completion_tokens
        stats.add(verdicts)
    assert len(verdicts) == len(items) * len(policies)
    return verdicts


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
    return Verdict(
        label=parsed.label,
        parse_status=parsed.parse_status,
        category=parsed.category,
        rationale=parsed.rationale,
        confidence=parsed.confidence,
        rule_ids=parsed.rule_ids,
        error=parsed.error,
        raw_output=completion.text or "",
        analysis=completion.analysis,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        extra={"clipped": True} if clipped else {},
        **common,
    )


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
