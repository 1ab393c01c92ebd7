"""The exchange formats keep texts we did not write intact (the real moderation set when it is on
this machine, always a few hostile strings of our own), and bad import rows are reported, not lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safeguard_flow.review import exchange

DATASET = Path("/work/shared/datasets/openai-moderation-2022/samples-1200.jsonl")
HOSTILE = ["</script><script>alert(1)</script>", 'quote " and \\ backslash', "مرحبا بالعالم ‏RTL‏", "emoji 🧨🔥 and \u200b zero width",
           "line\nbreaks\r\nand\ttabs", "x" * 50_000, "控制字符 \x07 bell"]


def _texts() -> list[str]:
    texts = list(HOSTILE)
    if DATASET.is_file():
        with DATASET.open(encoding="utf-8") as fh:
            texts += [json.loads(line)["prompt"] for _, line in zip(range(60), fh)]
    return texts


def _items(texts):
    return [{"id": n, "source": "posts", "content_id": f"id-{n}", "policy": "spam", "policy_version": 3,
             "content_hash": hashlib.sha256(t.encode()).hexdigest(), "text": t, "reason": "audit",
             "model_label": n % 2 if n % 5 else None, "confidence": 0.5 + n % 5 / 10 if n % 5 else None,
             "decision": n % 2} for n, t in enumerate(texts, 1)]


def test_texts_survive_export_and_annotations_come_back(tmp_path):
    items = _items(_texts())
    tasks = json.loads(json.dumps(exchange.to_labelstudio(items)))
    assert [t["data"]["text"] for t in tasks] == [i["text"] for i in items]
    for n, t in enumerate(tasks):
        t["annotations"] = [{"id": n, "completed_by": {"email": "ann@example.com"}, "was_cancelled": False,
                             "result": [{"type": "choices", "from_name": "label", "to_name": "text",
                                         "value": {"choices": [str(n % 2)]}}]}]
    tasks.append({"data": {"text": "no ids"}, "annotations": []})
    tasks.append("not an object")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    decisions, problems = exchange.read_import(path)
    assert [(d.item["content_id"], d.item["content_hash"], d.decision) for d in decisions] == \
        [(i["content_id"], i["content_hash"], n % 2) for n, i in enumerate(items)]
    assert {d.reviewer for d in decisions} == {"labelstudio:ann@example.com"} and len(problems) == 2

    rows = exchange.to_jsonl_rows(items)
    assert [r["text"] for r in rows] == [i["text"] for i in items] and all(r["spam"] in (0, 1) for r in rows)
    records = exchange.to_argilla(items)
    assert all(("label" in r["suggestions"]) == (i["model_label"] is not None) for r, i in zip(records, items))
