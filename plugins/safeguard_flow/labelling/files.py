"""Reading content from JSONL/CSV files and writing verdicts, for the CLI and the demo.

A line that cannot be read (bad JSON, bad UTF-8, no id) still yields an item, with its problem
set, so it comes out as an error verdict: count in == count out.
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


def read_items(path: str | Path, source: str = "file") -> Iterator[ContentItem]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        yield from _read_jsonl(path, source)
    elif suffix == ".csv":
        yield from _read_csv(path, source)
    else:
        raise ValueError(f"--input: {path} must be .jsonl or .csv (got {suffix or 'no extension'})")


def _pick(row: dict, fields: tuple[str, ...]) -> tuple[bool, object]:
    for f in fields:
        if f in row:
            return True, row[f]
    return False, None


def _read_jsonl(path: Path, source: str) -> Iterator[ContentItem]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            fallback_id = f"{path.name}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield ContentItem(fallback_id, None, source, "", problem=f"line {lineno}: not valid UTF-8 (byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                yield ContentItem(fallback_id, None, source, "", problem=f"line {lineno}: invalid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                yield ContentItem(fallback_id, None, source, "", problem=f"line {lineno}: not a JSON object")
                continue
            yield _item(row, fallback_id, lineno, source)


def _read_csv(path: Path, source: str) -> Iterator[ContentItem]:
    # Decode leniently so one bad byte does not stop the file; flag rows that held one.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for lineno, row in enumerate(reader, start=2):
        yield _item(row, f"{path.name}:{lineno}", lineno, source)


def _item(row: dict, fallback_id: str, lineno: int, source: str) -> ContentItem:
    has_id, cid = _pick(row, ID_FIELDS)
    has_text, text = _pick(row, TEXT_FIELDS)
    if not has_id or cid in (None, ""):
        return ContentItem(fallback_id, None, source, "", problem=f"line {lineno}: no id (one of {', '.join(ID_FIELDS)})")
    if not has_text:
        return ContentItem(str(cid), None, source, "", problem=f"line {lineno}: no text (one of {', '.join(TEXT_FIELDS)})")
    if isinstance(text, str) and any(0xDC80 <= ord(ch) <= 0xDCFF for ch in text):
        return ContentItem(str(cid), None, source, "", problem=f"line {lineno}: not valid UTF-8")
    return ContentItem.from_raw(cid, text, source)


VERDICT_FIELDS = (
    "content_id", "policy", "policy_version", "label", "category", "rationale", "parse_status", "error",
    "raw_output", "prompt_tokens", "completion_tokens", "model", "content_hash", "source", "analysis",
)


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
