"""The probability of the chosen label, measured from the logprobs of the tokens that spell it.

An engine returns, for every generated token, its text and the logprobs of some candidate tokens at
that position: the policy's label tokens (vLLM's `logprob_token_ids`: exact, whatever their rank) or
the top-k (any other server: a label outside the top-k is bounded by the k-th probability). Here the
label is found in the answer (the final channel for harmony; after `"violation":` for JSON) and the
probability mass of each label is read at the positions where the labels part, normalised over the
policy's labels only: tokens that are no label (text, other digits) do not count.

Labels are integers, so a label is a run of digit tokens. A label that is a prefix of another ("1"
and "10") parts from it one token later: there the chosen path's next token (a digit or what ends
the number) is weighed against the longer labels' digits. A label that leaves the chosen path is
credited with the mass of the token where it leaves (its later tokens are not observed).

Pure: no engine imports. The model's own words about its confidence never come here.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

FINAL_HEADER = "<|channel|>final<|message|>"  # harmony: the answer follows the last one
_JSON_LABEL = re.compile(r'"violation"\s*:\s*"?')
_DIGITS = re.compile(r"\d*")


@dataclass(frozen=True)
class TokenStep:
    """One generated token: its text and logprobs of candidate tokens at its position (text -> logprob,
    the generated token included)."""

    text: str
    logprobs: dict[str, float]


def label_start(joined: str, *, json_answer: bool, harmony: bool) -> int | None:
    """Character offset where the label begins in the generated text, or None when there is none."""
    start = 0
    if harmony:
        at = joined.rfind(FINAL_HEADER)
        if at < 0:
            return None
        start = at + len(FINAL_HEADER)
    if json_answer:
        match = _JSON_LABEL.search(joined, start)
        return match.end() if match else None
    rest = joined[start:]
    return start + len(rest) - len(rest.lstrip())


def label_probabilities(steps: Sequence[TokenStep], labels: Iterable[int], *, json_answer: bool,
                        harmony: bool, exhaustive: bool) -> dict[int, float] | None:
    """{label: probability} among the policy's labels; the chosen label's entry is the measured one.
    None when the generated text holds no label or its tokens cannot be read.

    exhaustive: every label token's logprob is given at every position (vLLM's logprob_token_ids);
    otherwise a label missing from a position's candidates gets the smallest candidate's probability,
    an upper bound on its own (so the chosen label's probability errs low)."""
    names = {str(label): label for label in labels}
    texts = [s.text for s in steps]
    joined = "".join(texts)
    at = label_start(joined, json_answer=json_answer, harmony=harmony)
    if at is None or at >= len(joined) or not joined[at].isdigit():
        return None
    j, pos = 0, 0
    while pos + len(texts[j]) <= at:  # the token holding the label's first character
        pos += len(texts[j])
        j += 1
    pre = joined[pos:at]  # a tokenizer may join the label to what precedes it
    consumed, weight, probs = "", 1.0, {}
    while j < len(steps):
        step = steps[j]
        chosen = _branch(step.text, pre, consumed, names)
        if chosen is None:
            return None
        mass: dict[tuple[str, bool], float] = {}
        for text, logprob in step.logprobs.items():
            key = _branch(text, pre, consumed, names)
            if key is not None and logprob > -math.inf:
                mass[key] = _logaddexp(mass.get(key, -math.inf), logprob)
        mass.setdefault(chosen, step.logprobs.get(step.text, -math.inf))
        covered = {n for key in mass for n in _covers(key, names)}
        missing = [n for n in names if n.startswith(consumed) and n not in covered]
        if missing and not exhaustive and step.logprobs:
            floor = min(step.logprobs.values())
            for n in missing:
                mass[(n, True)] = floor
        total = _logsumexp(mass.values())
        if total == -math.inf:
            return None
        for key, logprob in mass.items():
            if key == chosen:
                continue
            share = weight * math.exp(logprob - total)
            for n in _covers(key, names)[:1]:  # a branch's mass goes to its shortest label
                probs[names[n]] = probs.get(names[n], 0.0) + share
        weight *= math.exp(mass[chosen] - total)
        text, complete = chosen
        longer = [n for n in names if n.startswith(text) and n != text]
        if complete or not longer:
            if text not in names:
                return None
            probs[names[text]] = max(weight, sys.float_info.min)  # (0, 1]: a generated label happened
            return probs
        consumed, pre, j = text, "", j + 1
    if consumed in names:  # the output ended right after the label
        probs[names[consumed]] = max(weight, sys.float_info.min)
        return probs
    return None


def _branch(text: str, pre: str, consumed: str, names: dict[str, int]) -> tuple[str, bool] | None:
    """Which labels a candidate token leads to: (digits so far, whether the number ends with it)."""
    if not text.startswith(pre):
        return None
    text = text[len(pre):]
    digits = _DIGITS.match(text).group(0)
    if not digits:  # ends the number
        return (consumed, True) if consumed in names else None
    s = consumed + digits
    if len(digits) < len(text):
        return (s, True) if s in names else None
    return (s, False) if any(n.startswith(s) for n in names) else None


def _covers(key: tuple[str, bool], names: dict[str, int]) -> list[str]:
    text, complete = key
    if complete:
        return [text]
    return sorted((n for n in names if n.startswith(text)), key=len)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def _logsumexp(values: Iterable[float]) -> float:
    total = -math.inf
    for v in values:
        total = _logaddexp(total, v)
    return total
