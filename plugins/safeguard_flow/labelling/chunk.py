"""Label one chunk so that a single bad row can never sink it.

Engines promise not to raise for one bad request, but a real engine can still raise for a whole
batch because of one row (vLLM rejects a batch holding a prompt longer than `max_model_len`). When
that happens the chunk is split in halves until the row that raises is alone; that row becomes an
error verdict and every other row is labelled normally. If a short, known-good canary request fails
too, the engine itself is broken: we raise instead of writing a chunk of bogus errors.

An input can also kill the engine outright (vLLM's EngineDeadError). `label_isolating` restarts the
engine (an EngineSlot) and retries the items in flight in halves on the fresh one until the killer is
alone: it gets an error verdict with the engine's reason, everything else is labelled.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.engines.base import Engine, EngineDied, EngineError, LabelRequest
from safeguard_flow.labelling.loop import LabelStats, label_items
from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.verdicts import ENGINE_ERROR, Verdict, error_verdict

log = logging.getLogger(__name__)

CANARY_TEXT = "Hello, how are you today?"


class EngineUnhealthy(EngineError):
    """The engine fails even on a trivial request: the replica must be restarted."""


def label_chunk(
    engine: Engine,
    items: Sequence[ContentItem],
    policies: Sequence[Policy],
    *,
    max_content_chars: int,
    stats: LabelStats | None = None,
) -> list[Verdict]:
    """Verdicts for every (item, policy), ordered by item then policy, whatever the engine raises."""
    try:
        return label_items(engine, items, policies, max_content_chars=max_content_chars, stats=stats)
    except (EngineUnhealthy, EngineDied):
        raise
    except Exception as exc:
        if len(items) > 1:
            log.warning("labelling %d items raised %s; isolating the row that causes it", len(items), _short(exc))
            half = len(items) // 2
            return (label_chunk(engine, items[:half], policies, max_content_chars=max_content_chars, stats=stats)
                    + label_chunk(engine, items[half:], policies, max_content_chars=max_content_chars, stats=stats))
        return _label_one_item(engine, items[0], policies, exc, max_content_chars=max_content_chars, stats=stats)


def _label_one_item(engine: Engine, item: ContentItem, policies: Sequence[Policy], first_exc: Exception, *,
                    max_content_chars: int, stats: LabelStats | None) -> list[Verdict]:
    """One item that makes the engine raise: try each policy alone, error verdicts where it still raises."""
    local = LabelStats()
    out: list[Verdict] = []
    for policy in policies:
        if len(policies) == 1:
            exc = first_exc  # already tried exactly this request
        else:
            try:
                out += label_items(engine, [item], [policy], max_content_chars=max_content_chars, stats=local)
                continue
            except Exception as raised:
                exc = raised
        check_engine(engine, policy)
        log.warning("item %s under policy %s: engine raised %s; writing an error verdict",
                    item.content_id, policy.name, _short(exc))
        verdict = error_verdict(
            content_id=item.content_id, policy=policy.name, policy_version=policy.version or 0,
            status=ENGINE_ERROR, error=f"engine raised {_short(exc, 500)}",
            source=item.source, content_hash=item.content_hash, model=engine.model_name,
        )
        out.append(verdict)
    _count_item(stats, local, out)
    return out


class EngineSlot:
    """The engine a labeller uses now, and a fresh one when it dies (built by `build`). More than
    `max_restarts` deaths in a row with nothing labelled between them raise EngineUnhealthy: then
    something other than one input is wrong (isolating one killer among n items takes log2(n) + 1)."""

    def __init__(self, build: Callable[[], Engine], *, max_restarts: int = 16, engine: Engine | None = None):
        self.build = build
        self.max_restarts = max_restarts
        self.engine = engine if engine is not None else build()
        self.restarts = 0  # in all, for the report
        self.in_a_row = 0  # since the engine last labelled something
        self.reasons: list[str] = []

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def restart(self, reason: str) -> Engine:
        self.reasons.append(reason)
        if self.in_a_row >= self.max_restarts:
            raise EngineUnhealthy(f"the engine died {self.in_a_row + 1} times in a row (last: {reason}); "
                                  "not restarting it again")
        self.close()
        self.restarts += 1
        self.in_a_row += 1
        log.warning("engine died (%s); starting a fresh one (restart %d)", reason, self.restarts)
        self.engine = self.build()
        return self.engine

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception as exc:  # noqa: BLE001 - closing a dead engine: its own error says nothing new
                log.warning("closing the dead engine: %s", _short(exc))


def label_isolating(slot: EngineSlot, items: Sequence[ContentItem], policies: Sequence[Policy], *,
                    max_content_chars: int, stats: LabelStats | None = None) -> list[Verdict]:
    """label_chunk on the slot's engine, surviving inputs that kill the engine: when it dies, a fresh
    engine is started and the items in flight are retried in halves until the one that kills it is
    alone (then each of its policies alone); that (item, policy) gets an error verdict with the
    engine's reason, everything else is labelled. Ordered by item then policy, like label_chunk."""
    try:
        verdicts = label_chunk(slot.engine, items, policies, max_content_chars=max_content_chars, stats=stats)
        slot.in_a_row = 0
        return verdicts
    except (EngineDied, EngineUnhealthy) as exc:
        reason = _short(exc, 500)
        slot.restart(reason)
    if len(items) > 1:
        half = len(items) // 2
        log.warning("the engine died on %d items; retrying them in halves to find the one that kills it", len(items))
        return (label_isolating(slot, items[:half], policies, max_content_chars=max_content_chars, stats=stats)
                + label_isolating(slot, items[half:], policies, max_content_chars=max_content_chars, stats=stats))
    item = items[0]
    if len(policies) > 1:
        local = LabelStats()
        out = [v for p in policies
               for v in label_isolating(slot, [item], [p], max_content_chars=max_content_chars, stats=local)]
        _count_item(stats, local, out)
        return out
    policy = policies[0]
    log.warning("item %s under policy %s kills the engine (%s): writing an error verdict", item.content_id,
                policy.name, reason)
    verdict = error_verdict(
        content_id=item.content_id, policy=policy.name, policy_version=policy.version or 0, status=ENGINE_ERROR,
        error=f"the engine died labelling this item (it was restarted; the other items were labelled): {reason}",
        source=item.source, content_hash=item.content_hash, model=slot.model_name,
    )
    if stats is not None:
        stats.items += 1
        stats.add([verdict])
    return [verdict]


def _count_item(stats: LabelStats | None, local: LabelStats, out: list) -> None:
    """Add one item's requests, tokens and verdicts (labelled one policy at a time) to `stats`."""
    if stats is not None:
        stats.items += 1
        stats.requests += local.requests
        stats.prompt_tokens += local.prompt_tokens
        stats.cached_prompt_tokens += local.cached_prompt_tokens
        stats.completion_tokens += local.completion_tokens
        stats.add(out)


def check_engine(engine: Engine, policy: Policy) -> None:
    """Raise EngineUnhealthy unless the engine answers a trivial request."""
    try:
        result = engine.complete([LabelRequest(key=0, policy=policy, content=CANARY_TEXT)])
    except Exception as exc:
        raise EngineUnhealthy(f"engine failed a canary request after a row error: {_short(exc)}") from exc
    if len(result) != 1:
        raise EngineUnhealthy(f"engine returned {len(result)} completions for one canary request")


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
