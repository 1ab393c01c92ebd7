"""Policies: Markdown files with YAML front matter, loaded, validated and fingerprinted.

A policy file looks like::

    ---
    name: spam
    labels: [0, 1]
    output_format: json          # binary | json | json_rationale
    reasoning_effort: low        # low | medium | high
    owner: trust-and-safety@example.com
    description: Unsolicited promotion.
    ---
    # Spam policy
    ## INSTRUCTIONS
    ...
    ## DEFINITIONS
    ## VIOLATES (1)
    ## SAFE (0)
    ## EXAMPLES

The sha256 is taken over the canonical text (whitespace folded) plus the fields that change what
the model is asked, so a whitespace-only edit never makes a new version.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REQUIRED_SECTIONS = ("INSTRUCTIONS", "DEFINITIONS", "VIOLATES", "SAFE", "EXAMPLES")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-/]{0,62}$")
_SECTION_RE = re.compile(r"^#{1,6}\s+([A-Za-z][A-Za-z ]*?)\b", re.MULTILINE)
_FENCE_RE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)  # fenced code blocks
_MAX_LABEL = 2**31 - 1  # labels are stored in integer columns
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)(.*)\Z", re.DOTALL)


class OutputFormat(str, enum.Enum):
    BINARY = "binary"  # a bare 0 or 1
    JSON = "json"  # {"violation": 0|1, "policy_category": "..."}
    JSON_RATIONALE = "json_rationale"  # the above plus "rationale"


class ReasoningEffort(str, enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class PolicyError(ValueError):
    """A policy file is invalid. The message names the file and the field or section."""

    def __init__(self, path: str | Path, field_name: str, problem: str):
        self.path = str(path)
        self.field = field_name
        super().__init__(f"{path}: {field_name}: {problem}")


@dataclass(frozen=True)
class Policy:
    name: str
    text: str  # canonical body, what the model sees
    labels: tuple[int, ...] = (0, 1)
    output_format: OutputFormat = OutputFormat.JSON
    reasoning_effort: ReasoningEffort = ReasoningEffort.LOW
    owner: str = ""
    description: str = ""
    path: str = ""
    version: int | None = None  # set once the policy is stored in the warehouse
    sha256: str = field(default="", compare=False)
    # Publish as a shadow version (labels, but BI keeps the promoted version): front matter `shadow: true`.
    # Not part of the sha256: promoting a shadow text never makes a new version.
    shadow: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", policy_sha256(self))

    @property
    def positive_label(self) -> int:
        return max(self.labels)

    def with_version(self, version: int) -> Policy:
        return Policy(**{**self.__dict__, "version": version})


def policy_id_part(name: str) -> str:
    """A policy name as it appears in run ids and file names. '/' becomes '.', which names cannot hold,
    so distinct names stay distinct ('a/b' -> 'a.b', 'a_b' -> 'a_b')."""
    return name.replace("/", ".")


def canonical_text(text: str) -> str:
    """Fold whitespace: CRLF, trailing spaces, runs of blanks and blank lines do not change meaning."""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def policy_sha256(policy: Policy) -> str:
    identity = {
        "name": policy.name,
        "text": " ".join(policy.text.split()),  # any whitespace-only edit keeps the same version
        "labels": list(policy.labels),
        "output_format": policy.output_format.value,
        "reasoning_effort": policy.reasoning_effort.value,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def parse_policy(source: str, path: str | Path = "<string>") -> Policy:
    source = source.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    match = _FRONT_MATTER_RE.match(source)
    if not match:
        raise PolicyError(path, "front matter", "file must start with a '---' YAML block closed by '---'")
    try:
        meta = yaml.load(match.group(1), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise PolicyError(path, "front matter", f"invalid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise PolicyError(path, "front matter", "must be a mapping of fields")
    known = {"name", "labels", "output_format", "reasoning_effort", "owner", "description", "shadow"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise PolicyError(path, unknown[0], f"unknown field (known: {', '.join(sorted(known))})")

    name = meta.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PolicyError(path, "name", f"required; lowercase letters, digits, '_', '-', '/' (got {name!r})")
    labels = meta.get("labels", [0, 1])
    if not (isinstance(labels, list) and labels and all(type(x) is int for x in labels) and len(set(labels)) == len(labels)):
        raise PolicyError(path, "labels", f"must be a list of distinct integers such as [0, 1] (got {labels!r})")
    if len(labels) < 2 or 0 not in labels or not all(0 <= x <= _MAX_LABEL for x in labels):
        raise PolicyError(path, "labels", f"must hold 0 (SAFE) and at least one violation label, each from 0 to "
                                          f"{_MAX_LABEL} (got {labels!r})")
    output_format = _enum(path, "output_format", OutputFormat, meta.get("output_format", "json"))
    if output_format is OutputFormat.BINARY and sorted(labels) != [0, 1]:
        raise PolicyError(path, "labels", f"output_format binary answers 0 or 1, so labels must be [0, 1] (got {labels!r})")
    effort = _enum(path, "reasoning_effort", ReasoningEffort, meta.get("reasoning_effort", "low"))
    for key in ("owner", "description"):
        if key in meta and not isinstance(meta[key], str):
            raise PolicyError(path, key, "must be a string")
    if not isinstance(meta.get("shadow", False), bool):
        raise PolicyError(path, "shadow", f"must be true or false (got {meta['shadow']!r})")

    body = canonical_text(match.group(2))
    # A heading inside a fenced code block (an example answer, a quoted post) is not a section.
    found = {m.group(1).strip().upper() for m in _SECTION_RE.finditer(_FENCE_RE.sub("", body))}
    for section in REQUIRED_SECTIONS:
        if not any(h == section or h.startswith(section + " ") for h in found):
            raise PolicyError(path, f"section {section}", f"missing; a policy needs headings {', '.join(REQUIRED_SECTIONS)}")

    return Policy(
        name=name,
        text=body,
        labels=tuple(sorted(labels)),
        output_format=output_format,
        reasoning_effort=effort,
        owner=meta.get("owner", ""),
        description=meta.get("description", ""),
        path=str(path),
        shadow=meta.get("shadow", False),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (YAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _enum(path: str | Path, key: str, enum_type: type[enum.Enum], value: object):
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum_type)
        raise PolicyError(path, key, f"{value!r} is not one of: {allowed}") from None


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "encoding", f"not UTF-8 ({exc.reason})") from None
    return parse_policy(source, path)


def load_policy_set(directory: str | Path) -> list[Policy]:
    """Every `*.md` policy in a directory (recursively), sorted by name; names must be unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(directory, "policies", "is not a directory")
    policies: dict[str, Policy] = {}
    for path in sorted(directory.rglob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        policy = load_policy(path)
        if policy.name in policies:
            raise PolicyError(path, "name", f"{policy.name!r} is also used by {policies[policy.name].path}")
        policies[policy.name] = policy
    if not policies:
        raise PolicyError(directory, "policies", "holds no *.md policy files")
    return sorted(policies.values(), key=lambda p: p.name)
