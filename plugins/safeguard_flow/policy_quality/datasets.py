"""Labelled datasets: rows with an id, a text and a gold 0/1 label per policy, from a JSONL/CSV file
(read by `labelling.files.read_rows`) or a table of the configured warehouse.

Ids must be unique (predictions are paired by id) and an unreadable row is an error, never skipped:
an eval scores the whole dataset it names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from safeguard_flow.labelling.files import has_bad_bytes, read_rows
from safeguard_flow.settings import IDENT_RE, Settings

# Label columns by policy name: the codes of OpenAI's 2022 moderation evaluation set (read from its
# path outside the repo), which the project's own sample (data/sample-posts.jsonl) reuses, plus spam.
MODERATION_2022_KEYS = {
    "sexual": "S", "hate": "H", "violence": "V", "harassment": "HR", "self-harm": "SH",
    "sexual/minors": "S3", "hate/threatening": "H2", "violence/graphic": "V2", "spam": "spam",
}
FILE_SUFFIXES = (".jsonl", ".ndjson", ".csv")


@dataclass(frozen=True)
class LabelledRow:
    """One row of a labelled dataset: its id, text, and gold label per policy (None: not 0/1, skipped)."""

    content_id: str
    text: object
    gold: dict[str, int | None]


def gold_value(value: object) -> int | None:
    """0 or 1 (int, or "0"/"1" from a CSV); anything else, missing included, is no gold label."""
    if type(value) is int and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def parse_label_map(pairs: Iterable[str] | None, flag: str = "--label") -> dict[str, str]:
    """`POLICY=COLUMN` flags -> {policy: column}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        policy, sep, column = pair.partition("=")
        if not sep or not policy.strip() or not column.strip():
            raise ValueError(f"{flag}: expected POLICY=COLUMN, got {pair!r}")
        out[policy.strip()] = column.strip()
    return out


def dataset_key(dataset: str) -> str:
    """How an eval names its dataset in the eval table: a file's absolute path, else ``table:<name>``."""
    path = Path(dataset).expanduser()
    if path.is_file() or path.suffix.lower() in FILE_SUFFIXES:
        return str(path.resolve())
    return f"table:{dataset}"


def file_rows(path: str | Path, flag: str = "--dataset") -> list[dict]:
    """Every row of a JSONL or CSV dataset file, as read; any unreadable row raises ValueError."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() not in FILE_SUFFIXES:
        raise ValueError(f"{flag}: {path} must be .jsonl or .csv, or the name of a warehouse table")
    rows = []
    for lineno, row, problem in read_rows(path, flag):
        if problem is None and any(has_bad_bytes(v) for v in row.values()):
            problem = f"line {lineno}: not valid UTF-8"
        if problem is not None:
            raise ValueError(f"{flag}: {path} {problem}")
        rows.append(row)
    return rows


def read_labelled_file(path: str | Path, label_map: Mapping[str, str], id_column: str = "id",
                       text_column: str = "text") -> list[LabelledRow]:
    return rows_from_dicts(file_rows(path), label_map, id_column, text_column, where=str(path))


def read_dataset(settings: Settings, dataset: str, label_map: Mapping[str, str], id_column: str = "id",
                 text_column: str = "text") -> list[LabelledRow]:
    """A JSONL/CSV file, or else a table (``[schema.]table``) of the configured warehouse."""
    if not dataset_key(dataset).startswith("table:"):
        return read_labelled_file(dataset, label_map, id_column, text_column)
    from safeguard_flow.warehouse.evals import dataset_table_rows

    schema, _, table = dataset.rpartition(".")
    for part, what in ((table, "--dataset table"), (schema or None, "--dataset schema"), (id_column, "--id-column"),
                       (text_column, "--text-column"), *((c, "--label column") for c in label_map.values())):
        if part is not None and not IDENT_RE.match(part):  # names are only ever bound from reflection
            raise ValueError(f"{what} {part!r} is not a plain SQL identifier (or {dataset!r} is a file that does not exist)")
    raw = dataset_table_rows(settings, dataset, schema or settings.warehouse.db_schema, table,
                             {id_column, text_column, *label_map.values()}, order_by=id_column)
    return rows_from_dicts(raw, label_map, id_column, text_column, where=f"table {dataset}")


def rows_from_dicts(raw_rows: Iterable[Mapping], label_map: Mapping[str, str], id_column: str,
                    text_column: str | None, where: str) -> list[LabelledRow]:
    """Labelled rows, checked: every id present and unique, the text and gold columns present.
    `text_column` None: no text wanted (scoring verdicts already made)."""
    rows: list[LabelledRow] = []
    seen: set[str] = set()
    columns_seen: set[str] = set()
    for n, raw in enumerate(raw_rows, start=1):
        columns_seen.update(raw.keys())
        cid = raw.get(id_column)
        if cid in (None, ""):
            raise ValueError(f"{where}: row {n} has no {id_column!r} (set --id-column)")
        cid = str(cid)
        if cid in seen:
            raise ValueError(f"{where}: id {cid!r} appears twice; an eval dataset needs one row per id")
        seen.add(cid)
        rows.append(LabelledRow(cid, raw.get(text_column) if text_column else None,
                                {p: gold_value(raw.get(c)) for p, c in label_map.items()}))
    if rows and text_column and text_column not in columns_seen:
        raise ValueError(f"{where}: no column {text_column!r} (set --text-column; columns: {', '.join(sorted(columns_seen))})")
    missing = sorted(c for c in label_map.values() if c not in columns_seen)
    if rows and missing:
        raise ValueError(f"{where}: no gold column(s) {', '.join(missing)} (columns: {', '.join(sorted(columns_seen))})")
    return rows


def dataset_sha256(rows: Iterable[LabelledRow]) -> str:
    """Identity of the rows scored: ids, texts and gold labels, in order."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.content_id, r.text if isinstance(r.text, str) else repr(r.text),
                                  sorted(r.gold.items())], ensure_ascii=False).encode())
    return digest.hexdigest()
