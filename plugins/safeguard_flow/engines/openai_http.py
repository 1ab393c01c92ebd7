"""OpenAI-compatible HTTP engine: a vLLM server, a Ray Serve LLM app, or any /v1/chat/completions.

Built on the `openai` SDK: its client does the timeouts and the retries (engine.max_retries; it
retries connection errors, 408, 409, 429 and 5xx with exponential backoff, jitter and Retry-After).
A back-pressure refusal (429/503 with Retry-After) is resent for as long as engine.timeout_s allows.
Bounded concurrency is a thread pool of engine.concurrency. A 4xx for one request (prompt too long,
bad schema) becomes that request's error; a server that cannot be reached at all, or that refuses
our credentials or model, fails the whole call with EngineError so a batch job stops instead of
writing a run full of error verdicts.

Content is text on this path too (http_token_prompts.py): for chat-template models the prompt is
rendered here, the content encoded as text, and sent as token ids to /v1/completions (vLLM's chat
route would read control tokens typed in a post as turns); the answer is read like a chat answer.

Harmony (gpt-oss) models: the server renders harmony itself (the system message becomes the
developer instructions, `reasoning_effort` the system message) and turns the choice / JSON schema
into a structural tag on the final channel; the answer is `content`, the chain of thought comes back
in `reasoning` (older vLLM: `reasoning_content`). A reasoning model cut off by its output budget is
asked once more with a larger budget.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from safeguard_flow.models import presets as model_presets
from safeguard_flow.domain import prompts
from safeguard_flow.domain.label_probability import TokenStep, label_probabilities
from safeguard_flow.domain.policies import OutputFormat
from safeguard_flow.engines.base import Completion, EngineError, LabelRequest
from safeguard_flow.engines.http_token_prompts import CompletionAsChat, TokenPrompts, completions_body
from safeguard_flow.domain.policies import Policy
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

_RETRIED_STATUS = {408, 409, 429}  # and every 5xx: the SDK retries these before we see them
_FATAL_STATUS = {401, 403, 404}  # wrong key, wrong URL or unknown model: every request would fail
_OVERLOAD_STATUS = {429, 503}  # with Retry-After: back-pressure, resent until engine.timeout_s
TOP_LOGPROBS = 20  # label token ids unknown (no /tokenize): the top-k (vLLM's default max_logprobs)


class _Fatal(Exception):
    """Raised inside a worker thread; turned into EngineError by complete()."""


class OpenAIEngine:
    def __init__(self, settings: Settings, *, base_url: str | None = None):
        import openai

        self.settings = settings
        e = settings.engine
        url = (base_url or e.base_url).rstrip("/")
        if not url:
            raise EngineError("engine.kind=openai needs engine.base_url (SAFEGUARD_ENGINE__BASE_URL), "
                              "for example http://127.0.0.1:8000/v1")
        if not url.startswith(("http://", "https://")):
            raise EngineError(f"engine.base_url {mask_url(url)!r} must start with http:// or https://")
        self.base_url = url
        self.model_name = settings.model.name
        # No local vLLM needed to decide: an HTTP client sends what the remote model's preset says.
        self.resolved = model_presets.resolve(settings, on_cpu=False)
        self.harmony = self.resolved.harmony
        self._concurrency = e.concurrency
        self._max_retries = e.max_retries
        self._client = openai.OpenAI(
            base_url=url,
            api_key=e.api_key or "EMPTY",
            timeout=openai.Timeout(e.timeout_s, connect=min(10.0, e.timeout_s)),
            max_retries=e.max_retries,
        )
        self._closed = threading.Event()
        # Chat-template models: token-id prompts rendered here (None: harmony, the server renders it).
        self._token_prompts = None if self.harmony else TokenPrompts(settings)
        self._label_ids: dict[tuple[int, ...], list[int] | None] = {}
        self._label_ids_lock = threading.Lock()

    # --- Engine protocol --------------------------------------------------------------------------

    def complete(self, requests: Sequence[LabelRequest]) -> list[Completion]:
        if not requests:
            return []
        # Submitted in order (grouped by policy), so the server's prefix cache sees each policy in turn.
        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(requests)),
                                thread_name_prefix="sg-openai") as pool:
            futures = [pool.submit(self._one, req) for req in requests]
            results: list[Completion] = []
            for fut in futures:
                try:
                    results.append(fut.result())
                except _Fatal as exc:
                    self._closed.set()  # the other workers stop sending
                    for f in futures:
                        f.cancel()
                    raise EngineError(str(exc)) from None
        return results

    def label_token_ids(self, policy: Policy) -> list[int] | None:
        """The ids of the tokens spelling the policy's labels, from the server's /tokenize (vLLM), so the
        server returns their logprobs at every position (`logprob_token_ids`); None elsewhere (top-k)."""
        with self._label_ids_lock:
            if policy.labels not in self._label_ids:
                self._label_ids[policy.labels] = self._digit_token_ids(policy.labels)
            return self._label_ids[policy.labels]

    def _digit_token_ids(self, labels: tuple[int, ...]) -> list[int] | None:
        import httpx

        url = self.base_url.removesuffix("/v1") + "/tokenize"
        ids: list[int] = []
        try:
            for label in labels:
                resp = httpx.post(url, json={"model": self.model_name, "prompt": str(label), "add_special_tokens": False,
                                             "return_token_strs": True},
                                  headers={"Authorization": f"Bearer {self.settings.engine.api_key}"},
                                  timeout=self.settings.engine.timeout_s)
                body = resp.json() if resp.status_code == 200 else {}
                tokens, strs = body.get("tokens"), body.get("token_strs")
                if not (isinstance(tokens, list) and isinstance(strs, list) and "".join(strs) == str(label)
                        and all(isinstance(t, str) and t.isdigit() for t in strs)):
                    return None
                ids += [t for t in tokens if t not in ids]
        except (httpx.HTTPError, ValueError):
            return None
        return ids

    def count_tokens(self, text: str) -> int:
        """The server's tokenizer (vLLM's POST /tokenize, beside /v1); servers without it get a
        pessimistic estimate (one token per 2 UTF-8 bytes), so windows err on the short side."""
        import httpx

        if self._token_prompts is not None:  # the tokenizer is here already
            return self._token_prompts.count(text)
        if getattr(self, "_tokenize_url", "") is not None:
            url = self._tokenize_url if hasattr(self, "_tokenize_url") else self.base_url.removesuffix("/v1") + "/tokenize"
            try:
                # Not an OpenAI API route, so not through the SDK client: a plain POST beside /v1.
                resp = httpx.post(url, json={"model": self.model_name, "prompt": text, "add_special_tokens": False},
                                  headers={"Authorization": f"Bearer {self.settings.engine.api_key}"},
                                  timeout=self.settings.engine.timeout_s)
                if resp.status_code == 200 and isinstance(resp.json().get("count"), int):
                    self._tokenize_url = url
                    return int(resp.json()["count"])
            except (httpx.HTTPError, ValueError):
                pass
            self._tokenize_url = None  # not offered: estimate from now on
        return len(text.encode("utf-8")) // 2 + 1

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    def __enter__(self) -> OpenAIEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 60.0, interval_s: float = 1.0) -> None:
        """Block until GET {base_url}/models answers (servers load the model before that)."""
        import openai

        deadline = time.monotonic() + timeout_s
        last = "no answer"
        probe = self._client.with_options(max_retries=0, timeout=5.0)
        while time.monotonic() < deadline:
            try:
                probe.models.list()
                return
            except openai.APIStatusError as exc:
                last = f"HTTP {exc.status_code}"
            except openai.APIError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(interval_s)
        raise EngineError(f"server at engine.base_url={mask_url(self.base_url)} not ready after {timeout_s:.0f}s ({last})")

    # --- internals --------------------------------------------------------------------------------

    def request_body(self, policy: Policy, content: str, max_tokens: int | None = None) -> dict[str, Any]:
        """The chat.completions.create arguments; vLLM's own fields travel in `extra_body`."""
        v = self.resolved.values
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": prompts.chat_messages(policy, content),
            "temperature": v["temperature"],
            "top_p": v["top_p"],
            "max_tokens": max_tokens or self.resolved.max_tokens_for(policy.reasoning_effort.value),
            "seed": 0,
            # The label tokens' logprobs measure the chosen label's probability (see label_probability.py).
            "logprobs": True,
        }
        extra_body: dict[str, Any] = {}
        if (label_ids := self.label_token_ids(policy)) is not None:
            extra_body["logprob_token_ids"] = label_ids  # vLLM's: exactly these ids at every position
        else:
            body["top_logprobs"] = TOP_LOGPROBS
        if self.harmony:
            body["reasoning_effort"] = policy.reasoning_effort.value
        if self.settings.model.structured_outputs:
            choice = prompts.choices(policy)
            if choice is not None:
                # vLLM's extension; the standard response_format has no "one of these strings".
                extra_body["structured_outputs"] = {"choice": choice}
            elif self.harmony and (grammar := _compact_json_grammar(policy)) is not None:
                # vLLM's server puts this into the final channel of its harmony structural tag; a JSON
                # schema there would allow free whitespace (see prompts.compact_json_grammar).
                extra_body["structured_outputs"] = {"grammar": grammar}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "verdict", "schema": prompts.json_schema(policy), "strict": True},
                }
        if extra_body:
            body["extra_body"] = extra_body
        if self._token_prompts is not None:
            body = completions_body(body, self._token_prompts.ids(policy, content))
        return body

    def _one(self, req: LabelRequest) -> Completion:
        first = self._send(self.request_body(req.policy, req.content), req.policy)
        if not (self.harmony and first.error is None and first.finish_reason == "length"):
            return first
        # A reasoning model ran out of budget (usually mid-analysis): once more with a larger one.
        budget = self.resolved.max_tokens_for(req.policy.reasoning_effort.value)
        room = self.resolved.values["max_model_len"] - first.prompt_tokens
        bigger = min(budget * self.resolved.retry_factor, room) if first.prompt_tokens else budget * 2
        if bigger <= budget:
            return first
        retried = self._send(self.request_body(req.policy, req.content, max_tokens=bigger), req.policy)
        if retried.error is None:
            retried.completion_tokens += first.completion_tokens
            return retried
        return first

    def _send(self, body: dict[str, Any], policy: Policy | None = None) -> Completion:
        """One answer. A refusal that says when to come back (429/503 with Retry-After: a Serve replica
        or proxy under back-pressure) is resent after that wait, with jitter, for up to
        engine.timeout_s from the first send: overload delays a verdict, it does not cost one. Other
        failures get the SDK's engine.max_retries."""
        import openai

        deadline = time.monotonic() + self.settings.engine.timeout_s
        refusals = 0
        while True:
            if self._closed.is_set():
                return Completion(error="engine closed before the request was sent")
            try:
                resp = (CompletionAsChat(self._client.completions.create(**body)) if "prompt" in body
                        else self._client.chat.completions.create(**body))
                return _to_completion(resp, policy, self.harmony,
                                      exhaustive="logprob_token_ids" in body.get("extra_body", {}))
            except openai.APIStatusError as exc:
                wait = _retry_after(exc) if exc.status_code in _OVERLOAD_STATUS else None
                if wait is not None and time.monotonic() + wait < deadline:
                    refusals += 1
                    self._closed.wait(wait * (1 + 0.25 * random.random()))  # jitter: not all at once
                    continue
                return self._status_error(exc, refusals)
            except openai.APITimeoutError:
                return Completion(error=f"timed out after engine.timeout_s={self.settings.engine.timeout_s}s "
                                        f"(after {self._max_retries + 1} attempts)")
            except openai.APIConnectionError as exc:
                raise _Fatal(f"cannot connect to {mask_url(self.base_url)}: {exc.__cause__ or exc} (after "
                             f"{self._max_retries + 1} attempts; is the server running at engine.base_url?)") from None
            except (openai.APIResponseValidationError, ValueError) as exc:
                return Completion(error=f"unreadable response from server ({type(exc).__name__}): {str(exc)[:300]}")

    def _status_error(self, exc: Any, refusals: int) -> Completion:
        detail = _error_detail(exc)
        if exc.status_code in _FATAL_STATUS:
            raise _Fatal(f"{self.base_url}/chat/completions answered HTTP {exc.status_code} for model "
                         f"{self.model_name!r} (check engine.base_url, engine.api_key, model.name): "
                         f"{detail}") from None
        retried = exc.status_code in _RETRIED_STATUS or exc.status_code >= 500
        suffix = f" (after {self._max_retries + 1} attempts)" if retried else ""
        if refusals:
            suffix = (f" (refused for overload {refusals + 1} times within engine.timeout_s="
                      f"{self.settings.engine.timeout_s}s)")
        return Completion(error=f"HTTP {exc.status_code}: {detail}{suffix}")


def _retry_after(exc: Any) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form), or None when the server gave none."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _compact_json_grammar(policy: Policy) -> str | None:
    try:
        return prompts.compact_json_grammar(policy)
    except ImportError:  # no xgrammar where this client runs: the server's JSON schema path instead
        return None


def _to_completion(resp: Any, policy: Policy | None = None, harmony: bool = False,
                   exhaustive: bool = False) -> Completion:
    try:
        choice = resp.choices[0]
        message = choice.message
    except (AttributeError, IndexError, TypeError) as exc:
        return Completion(error=f"unreadable response from server ({type(exc).__name__}): {str(resp)[:300]}")
    extra = getattr(message, "model_extra", None) or {}
    usage = getattr(resp, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    return Completion(
        text=message.content,
        analysis=extra.get("reasoning") or extra.get("reasoning_content"),
        finish_reason=choice.finish_reason,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cached_prompt_tokens=int(getattr(details, "cached_tokens", 0) or 0),
        label_probs=_label_probs(getattr(choice, "logprobs", None), policy, harmony, exhaustive),
    )


def _label_probs(logprobs: Any, policy: Policy | None, harmony: bool, exhaustive: bool) -> dict[int, float] | None:
    """From chat-completions logprobs: for harmony they cover every output token, the analysis and the
    channel headers included, so the label is found after the last final-channel header."""
    content = getattr(logprobs, "content", None)
    if policy is None or not content:
        return None
    steps = []
    for tok in content:
        candidates = {t.token: t.logprob for t in (tok.top_logprobs or [])}
        if tok.logprob is not None:
            candidates[tok.token] = tok.logprob
        steps.append(TokenStep(tok.token, candidates))
    return label_probabilities(steps, policy.labels, json_answer=policy.output_format is not OutputFormat.BINARY,
                               harmony=harmony, exhaustive=exhaustive)


def _error_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    if body is not None:
        return str(body)[:500]
    response = getattr(exc, "response", None)
    return (response.text[:300] if response is not None else "") or str(exc)[:300]
