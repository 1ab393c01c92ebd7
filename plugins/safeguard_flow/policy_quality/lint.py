"""Policy lint: each policy's length in tokens of the configured model's tokenizer.

gpt-oss-safeguard works best with policies of 400-600 tokens (up to about 10k work); a policy longer
than the model's context cannot be used at all. Counted is the instruction as the model gets it
(prompts.system_prompt: the policy text and its output-format line), with
- gpt-oss models: harmony's o200k encoding (`oss-harmony`, offline);
- any other model: its Hugging Face tokenizer (AutoTokenizer) from the prepared local folder, or
  from model.name when that is a local folder. Nothing is downloaded or converted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from safeguard_flow.domain.policies import Policy
from safeguard_flow.domain.prompts import is_harmony_model, system_prompt
from safeguard_flow.settings import Settings

RECOMMENDED = (400, 600)


@dataclass(frozen=True)
class PolicyLength:
    policy: str
    tokens: int
    level: str  # ok | warning | error
    message: str


def tokenizer_for(settings: Settings) -> tuple[str, Callable[[str], int]]:
    """(tokenizer description, text -> token count) for the configured model."""
    name = settings.model.name
    if is_harmony_model(name, settings.model.prompt_format):
        import openai_harmony as h

        enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
        # Policy text is text: a literal "<|end|>" in it is counted as text, never as a control token.
        return "harmony o200k", lambda text: len(enc.encode(text, disallowed_special=()))
    from safeguard_flow.models import local as local_model

    folder = local_model.model_dir(settings, name) if name in local_model.KNOWN_MODELS else Path(name).expanduser()
    if not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer for model.name {name!r} at {folder}: run `safeguard-flow model prepare` "
            "(or set model.name to a local model folder)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return f"{name} (AutoTokenizer)", lambda text: len(tok.encode(text, add_special_tokens=False))


def lint(policies: Sequence[Policy], settings: Settings,
         count: Callable[[str], int] | None = None) -> list[PolicyLength]:
    if count is None:
        _, count = tokenizer_for(settings)
    context = settings.model.max_model_len
    lo, hi = RECOMMENDED
    out = []
    for p in policies:
        n = count(system_prompt(p))
        if n >= context:
            level, msg = "error", f"{n} tokens: longer than the model's context (model.max_model_len {context})"
        elif n < lo:
            level, msg = "warning", f"{n} tokens: shorter than the recommended {lo}-{hi}"
        elif n > hi:
            level, msg = "warning", f"{n} tokens: longer than the recommended {lo}-{hi}"
        else:
            level, msg = "ok", ""
        out.append(PolicyLength(p.name, n, level, msg))
    return out
