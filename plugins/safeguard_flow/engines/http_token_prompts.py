"""Content stays text over HTTP: chat-template prompts go to the server as token ids.

vLLM's /v1/chat/completions renders messages through the chat template and tokenises the result as
one string, so `<|im_end|><|im_start|>assistant` typed in a post becomes real control tokens (a forged
turn); no request field changes that (vLLM has no split_special_tokens). So for chat-template models
OpenAIEngine renders the prompt here exactly as the in-process engine does
(`prompts.chat_prompt_tokens`: the template's own pieces may hold special tokens, the policy and the
content are encoded as text) and sends the ids to /v1/completions, which takes them as they are.
Harmony (gpt-oss) models keep /v1/chat/completions: vLLM renders harmony with openai_harmony, which
encodes message text as ordinary text.

This module holds the conversion: the tokenizer (the local model folder, else model.name from the
Hugging Face cache), the chat request body as a completions body, and the completions answer as the
fields OpenAIEngine reads.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from safeguard_flow.engines.base import EngineError
from safeguard_flow.settings import Settings


def tokenizer_source(settings: Settings) -> str:
    """Where the tokenizer is: the prepared local folder of a known model key, a local path, or the
    name as a Hugging Face id (its cache; HF_HUB_OFFLINE applies). Never downloads model weights."""
    from safeguard_flow.models.local import KNOWN_MODELS, TINY_KEY, model_dir

    name = settings.model.name
    if name in KNOWN_MODELS or name == TINY_KEY:
        folder = model_dir(settings, name)
        if not folder.exists():
            raise EngineError(f"engine.kind=openai renders {name}'s chat template itself (so content cannot "
                              f"open a chat turn) and needs its tokenizer: run `safeguard-flow model prepare` "
                              f"({folder} is missing)")
        return str(folder)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


@functools.lru_cache(maxsize=4)
def _load_tokenizer(source: str) -> Any:
    """One tokenizer per model in a process (engines come and go; loading takes seconds)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


class TokenPrompts:
    """The chat-template prompt of (policy, content) as token ids; the tokenizer loads on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                source = tokenizer_source(self.settings)
                try:
                    self._tokenizer = _load_tokenizer(source)
                except (OSError, ValueError) as exc:
                    raise EngineError(f"engine.kind=openai needs the tokenizer of model.name={self.settings.model.name!r} "
                                      f"here (it renders the chat template itself so content cannot open a turn): "
                                      f"{type(exc).__name__}: {str(exc)[:300]}") from None
            return self._tokenizer

    def ids(self, policy: Any, content: str) -> list[int]:
        from safeguard_flow.domain import prompts

        tokenizer = self.tokenizer
        with _ENCODE_LOCK:
            return prompts.chat_prompt_tokens(tokenizer, policy, content)

    def count(self, text: str) -> int:
        tokenizer = self.tokenizer
        with _ENCODE_LOCK:
            return len(tokenizer.encode(text, add_special_tokens=False))


# A fast tokenizer's split_special_tokens is a switch on the shared Rust tokenizer, flipped for the
# call: two threads encoding at once (the engine's pool) could read a post's control tokens as
# tokens, or split the template's own. So encoding is one thread at a time (microseconds per prompt).
_ENCODE_LOCK = threading.Lock()


def completions_body(chat_body: dict[str, Any], prompt_ids: list[int]) -> dict[str, Any]:
    """The /v1/completions arguments for a chat.completions body (same sampling and constraints)."""
    body = {k: v for k, v in chat_body.items() if k not in ("messages", "response_format", "logprobs", "top_logprobs",
                                                              "reasoning_effort")}
    body["prompt"] = prompt_ids
    extra = dict(chat_body.get("extra_body") or {})
    fmt = chat_body.get("response_format")
    if fmt and fmt.get("type") == "json_schema" and "structured_outputs" not in extra:
        extra["structured_outputs"] = {"json": fmt["json_schema"]["schema"]}
    if chat_body.get("logprobs"):
        # Completions take the number of top alternatives (0: only the sampled token's, plus any
        # logprob_token_ids the caller asked for in extra_body).
        body["logprobs"] = int(chat_body.get("top_logprobs") or 0)
    if extra:
        body["extra_body"] = extra
    return body


class CompletionAsChat:
    """A /v1/completions answer shaped like the chat answer OpenAIEngine reads (choices[0].message,
    finish_reason, usage, logprobs.content[i].token/logprob/top_logprobs)."""

    def __init__(self, resp: Any):
        choice = resp.choices[0]
        self.usage = getattr(resp, "usage", None)
        self.choices = [_Choice(choice)]


class _Message:
    def __init__(self, text: str | None):
        self.content = text
        self.model_extra: dict[str, Any] = {}


class _TopLogprob:
    def __init__(self, token: str, logprob: float):
        self.token, self.logprob = token, logprob


class _TokenLogprob(_TopLogprob):
    def __init__(self, token: str, logprob: float | None, top: dict[str, float] | None):
        super().__init__(token, logprob)
        self.top_logprobs = [_TopLogprob(t, lp) for t, lp in (top or {}).items()]


class _Logprobs:
    def __init__(self, lp: Any):
        tokens = list(getattr(lp, "tokens", None) or [])
        values = list(getattr(lp, "token_logprobs", None) or [None] * len(tokens))
        tops = list(getattr(lp, "top_logprobs", None) or [None] * len(tokens))
        self.content = [_TokenLogprob(t, v, top) for t, v, top in zip(tokens, values, tops)]


class _Choice:
    def __init__(self, choice: Any):
        self.message = _Message(choice.text)
        self.finish_reason = choice.finish_reason
        lp = getattr(choice, "logprobs", None)
        self.logprobs = _Logprobs(lp) if lp is not None else None
