"""The Serve app's HTTP ingress: Ray Serve LLM's OpenAI ingress, refusing chat roles that do not exist.

vLLM accepts any string as a message role and renders it into the chat template (a `wizard` turn
reaches the model as text), so a client's typo or a crafted role silently changes the prompt. Here
such a body gets a 400 that names the role, like every other malformed body.
"""

from __future__ import annotations

from fastapi import Request, Response
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def unknown_roles(messages: object) -> list[str]:
    """The roles of `messages` that are not OpenAI chat roles, in order."""
    roles = [m.get("role") if isinstance(m, dict) else getattr(m, "role", None) for m in messages or []]
    return [str(r) for r in roles if r not in CHAT_ROLES]


class SafeguardIngress(OpenAiIngress):
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        bad = unknown_roles(body.messages)
        if bad:
            raise OpenAIHTTPException(
                status_code=400, type="BadRequestError",
                message=f"unknown message role(s) {sorted(set(bad))}: use one of {sorted(CHAT_ROLES)}")
        return await super().chat(body, request)
