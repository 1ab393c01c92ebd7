"""The prompt contract: how a (policy, content) pair is put to the model, and how the answer comes back.

gpt-oss-safeguard models speak the harmony format: the policy goes in the developer message,
``Reasoning: low|medium|high`` in the system message, the content in the user message, and the
answer is the ``final`` channel (the ``analysis`` channel holds the chain of thought). Any other
chat model gets system = policy, user = content, rendered by its own chat template.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from safeguard_flow.policies import OutputFormat, Policy

FORMAT_INSTRUCTIONS = {
    OutputFormat.BINARY: "Answer with exactly one character: 1 if the content violates the policy, 0 if it does not.",
    OutputFormat.JSON: (
        'Answer with one JSON object and nothing else: {"violation": 0 or 1, "policy_category": '
        "the matching category name, or null when the content is safe}."
    ),
    OutputFormat.JSON_RATIONALE: (
        'Answer with one JSON object and nothing else: {"violation": 0 or 1, "policy_category": '
        'the matching category name or null, "rationale": one short sentence citing the policy}.'
    ),
}


def system_prompt(policy: Policy) -> str:
    """The policy text followed by a one-line reminder of the output format it asks for."""
    return f"{policy.text}\n\n{FORMAT_INSTRUCTIONS[policy.output_format]}"


def chat_messages(policy: Policy, content: str) -> list[dict[str, str]]:
    """For non-harmony chat models: system = policy, user = content."""
    return [
        {"role": "system", "content": system_prompt(policy)},
        {"role": "user", "content": content},
    ]


def json_schema(policy: Policy) -> dict[str, Any] | None:
    """The JSON schema for constrained decoding, or None for the binary format (a choice instead)."""
    if policy.output_format is OutputFormat.BINARY:
        return None
    props: dict[str, Any] = {
        "violation": {"type": "integer", "enum": list(policy.labels)},
        "policy_category": {"anyOf": [{"type": "string", "maxLength": 64}, {"type": "null"}]},
    }
    required = ["violation", "policy_category"]
    if policy.output_format is OutputFormat.JSON_RATIONALE:
        props["rationale"] = {"type": "string", "maxLength": 300}
        required.append("rationale")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def choices(policy: Policy) -> list[str] | None:
    """The allowed answers for the binary format."""
    return [str(label) for label in policy.labels] if policy.output_format is OutputFormat.BINARY else None


def is_harmony_model(model_name: str, prompt_format: str = "auto") -> bool:
    if prompt_format != "auto":
        return prompt_format == "harmony"
    return "gpt-oss" in model_name.lower()


# --- harmony -------------------------------------------------------------------------------
# `oss-harmony` renders and parses offline (the official `openai-harmony` wants to download the
# o200k_base encoding on first use). Both expose the `openai_harmony` module with the same API.


@lru_cache(maxsize=1)
def _harmony_encoding():
    import openai_harmony as h

    return h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)


def harmony_prompt_tokens(policy: Policy, content: str) -> list[int]:
    """Render the conversation for completion by the assistant, as harmony token ids."""
    import openai_harmony as h

    system = h.SystemContent.new().with_reasoning_effort(h.ReasoningEffort(policy.reasoning_effort.value.capitalize()))
    developer = h.DeveloperContent.new().with_instructions(system_prompt(policy))
    convo = h.Conversation.from_messages(
        [
            h.Message.from_role_and_content(h.Role.SYSTEM, system),
            h.Message.from_role_and_content(h.Role.DEVELOPER, developer),
            h.Message.from_role_and_content(h.Role.USER, content),
        ]
    )
    return list(_harmony_encoding().render_conversation_for_completion(convo, h.Role.ASSISTANT))


def harmony_stop_tokens() -> list[int]:
    return list(_harmony_encoding().stop_tokens_for_assistant_actions())


def parse_harmony_completion(token_ids: list[int]) -> tuple[str | None, str | None]:
    """Split completion tokens into (final, analysis). A cut-off final channel yields final=None."""
    import openai_harmony as h

    enc = _harmony_encoding()
    try:
        messages = enc.parse_messages_from_completion_tokens(token_ids, h.Role.ASSISTANT)
    except Exception:  # noqa: BLE001 - truncated or malformed harmony: recover what the parser can
        parser = h.StreamableParser(enc, role=h.Role.ASSISTANT)
        for tok in token_ids:
            try:
                parser.process(tok)
            except Exception:  # noqa: BLE001
                break
        messages = parser.messages
    final: list[str] = []
    analysis: list[str] = []
    for msg in messages:
        text = "".join(getattr(c, "text", "") for c in msg.content)
        (final if msg.channel == "final" else analysis).append(text)
    return ("".join(final) if final else None), ("\n".join(analysis) if analysis else None)
