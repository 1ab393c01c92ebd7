"""Content items: normalisation, the content hash, and input checks done before any model call."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class ContentItem:
    """One piece of content to label. `text` is None when the source row had no usable text."""

    content_id: str
    text: str | None
    source: str = "default"
    content_hash: str = ""
    problem: str | None = None  # why this item cannot be sent to a model (becomes an error verdict)

    @classmethod
    def from_raw(cls, content_id: object, raw: object, source: str = "default") -> ContentItem:
        """Build an item from whatever a source holds: str, bytes, None. Never raises on bad content."""
        cid = str(content_id)
        if raw is None:
            return cls(cid, None, source, content_hash_of(""), problem="content is NULL")
        if isinstance(raw, (bytes, bytearray, memoryview)):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                digest = hashlib.sha256(bytes(raw)).hexdigest()
                return cls(cid, None, source, digest, problem=f"content is not valid UTF-8 (byte {exc.start})")
        text = str(raw)
        # Lone surrogates (from lax decoders) cannot be encoded for the model; treat like bad bytes.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            return cls(cid, None, source, digest, problem=f"content has invalid code points (position {exc.start})")
        normalised = normalise(text)
        digest = content_hash_of(normalised)
        if not normalised:
            return cls(cid, text, source, digest, problem="content is empty")
        return cls(cid, text, source, digest)


def normalise(text: str) -> str:
    """NFC, unified newlines, trimmed: edits that change none of these are not re-labelled."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\x00", "").strip()


def content_hash_of(normalised_text: str) -> str:
    return hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut over-long content, keeping head and tail (spam and threats often sit at either end)."""
    if len(text) <= max_chars:
        return text, False
    head = max_chars * 3 // 4
    tail = max_chars - head
    return text[:head] + "\n[...]\n" + text[-tail:], True
