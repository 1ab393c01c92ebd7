"""Verdicts: what one (item, policy) classification produced, and how model output is parsed.

Parsing never invents a label: output that is empty, truncated or malformed becomes an error
verdict (label None, parse_status != "ok") that keeps the raw text for audit.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from safeguard_flow.domain.policies import OutputFormat

# parse_status values. "ok" is the only one that carries a label.
OK = "ok"
EMPTY = "empty"
TRUNCATED = "truncated"
MALFORMED = "malformed"
ENGINE_ERROR = "engine_error"
INPUT_ERROR = "input_error"
PARSE_STATUSES = (OK, EMPTY, TRUNCATED, MALFORMED, ENGINE_ERROR, INPUT_ERROR)


@dataclass
class Verdict:
    """One label for one piece of content under one policy version."""

    content_id: str
    policy: str
    policy_version: int
    label: int | None
    parse_status: str
    source: str = "default"
    content_hash: str = ""
    category: str | None = None
    rationale: str | None = None
    # The probability of the chosen label the engine measured (its label tokens' logprobs), in (0, 1];
    # None for errors and engines without logprobs. A model's own stated confidence is extra["stated_confidence"].
    confidence: float | None = None
    rule_ids: list[str] | None = None
    raw_output: str = ""
    error: str | None = None
    analysis: str | None = None  # harmony `analysis` channel; kept out of BI tables by default
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    decided_by: str = "model"  # 'model' | 'cascade' (labelling/cascade_route.py)

    @property
    def is_error(self) -> bool:
        return self.parse_status != OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParsedOutput:
    """The label-bearing part of a model answer, before it is tied to an item."""

    label: int | None
    parse_status: str
    category: str | None = None
    rationale: str | None = None
    stated_confidence: float | None = None  # what the model wrote about itself: never the verdict's confidence
    rule_ids: list[str] | None = None
    error: str | None = None


# Exactly one digit once whitespace is stripped: "-1", "1.", "(0)" or "**1**" are not answers we read.
_BINARY_RE = re.compile(r"^([01])$")
_JSON_OBJECT_RE = re.compile(r"\{.*\}", re.DOTALL)


def parse_output(
    text: str | None,
    output_format: OutputFormat,
    labels: tuple[int, ...] = (0, 1),
    finish_reason: str | None = None,
) -> ParsedOutput:
    """Parse the model's final answer into a label, or an error status that says why not."""
    if text is None or not text.strip():
        status = TRUNCATED if finish_reason == "length" else EMPTY
        return ParsedOutput(None, status, error="model returned no final answer")
    text = text.strip()
    try:
        if output_format is OutputFormat.BINARY:
            parsed = _parse_binary(text)
        else:
            parsed = _parse_json(text, require_rationale=output_format is OutputFormat.JSON_RATIONALE)
    except ValueError as exc:
        # A cut-off answer is reported as truncated, not malformed: the fix is max_tokens, not the policy.
        status = TRUNCATED if finish_reason == "length" else MALFORMED
        return ParsedOutput(None, status, error=str(exc))
    if parsed.label not in labels:
        return ParsedOutput(None, MALFORMED, error=f"label {parsed.label!r} is not in the policy's labels {list(labels)}")
    return parsed


def _parse_binary(text: str) -> ParsedOutput:
    match = _BINARY_RE.match(text)
    if match:
        return ParsedOutput(int(match.group(1)), OK)
    # Models asked for a bare digit sometimes answer with JSON anyway; accept it when it is unambiguous.
    if text.lstrip().startswith("{"):
        return _parse_json(text, require_rationale=False)
    raise ValueError(f"expected a bare 0 or 1, got {text[:80]!r}")


def _parse_json(text: str, require_rationale: bool) -> ParsedOutput:
    obj = _load_json_object(text)
    if "violation" not in obj:
        raise ValueError("JSON answer has no 'violation' key")
    label = _as_label(obj["violation"])
    category = obj.get("policy_category")
    if category is not None and not isinstance(category, str):
        category = str(category)
    rationale = obj.get("rationale")
    if require_rationale and not (isinstance(rationale, str) and rationale.strip()):
        raise ValueError("JSON answer has no 'rationale'")
    # A confidence the model states about itself is kept apart (extra["stated_confidence"]); one that is
    # not a number in [0, 1] is dropped, not held against the label (the raw output keeps it).
    confidence = obj.get("confidence")
    try:
        confidence = float(confidence) if confidence is not None and not isinstance(confidence, bool) else None
    except (TypeError, ValueError):
        confidence = None
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        confidence = None
    rule_ids = obj.get("rule_ids")
    if rule_ids is not None:
        if not isinstance(rule_ids, list):
            raise ValueError("rule_ids is not a list")
        rule_ids = [str(r) for r in rule_ids]
    if label == 0:
        category = None  # a category only names what was violated; small models sometimes fill it anyway
    return ParsedOutput(
        label,
        OK,
        category=category or None,
        rationale=rationale if isinstance(rationale, str) else None,
        stated_confidence=confidence,
        rule_ids=rule_ids,
    )


def _load_json_object(text: str) -> dict[str, Any]:
    # strict=False: raw control characters inside strings (a tab, \x0b) are what xgrammar's JSON
    # grammar allows there, so an answer the grammar produced must not fail on them.
    try:
        obj = json.loads(text, strict=False)
    except json.JSONDecodeError:
        # Tolerate prose or code fences around one JSON object, nothing more.
        match = _JSON_OBJECT_RE.search(text)
        if not match:
            raise ValueError(f"answer is not JSON: {text[:80]!r}") from None
        try:
            obj = json.loads(match.group(0), strict=False)
        except json.JSONDecodeError as exc:
            raise ValueError(f"answer is not valid JSON ({exc.msg}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"JSON answer is a {type(obj).__name__}, not an object")
    return obj


def _as_label(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip() in {"0", "1"}:
        return int(value.strip())
    raise ValueError(f"'violation' is {value!r}, not 0 or 1")


def error_verdict(
    *,
    content_id: str,
    policy: str,
    policy_version: int,
    status: str,
    error: str,
    raw_output: str = "",
    **kwargs: Any,
) -> Verdict:
    """An error verdict: no label, the reason, and whatever raw text there was."""
    return Verdict(
        content_id=content_id,
        policy=policy,
        policy_version=policy_version,
        label=None,
        parse_status=status,
        error=error,
        raw_output=raw_output,
        **kwargs,
    )
