"""gpt-oss-tiny: a random-weight checkpoint of the real gpt-oss architecture, built offline.

It stands in for gpt-oss-safeguard in tests: vLLM loads it with its own GptOss model class (MoE,
attention sinks, sliding/full attention), so the production prompt (harmony), grammar (structural
tag on the final channel), stop tokens and parsing all run for real. Its answers are noise.

- Architecture: transformers' GptOssConfig / GptOssForCausalLM with 2 layers, 4 experts (2 active),
  hidden 128, head_dim 64 (vLLM's CPU attention kernel refuses head_dim 16), bf16, about 52M
  parameters, almost all in the 201,088 x 128 embedding and output layer.
- Vocabulary: the full o200k_harmony vocabulary and its special tokens, read from the installed
  `oss-harmony` package (`decode_bytes` of every id: no download). The HF tokenizer.json is a
  byte-level BPE built from those ranks (tiktoken-style ranks -> tokenizers' BPE merges, the o200k
  pre-tokenizer regex) with the specials at harmony's ids, so HF and harmony agree token for token.
- Shaping, so that a random model still writes well-formed harmony: a few channels of the residual
  stream carry a fixed signal from a token's embedding to the output layer (the other ~120 stay
  random), a hand-set bigram table on top of the noise (`SHAPING`, scales calibrated on a forward
  pass by `_calibrate`):
  - channel 0 is +1 in every token: `<|end|>` gets a logit of ~9 over ~200k near-zero logits, a ~1/24
    chance per token (an analysis closes after about two dozen tokens), and every other special
    token -12, so control and reserved tokens stay out of free text;
  - right after `<|message|>` the `<|end|>` boost is cancelled: an analysis is never empty;
  - after `<|channel|>`, `analysis` is strongly preferred (then `final`): the model reasons first;
  - at each place harmony needs a control token, that token is boosted: `<|channel|>` after
    `assistant`, `<|message|>` after `analysis` / `final` / `json`, `<|start|>` after `<|end|>`,
    `assistant` after `<|start|>`. Our structural tag matches control tokens by id anyway; vLLM's
    server matches them as text, where the model could otherwise spell `<|channel|>` in ordinary
    tokens.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

KEY = "gpt-oss-tiny"
SEED = 20251201
VOCAB_SIZE = 201_088  # o200k_harmony: 199,998 ordinary tokens, then the specials
# o200k's pre-tokenizer regex (the pattern tiktoken's o200k_base / o200k_harmony encodings use).
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
ARCH = dict(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, hidden_size=128, intermediate_size=128,
            head_dim=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=128,
            layer_types=["sliding_attention", "full_attention"])
END_PROBABILITY = 1 / 24  # per token of analysis, after ordinary tokens
SPECIAL_PENALTY = 12.0  # logit taken from special tokens (other than <|end|>) in free text
# (tokens whose embedding carries the channel, {next token: logit added after them}); channel 0 is the constant.
SHAPING = (
    (("<|channel|>",), {"analysis": 12.0, "final": 6.0}),
    (("<|message|>",), {"<|end|>": "cancel_end"}),
    (("assistant",), {"<|channel|>": 20.0}),
    (("analysis", "final", "json"), {"<|message|>": 20.0}),
    (("<|end|>",), {"<|start|>": 20.0}),
    (("<|start|>",), {"assistant": 12.0}),
)
N_SHAPED = 1 + len(SHAPING)
N_SPECIAL = VOCAB_SIZE - 199_998


def harmony_vocabulary() -> tuple[dict[bytes, int], dict[str, int]]:
    """(ordinary token bytes -> id, special token -> id) of o200k_harmony, from oss-harmony offline."""
    import openai_harmony as h

    enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    # gpt-oss checkpoints have 201,088 rows (o200k_harmony ends at <|reserved_201087|>); oss-harmony
    # also names a <|reserved_201088|>, which no checkpoint has a row for, so it is left out.
    n_vocab = VOCAB_SIZE
    if 1 + max(enc.encode(name, allowed_special="all")[0] for name in enc._inner.special_tokens()) < n_vocab:
        raise RuntimeError(f"the installed harmony encoding has fewer than {n_vocab} tokens")
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for token_id in range(n_vocab):
        raw = bytes(enc._inner.decode_bytes([token_id]))
        if enc.is_special_token(token_id):
            specials[raw.decode("utf-8")] = token_id
        else:
            ranks[raw] = token_id
    if len(ranks) + len(specials) != n_vocab or sorted(ranks.values()) != list(range(len(ranks))):
        raise RuntimeError("the harmony vocabulary is not a contiguous block of ordinary ids then specials")
    return ranks, specials


def build_tokenizer(out: Path) -> Any:
    """Write tokenizer.json + tokenizer_config.json for the harmony vocabulary; return the HF tokenizer."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks, specials = harmony_vocabulary()

    class _HarmonyConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_: str) -> dict[bytes, int]:
            return ranks

    backend = _HarmonyConverter(vocab_file="o200k_harmony", pattern=O200K_PATTERN).converted()
    ordered = sorted(specials.items(), key=lambda kv: kv[1])
    # add_special_tokens numbers new tokens from the vocabulary's end, in order: harmony's ids exactly.
    assert ordered[0][1] == len(ranks) and [i for _, i in ordered] == list(range(len(ranks), len(ranks) + len(ordered)))
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, _ in ordered])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|return|>",
                                  pad_token="<|endoftext|>", model_max_length=131_072)
    tok.save_pretrained(str(out))
    return tok


def build(out: Path, progress: bool = True) -> dict[str, Any]:
    """Write the checkpoint (config, safetensors, tokenizer, generation config) into `out`."""
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|return|>", "<|call|>", "<|endoftext|>", "<|startoftext|>")}
    config = GptOssConfig(vocab_size=len(tok), bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|return|>"],
                          pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False, **ARCH)
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, :N_SHAPED] = 0.0
        head[:, :N_SHAPED] = 0.0
        emb[:, 0] = 1.0
        for channel, (triggers, _) in enumerate(SHAPING, start=1):
            emb[[_id(tok, t) for t in triggers], channel] = 1.0
        scales = _calibrate(model, tok)
        # Target logit for <|end|> over ~200k near-zero logits: p = e^b / (e^b + V).
        b_end = math.log(END_PROBABILITY / (1 - END_PROBABILITY) * len(tok))
        head[len(tok) - N_SPECIAL:, 0] = -SPECIAL_PENALTY / scales[0]
        head[_id(tok, "<|end|>"), 0] = b_end / scales[0]
        for channel, (_, boosts) in enumerate(SHAPING, start=1):
            for target, logit in boosts.items():
                value = -2 * b_end if logit == "cancel_end" else logit
                head[_id(tok, target), channel] = value / scales[channel]
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=[ids["<|return|>"], ids["<|call|>"]],
                     pad_token_id=config.pad_token_id, do_sample=True, temperature=1.0, top_p=1.0).save_pretrained(str(out))
    path = out / "config.json"
    data = json.loads(path.read_text())
    data["_name_or_path"] = KEY
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "end_logit": b_end, "channel_scales": [round(x, 3) for x in scales],
            "seconds": round(time.monotonic() - started, 1)}


def _single_token(tok: Any, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise RuntimeError(f"{text!r} is not one token in the harmony vocabulary: {ids}")
    return ids[0]


def _id(tok: Any, token: str) -> int:
    """Id of a special token or of a word that is one token in the harmony vocabulary."""
    if token.startswith("<|"):
        return tok.convert_tokens_to_ids(token)
    return _single_token(tok, token)


def _calibrate(model: Any, tok: Any) -> list[float]:
    """Mean final-norm output of each shaped channel where it is set (channel 0: at ordinary tokens)."""
    import torch

    from safeguard_flow.domain.prompts import _harmony_encoding

    text = ("<|start|>user<|message|>Is this spam? Buy cheap followers now<|end|><|start|>assistant"
            "<|channel|>analysis<|message|>The user asks whether the post is spam. It sells followers.<|end|>"
            "<|start|>assistant<|channel|>final <|constrain|>json<|message|>1<|return|>")
    ids = _harmony_encoding().encode(text, allowed_special="all")
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    first_special = VOCAB_SIZE - N_SPECIAL
    scales = [float(hidden[[i for i, t in enumerate(ids) if t < first_special], 0].mean())]
    for channel, (triggers, _) in enumerate(SHAPING, start=1):
        wanted = {_id(tok, t) for t in triggers}
        scales.append(float(hidden[[i for i, t in enumerate(ids) if t in wanted], channel].mean()))
    if min(scales) <= 0:
        raise RuntimeError(f"calibration failed (channel means {scales})")
    return scales
