"""Review items out to other tools and their decisions back in.

Out (`safeguard-flow review export`):
- ``jsonl``: the reviewed texts as a labelled dataset, one row per text with a 0/1 column per policy
  (the newest decision): what `safeguard-flow eval --dataset FILE --label POLICY=POLICY` reads, so
  reviewed items become the next policy version's eval set.
- ``labelstudio``: Label Studio tasks (JSON list) for a text classification project with
  :data:`LABEL_STUDIO_CONFIG`; the model's verdict is a prediction with its confidence as ``score``,
  and ``data`` carries the ids that bring an annotation back (``review_item`` and the verdict's key).
- ``argilla``: Argilla 2 records (``Record.to_dict()`` shape: fields, metadata, suggestions) for a
  dataset with a ``text`` field and a ``label`` label question ("0"/"1").

In (`safeguard-flow review import FILE`): a Label Studio JSON export (tasks with ``annotations``) or
Argilla records with ``responses``; each submitted, not cancelled answer becomes a decision by its
annotator, origin ``labelstudio`` or ``argilla``. Rows that cannot be used are reported, never dropped
silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from safeguard_flow.warehouse.review_store import ITEM_KEY

FORMATS = ("jsonl", "labelstudio", "argilla")
QUESTION = "label"

LABEL_STUDIO_CONFIG = """<View>
  <Header value="$policy v$policy_version ($reason)"/>
  <Text name="text" value="$text"/>
  <Choices name="label" toName="text" choice="single" showInLine="true">
    <Choice value="0" hint="SAFE"/>
    <Choice value="1" hint="VIOLATES"/>
  </Choices>
</View>
"""


@dataclass(frozen=True)
class ImportedDecision:
    item: dict[str, Any]  # ITEM_KEY values
    queue_id: int | None
    decision: int
    reviewer: str
    note: str | None
    origin: str


def _ids(r: dict[str, Any]) -> dict[str, Any]:
    return {"review_item": r["id"], **{k: r[k] for k in ITEM_KEY}}


def to_jsonl_rows(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (source, content id, text): id, text, source, and the decision per policy."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in items:
        if r.get("decision") is None or r.get("text") is None:
            continue
        key = (r["source"], r["content_id"], r["content_hash"])
        row = rows.setdefault(key, {"id": f"{r['source']}:{r['content_id']}", "text": r["text"], "source": r["source"],
                                    "content_id": r["content_id"], "content_hash": r["content_hash"],
                                    "policy_versions": {}})
        row[r["policy"]] = int(r["decision"])
        row["policy_versions"][r["policy"]] = r["policy_version"]
    return list(rows.values())


def to_labelstudio(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    tasks = []
    for r in items:
        task: dict[str, Any] = {"data": {"text": r["text"] or "", "reason": r["reason"], **_ids(r)}}
        if r["model_label"] is not None:
            task["predictions"] = [{
                "model_version": f"safeguard-flow {r['policy']} v{r['policy_version']}",
                "score": r["confidence"],
                "result": [{"from_name": QUESTION, "to_name": "text", "type": "choices",
                            "value": {"choices": [str(r["model_label"])]}}],
            }]
        tasks.append(task)
    return tasks


def to_argilla(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    records = []
    for r in items:
        rec: dict[str, Any] = {"id": f"sg-review-{r['id']}", "fields": {"text": r["text"] or ""},
                               "metadata": {"reason": r["reason"], **_ids(r)}, "suggestions": {}, "responses": {}}
        if r["model_label"] is not None:
            rec["suggestions"][QUESTION] = {"value": str(r["model_label"]), "score": r["confidence"],
                                            "agent": f"safeguard-flow {r['policy']} v{r['policy_version']}"}
        records.append(rec)
    return records


def write_export(fmt: str, items: list[dict[str, Any]], out) -> int:
    """Write the export to a text stream; returns how many rows/tasks/records."""
    if fmt == "jsonl":
        rows = to_jsonl_rows(items)
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return len(rows)
    if fmt == "labelstudio":
        rows = to_labelstudio(items)
    elif fmt == "argilla":
        rows = to_argilla(items)
    else:
        raise ValueError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    json.dump(rows, out, ensure_ascii=False, indent=1, default=str)
    out.write("\n")
    return len(rows)


# ---- in ---------------------------------------------------------------------------------------------


def read_import(path: str | Path) -> tuple[list[ImportedDecision], list[str]]:
    """Decisions from a Label Studio export or Argilla records (JSON list, or JSONL), and the problems."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: neither a JSON document nor JSON lines ({exc})") from None
    if isinstance(data, dict):
        data = data.get("records") or data.get("tasks") or [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of Label Studio tasks or Argilla records")
    decisions: list[ImportedDecision] = []
    problems: list[str] = []
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            problems.append(f"row {n}: not an object")
        elif "annotations" in row or ("data" in row and "fields" not in row):
            _from_labelstudio(n, row, decisions, problems)
        elif "fields" in row or "responses" in row:
            _from_argilla(n, row, decisions, problems)
        else:
            problems.append(f"row {n}: neither a Label Studio task nor an Argilla record")
    return decisions, problems


def _item_of(n: int, ids: Any, problems: list[str]) -> tuple[dict[str, Any], int | None] | None:
    if not isinstance(ids, dict) or any(ids.get(k) in (None, "") for k in ITEM_KEY):
        problems.append(f"row {n}: the ids safeguard-flow exported ({', '.join(ITEM_KEY)}) are missing")
        return None
    try:
        item = {k: int(ids[k]) if k == "policy_version" else str(ids[k]) for k in ITEM_KEY}
        queue_id = int(ids["review_item"]) if ids.get("review_item") not in (None, "") else None
    except (TypeError, ValueError):
        problems.append(f"row {n}: policy_version/review_item are not numbers")
        return None
    return item, queue_id


def _label(value: Any) -> int | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def _from_labelstudio(n: int, task: dict, out: list[ImportedDecision], problems: list[str]) -> None:
    found = _item_of(n, task.get("data"), problems)
    if found is None:
        return
    item, queue_id = found
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        problems.append(f"row {n}: no annotation (or only cancelled ones)")
    for a in annotations:
        choices = [r.get("value", {}).get("choices") for r in a.get("result") or []
                   if isinstance(r, dict) and r.get("type") == "choices" and r.get("from_name", QUESTION) == QUESTION]
        label = _label(choices[0]) if len(choices) == 1 else None
        if label is None:
            problems.append(f"row {n}: annotation {a.get('id')} has no single 0/1 choice")
            continue
        by = a.get("completed_by")
        if isinstance(by, dict):
            by = by.get("email") or by.get("username") or by.get("id")
        notes = [r.get("value", {}).get("text") for r in a.get("result") or []
                 if isinstance(r, dict) and r.get("type") == "textarea"]
        note = " ".join(t if isinstance(t, str) else " ".join(t) for t in notes if t) or None
        out.append(ImportedDecision(item, queue_id, label, f"labelstudio:{by if by is not None else 'unknown'}",
                                    note, "labelstudio"))


def _from_argilla(n: int, record: dict, out: list[ImportedDecision], problems: list[str]) -> None:
    found = _item_of(n, record.get("metadata"), problems)
    if found is None:
        return
    item, queue_id = found
    responses = record.get("responses") or {}
    if isinstance(responses, dict):  # Record.to_dict(): {question: [{value, user_id}]}
        answers = [dict(r, question_name=q) for q, rs in responses.items() for r in (rs or []) if isinstance(r, dict)]
    else:  # a list of {question_name, value, user_id, status}
        answers = [r for r in responses if isinstance(r, dict)]
    answers = [a for a in answers if a.get("question_name") == QUESTION and a.get("status", "submitted") == "submitted"]
    if not answers:
        problems.append(f"row {n}: no submitted response to {QUESTION!r}")
    for a in answers:
        label = _label(a.get("value"))
        if label is None:
            problems.append(f"row {n}: response {a.get('value')!r} is not 0 or 1")
            continue
        out.append(ImportedDecision(item, queue_id, label, f"argilla:{a.get('user_id', 'unknown')}", None, "argilla"))
