"""OpenAI-compatible HTTP engine: a vLLM server, a Ray Serve LLM app, or any /v1/chat/completions.

Bounded concurrency (a thread pool of engine.concurrency), per-request timeouts, retries with
exponential backoff on connection errors, 429 and 5xx. A 4xx for one request (prompt too long,
bad schema) becomes that request's error; a server that cannot be reached at all, or that refuses
our credentials or model, fails the whole call with EngineError so a batch job stops instead of
writing a run full of error verdicts.

Harmony (gpt-oss) models: the server renders harmony itself (the system message becomes the
developer instructions, `reasoning_effort` the system message); the answer is `content`, the
chain of thought comes back in `reasoning` (older vLLM: `reasoning_content`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx

from safeguard_flow import prompts
from safeguard_flow.engines.base import Completion, EngineError, LabelRequest
from safeguard_flow.policies import Policy
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_FATAL_STATUS = {401, 403, 404}  # wrong key, wrong URL or unknown model: every request would fail
_MAX_RETRY_AFTER_S = 30.0


class _Fatal(Exception):
    """Raised inside a worker thread; turned into EngineError by complete()."""


class OpenAIEngine:
    def __init__(self, settings: Settings, *, base_url: str | None = None, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        e = settings.engine
        url = (base_url or e.base_url).rstrip("/")
        if not url:
            raise EngineError("engine.kind=openai needs engine.base_url (SAFEGUARD_ENGINE__BASE_URL), "
                              "for example http://127.0.0.1:8000/v1")
        if not url.startswith(("http://", "https://")):
            raise EngineError(f"engine.base_url {url!r} must start with http:// or https://")
        self.base_url = url
        self.model_name = settings.model.name
        self.harmony = prompts.is_harmony_model(settings.model.name, settings.model.prompt_format)
        self._concurrency = e.concurrency
        self._max_retries = e.max_retries
        self._backoff_s = e.backoff_s
        headers = {"Authorization": f"Bearer {e.api_key}"} if e.api_key else {}
        self._client = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(e.timeout_s, connect=min(10.0, e.timeout_s)),
            limits=httpx.Limits(max_connections=e.concurrency, max_keepalive_connections=e.concurrency),
            transport=transport,
        )
        self._closed = threading.Event()

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
                    self._closed.set()  # the other workers stop retrying
                    for f in futures:
                        f.cancel()
                    raise EngineError(str(exc)) from None
        return results

    def count_tokens(self, text: str) -> int:
        """The server's tokenizer (vLLM's POST /tokenize, beside /v1); servers without it get a
        pessimistic estimate (one token per 2 UTF-8 bytes), so windows err on the short side."""
        if getattr(self, "_tokenize_url", "") is not None:
            url = self._tokenize_url if hasattr(self, "_tokenize_url") else self.base_url.removesuffix("/v1") + "/tokenize"
            try:
                resp = self._client.post(url, json={"model": self.model_name, "prompt": text,
                                                    "add_special_tokens": False})
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
        """Block until GET {base_url}/models answers 200 (servers load the model before that)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = self._client.get("/models", timeout=5.0)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(interval_s)
        raise EngineError(f"server at engine.base_url={self.base_url} not ready after {timeout_s:.0f}s ({last})")

    # --- internals --------------------------------------------------------------------------------

    def request_body(self, policy: Policy, content: str) -> dict[str, Any]:
        m = self.settings.model
        body: dict[str, Any] = {
            "model": m.name,
            "messages": prompts.chat_messages(policy, content),
            "temperature": m.temperature,
            "max_tokens": m.max_tokens,
            "seed": 0,
        }
        if self.harmony:
            body["reasoning_effort"] = policy.reasoning_effort.value
        if m.structured_outputs:
            choice = prompts.choices(policy)
            if choice is not None:
                # vLLM's extension; the standard response_format has no "one of these strings".
                body["structured_outputs"] = {"choice": choice}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "verdict", "schema": prompts.json_schema(policy), "strict": True},
                }
        return body

    def _one(self, req: LabelRequest) -> Completion:
        body = self.request_body(req.policy, req.content)
        attempt = 0
        while True:
            if self._closed.is_set():
                return Completion(error="engine closed before the request was sent")
            retry_after: float | None = None
            try:
                resp = self._client.post("/chat/completions", json=body)
            except httpx.ConnectError as exc:
                problem, fatal = f"cannot connect to {self.base_url}: {exc}", True
            except httpx.TimeoutException as exc:
                problem, fatal = f"timed out after engine.timeout_s={self.settings.engine.timeout_s}s " \
                                 f"({type(exc).__name__})", False
            except httpx.TransportError as exc:
                problem, fatal = f"transport error talking to {self.base_url}: {type(exc).__name__}: {exc}", False
            else:
                if resp.status_code == 200:
                    return self._parse(resp)
                detail = _error_detail(resp)
                if resp.status_code in _FATAL_STATUS:
                    raise _Fatal(f"{self.base_url}/chat/completions answered HTTP {resp.status_code} for model "
                                 f"{self.model_name!r} (check engine.base_url, engine.api_key, model.name): {detail}")
                if resp.status_code not in _RETRY_STATUS:
                    return Completion(error=f"HTTP {resp.status_code}: {detail}")
                problem, fatal = f"HTTP {resp.status_code}: {detail}", False
                retry_after = _retry_after(resp)
            if attempt >= self._max_retries:
                if fatal:
                    raise _Fatal(f"{problem} (after {attempt + 1} attempts; is the server running at "
                                 f"engine.base_url?)")
                return Completion(error=f"{problem} (after {attempt + 1} attempts)")
            delay = retry_after if retry_after is not None else self._backoff_s * (2 ** attempt)
            delay *= 1.0 + random.uniform(0.0, 0.1)  # jitter so concurrent retries spread out
            log.info("request failed (%s); retry %d/%d in %.2fs", problem, attempt + 1, self._max_retries, delay)
            if self._closed.wait(delay):
                return Completion(error=f"engine closed while retrying: {problem}")
            attempt += 1

    def _parse(self, resp: httpx.Response) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Completion(error=f"unreadable response from server ({type(exc).__name__}): {resp.text[:300]}")
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            text=message.get("content"),
            analysis=message.get("reasoning") or message.get("reasoning_content"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_prompt_tokens=int(details.get("cached_tokens") or 0),
        )


def _error_detail(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(data)[:500]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_S)
    except ValueError:
        return None
