"""Reading JSONL/CSV rows, content for the `label` command and verdicts written by it.

`read_rows` is the one JSONL/CSV reader: `label` turns an unreadable row into an error verdict
(count in == count out), a labelled dataset refuses it (a dataset is scored whole or not at all).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.domain.verdicts import Verdict

ID_FIELDS = ("id", "content_id")
TEXT_FIELDS = ("text", "content", "prompt")


def read_rows(path: str | Path, flag: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row, None), or (line number, None, problem) for a line that is not a JSON object.

    CSV is decoded leniently so one bad byte does not stop the file: such bytes stay as surrogate
    escapes (`has_bad_bytes`) for the caller to judge. `flag` names the file in errors (`--input`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        yield from _jsonl_rows(path)
    elif suffix == ".csv":
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        yield from ((lineno, row, None) for lineno, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2))
    else:
        raise ValueError(f"{flag}: {path} must be .jsonl or .csv (got {suffix or 'no extension'})")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield lineno, None, f"line {lineno}: not valid UTF-8 (byte {exc.start})"
                continue
            except json.JSONDecodeError as exc:
                yield lineno, None, f"line {lineno}: invalid JSON ({exc.msg})"
                continue
            if isinstance(row, dict):
                yield lineno, row, None
            else:
                yield lineno, None, f"line {lineno}: not a JSON object"


def has_bad_bytes(value: object) -> bool:
    """A CSV value that held bytes which are not UTF-8 (kept as surrogate escapes by `read_rows`)."""
    return isinstance(value, str) and any(0xDC80 <= ord(ch) <= 0xDCFF for ch in value)


def read_items(path: str | Path, source: str = "file") -> Iterator[ContentItem]:
    path = Path(path)
    for lineno, row, problem in read_rows(path, "--input"):
        fallback_id = f"{path.name}:{lineno}"
        if problem is not None:
            yield ContentItem(fallback_id, None, source, "", problem=problem)
        else:
            yield _item(row, fallback_id, lineno, source)


def _pick(row: dict, fields: tuple[str, ...]) -> tuple[bool, object]:
    for f in fields:
        if f in row:
            return True, row[f]
    return False, None


def _item(row: dict, fallback_id: str, lineno: int, source: str) -> ContentItem:
    has_id, cid = _pick(row, ID_FIELDS)
    has_text, text = _pick(row, TEXT_FIELDS)
    if not has_id or cid in (None, ""):
        return ContentItem(fallback_id, None, source, "", problem=f"line {lineno}: no id (one of {', '.join(ID_FIELDS)})")
    if not has_text:
        return ContentItem(str(cid), None, source, "", problem=f"line {lineno}: no text (one of {', '.join(TEXT_FIELDS)})")
    if has_bad_bytes(text):
        return ContentItem(str(cid), None, source, "", problem=f"line {lineno}: not valid UTF-8")
    return ContentItem.from_raw(cid, text, source)


VERDICT_FIELDS = (
    "content_id", "policy", "policy_version", "label", "category", "rationale", "parse_status", "error",
    "raw_output", "prompt_tokens", "completion_tokens", "model", "content_hash", "source", "analysis",
)


def read_verdicts(path: str | Path) -> list[Verdict]:
    """Verdicts from a JSONL file `label` wrote (other keys are ignored)."""
    fields = set(Verdict.__dataclass_fields__)
    path = Path(path)
    verdicts = []
    for _, row, problem in _jsonl_rows(path):
        if problem is not None:
            raise ValueError(f"--verdicts: {path} {problem}")
        verdicts.append(Verdict(**{k: v for k, v in row.items() if k in fields}))
    return verdicts


class VerdictWriter:
    """Writes verdicts as JSONL or CSV, chosen by the output file's extension."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        if suffix not in {".jsonl", ".csv"}:
            raise ValueError(f"--output: {self.path} must be .jsonl or .csv")
        self._fh = self.path.open("w", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._fh, VERDICT_FIELDS, extrasaction="ignore") if suffix == ".csv" else None
        if self._csv:
            self._csv.writeheader()
        self.count = 0

    def write(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            row = {k: getattr(v, k) for k in VERDICT_FIELDS}
            if self._csv:
                self._csv.writerow(row)
            else:
                self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += len(verdicts)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> VerdictWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
