"""The one small protocol every engine implements, and the types that cross it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from safeguard_flow.domain.policies import Policy


@dataclass(frozen=True)
class LabelRequest:
    """One (content, policy) pair, with the content already checked and clipped."""

    key: int  # position in the caller's list; completions come back in the same order
    policy: Policy
    content: str


@dataclass
class Completion:
    """What the engine produced for one request. `error` set means no usable output."""

    text: str | None = None  # the final answer (harmony `final` channel, or the whole reply)
    analysis: str | None = None  # harmony `analysis` channel (chain of thought), if any
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached_prompt_tokens: int = 0
    # {label: probability} measured from the logprobs of the label's tokens (domain/label_probability.py);
    # None when the engine gave no logprobs or the answer holds no label.
    label_probs: dict[int, float] | None = None


@runtime_checkable
class Engine(Protocol):
    model_name: str

    def complete(self, requests: Sequence[LabelRequest]) -> list[Completion]:
        """One completion per request, in order. Never raises for one bad request: sets `error`."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes as message content for this engine's model (from its tokenizer):
        labelling cuts content longer than the context into windows with it."""
        ...

    def close(self) -> None: ...


class EngineError(RuntimeError):
    """The engine as a whole failed (not one request): start-up, connection, configuration."""


class EngineDied(EngineError):
    """The engine itself died while labelling (vLLM's EngineDeadError, a crashed engine core): it must be
    restarted, and whatever was in flight retried on the fresh one (labelling/chunk.py isolates the
    input that killed it). The message is the engine's reason."""
