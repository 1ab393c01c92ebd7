"""The Serve app's HTTP ingress: Ray Serve LLM's OpenAI ingress, narrowed to what the project uses.

Ray's own ingress answers every OpenAI route (/v1/completions, /tokenize, /v1/embeddings, ...) with
CORS `*` and no authentication. Ours (`make_ingress_app` + `SafeguardIngress`):

- checks a bearer key on every request (ray.serve_api_keys; the app holds only their SHA-256, compared
  in constant time): 401 without one or with a wrong one;
- refuses a body over ray.serve_max_body_bytes with 413, from Content-Length before reading, or while
  reading a body sent without one;
- sends no CORS headers (the clients are servers, not browsers);
- exposes /v1/models and the one generation route our OpenAIEngine uses for the model
  (`routes_for`): /v1/completions with token-id prompts for chat-template models (the engine renders
  the template itself with the content as text, so control tokens in a post cannot open a turn; a
  string prompt is refused, as vLLM would read control tokens in it), /v1/chat/completions for
  harmony models (vLLM renders harmony with the content as text) with unknown roles refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Iterable

from fastapi import FastAPI, Request, Response
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def routes_for(harmony: bool) -> dict[str, Any]:
    """Ray's endpoint map, reduced to the model list and the route the engine uses for this model."""
    generate = ("chat", lambda app: app.post("/v1/chat/completions")) if harmony else \
        ("completions", lambda app: app.post("/v1/completions"))
    return {"models": lambda app: app.get("/v1/models"), generate[0]: generate[1]}


class RequestGuard:
    """ASGI middleware: the bearer key, then the body size, before anything else runs."""

    def __init__(self, app: Any, key_hashes: Iterable[str], max_body_bytes: int):
        self.app = app
        self.key_hashes = tuple(key_hashes)
        self.max_body_bytes = max_body_bytes

    def _authorised(self, header: bytes | None) -> bool:
        if not self.key_hashes:
            return True
        value = (header or b"").decode("latin-1")
        if not value.lower().startswith("bearer "):
            return False
        presented = key_hash(value[7:].strip())
        return any(hmac.compare_digest(presented, h) for h in self.key_hashes)  # no early exit on a match

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if not self._authorised(headers.get(b"authorization")):
            return await _error(send, 401, "AuthenticationError", "a valid API key is required (Authorization: Bearer <key>)",
                                [(b"www-authenticate", b"Bearer")])
        try:
            declared = int(headers.get(b"content-length") or 0)
        except ValueError:
            return await _error(send, 400, "BadRequestError", "invalid Content-Length")
        if declared > self.max_body_bytes:
            return await _error(send, 413, "RequestTooLarge", self._too_large())
        # Read the body here (at most max_body_bytes), then hand it on: a body sent without a length
        # is refused as soon as it passes the bound, before any handler sees a byte of it.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                return await _error(send, 413, "RequestTooLarge", self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, when it comes

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"the request body is larger than ray.serve_max_body_bytes={self.max_body_bytes}"


async def _error(send: Any, status: int, kind: str, message: str, extra: list | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def make_ingress_app(key_hashes: Iterable[str], max_body_bytes: int) -> FastAPI:
    """Ray's ingress FastAPI app (its error handling, metrics and request ids) without the CORS
    middleware, with the RequestGuard outermost."""
    from ray.llm._internal.serve.core.ingress.middleware import (
        SetRequestIdMiddleware,
        add_exception_handling_middleware,
    )
    from ray.llm._internal.serve.observability.metrics.fast_api_metrics import (
        add_http_metrics_middleware,
        metrics_lifespan,
    )

    app = FastAPI(lifespan=metrics_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    add_exception_handling_middleware(app)
    add_http_metrics_middleware(app)
    app.add_middleware(SetRequestIdMiddleware)
    app.add_middleware(RequestGuard, key_hashes=tuple(key_hashes), max_body_bytes=max_body_bytes)  # runs first
    return app


def unknown_roles(messages: object) -> list[str]:
    """The roles of `messages` that are not OpenAI chat roles, in order."""
    roles = [m.get("role") if isinstance(m, dict) else getattr(m, "role", None) for m in messages or []]
    return [str(r) for r in roles if r not in CHAT_ROLES]


def is_token_prompt(prompt: object) -> bool:
    """One prompt of token ids (a list of ints), or a batch of them."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return True
    return isinstance(prompt, list) and bool(prompt) and all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt)


class SafeguardIngress(OpenAiIngress):
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        if not is_token_prompt(body.prompt):
            raise OpenAIHTTPException(
                status_code=400, type="BadRequestError",
                message="the prompt must be token ids: a text prompt would read control tokens in the content")
        return await super().completions(body, request)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        bad = unknown_roles(body.messages)
        if bad:
            raise OpenAIHTTPException(
                status_code=400, type="BadRequestError",
                message=f"unknown message role(s) {sorted(set(bad))}: use one of {sorted(CHAT_ROLES)}")
        return await super().chat(body, request)
