"""The prompt contract: how a (policy, content) pair is put to the model, and how the answer comes back.

gpt-oss-safeguard models speak the harmony format: the policy goes in the developer message,
``Reasoning: low|medium|high`` in the system message, the content in the user message, and the
answer is the ``final`` channel (the ``analysis`` channel holds the chain of thought). Any other
chat model gets system = policy, user = content, rendered by its own chat template.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from safeguard_flow.domain.policies import OutputFormat, Policy

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
        props["rationale"] = {"type": "string", "minLength": 1, "maxLength": 300}  # parsing requires one
        required.append("rationale")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def choices(policy: Policy) -> list[str] | None:
    """The allowed answers for the binary format."""
    return [str(label) for label in policy.labels] if policy.output_format is OutputFormat.BINARY else None


def is_harmony_model(model_name: str, prompt_format: str = "auto") -> bool:
    """By name only; the engines ask model_presets.resolve, which reads the checkpoint's config.json first."""
    if prompt_format != "auto":
        return prompt_format == "harmony"
    return "gpt-oss" in model_name.lower()


# --- chat-template models ---------------------------------------------------------------------
# Rendering the template to text and letting the engine tokenise it would read `<|im_end|>` typed
# inside a post as a control token (a forged turn). So the template is rendered around placeholders
# and only its own pieces may hold special tokens; the policy and the content are encoded as text.

_PLACEHOLDERS = ("\ue000sg-system\ue000", "\ue000sg-user\ue000")  # private-use: no template changes them


def chat_prompt_tokens(tokenizer: Any, policy: Policy, content: str) -> list[int]:
    """Token ids of the chat-template prompt, with the policy and content never read as control tokens."""
    texts = (system_prompt(policy), content)
    messages = [{"role": "system", "content": _PLACEHOLDERS[0]}, {"role": "user", "content": _PLACEHOLDERS[1]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    rest = rendered
    for placeholder, text in zip(_PLACEHOLDERS, texts):
        head, sep, rest = rest.partition(placeholder)
        if not sep:
            raise ValueError("the chat template dropped or reordered the system/user message")
        ids += tokenizer.encode(head, add_special_tokens=False)
        ids += tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    return ids + tokenizer.encode(rest, add_special_tokens=False)


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


# Control tokens of the harmony format (o200k_harmony ids).
HARMONY_CONTROL = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>", "<|return|>", "<|call|>")


@lru_cache(maxsize=1)
def harmony_token_ids() -> dict[str, int]:
    enc = _harmony_encoding()
    return {name: enc.encode(name, allowed_special="all")[0] for name in HARMONY_CONTROL}


def harmony_structural_tag(policy: Policy) -> dict[str, Any]:
    """xgrammar structural tag (vLLM `structured_outputs.structural_tag`) for one harmony completion:
    an optional analysis message in free text, then the final channel holding the policy's answer.

    The same shape vLLM's server builds for gpt-oss (vllm/parser/harmony.py) but stricter: control
    tokens are matched by id (a post cannot spell `<|end|>` in ordinary tokens to steer the grammar),
    and the analysis may not contain control or reserved tokens. Only the final channel is
    constrained to the answer; the analysis stays free.
    """
    tok = harmony_token_ids()

    def token(name: str) -> dict[str, Any]:
        return {"type": "token", "token": tok[name]}

    def const(text: str) -> dict[str, Any]:
        return {"type": "const_string", "value": text}

    analysis = {"type": "optional", "content": {"type": "sequence", "elements": [
        token("<|channel|>"), const("analysis"),
        {"type": "tag", "begin": token("<|message|>"),
         "content": {"type": "any_text", "excludes": [*HARMONY_CONTROL, "<|reserved_", "<|endoftext|>",
                                                      "<|startoftext|>"]},
         "end": token("<|end|>")},
        token("<|start|>"), const("assistant"),
    ]}}
    choice = choices(policy)
    if choice is not None:
        answer: dict[str, Any] = {"type": "or", "elements": [const(c) for c in choice]}
        header = [token("<|channel|>"), const("final"), token("<|message|>")]
    else:
        answer = {"type": "grammar", "grammar": compact_json_grammar(policy)}
        # A plain final header: an optional ` <|constrain|>json` here made xgrammar 0.2.8's mask allow
        # <|constrain|> where its matcher then rejected it (vLLM terminated those requests).
        header = [token("<|channel|>"), const("final"), token("<|message|>")]
    # The message ends with a stop token (<|return|>), which the engine allows once the tag is complete.
    return {"type": "structural_tag", "format": {"type": "sequence", "elements": [analysis, *header, answer]}}


def compact_json_grammar(policy: Policy) -> str:
    """EBNF for the policy's JSON answer in harmony's final channel: compact and free of control text.

    - No free whitespace (`{"violation":1,...}`): a structural tag's `json_schema` format allows any
      whitespace between tokens, and a sampling model (temperature 1.0) can spend its whole budget on
      it; the chat path turns it off with `disable_any_whitespace`, this is the same.
    - No `|` inside strings: xgrammar reads a special token as its text, so `<|end|>` would be a
      legal character run inside a JSON string, and the harmony parser would end the message there.
      Every control and reserved token starts with `<|`.
    Needs xgrammar (it comes with vLLM).
    """
    return _compact_json_grammar(json.dumps(json_schema(policy)))  # key order is the answer order


# xgrammar's character class for a bounded JSON string ({"type": "string", "maxLength": n}); a
# `pattern` instead would lose the bounds (xgrammar ignores them next to one).
_STRING_CHARS = r'[^\"\\\r\n]'


@lru_cache(maxsize=64)
def _compact_json_grammar(schema: str) -> str:
    import xgrammar as xgr

    ebnf = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, separators=(",", ":")))
    if _STRING_CHARS not in ebnf:
        raise RuntimeError("xgrammar's JSON string rule changed; update prompts._STRING_CHARS")
    return ebnf.replace(_STRING_CHARS, _STRING_CHARS[:-1] + "|]")
