"""A warehouse with published verdicts for the BI tests: two days of posts (ours, hostile and
multilingual text, and rows of OpenAI's moderation set read where it lies), two policies, and a
second spam version relabelled with other rules, so every BI view has rows (flips included).

The labels come from the warehouse tests' keyword model: these tests are about what BI tools read,
not about the model (the real vLLM path is tested in tests/ray and tests/airflow).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tests.warehouse.warehouse_helpers import DAY, SOURCE, T0, KeywordModel, Warehouse, at

from safeguard_flow.warehouse import db, extract, policy_store, runs, schema

ROOT = Path(__file__).resolve().parents[2]
MODERATION_SET = ROOT.parent / "shared" / "datasets" / "openai-moderation-2022" / "samples-1200.jsonl"

OUR_POSTS = [
    ("1", "buy now, cheap pills", at(1)), ("2", "a post about gardening", at(2)), ("3", "hello", at(3)),
    ("4", "'; DROP TABLE sg_verdicts; -- buy", at(4)), ("5", None, at(5)),
    ("6", "Привет, это пост про кошек 🐈 (ещё один post)", at(26)), ("7", "買う buy 今すぐ", at(27)),
    ("8", "garbage answer please", at(28)), ("9", "x" * 5000 + " buy", at(29)), ("10", "<script>alert(1)</script> post", at(30)),
]


def moderation_posts(n: int = 6) -> list[tuple]:
    """A few rows of the moderation set (when the shared datasets are beside the checkout)."""
    if not MODERATION_SET.is_file():
        return []
    out = []
    with MODERATION_SET.open(encoding="utf-8") as f:
        for i, line in zip(range(n), f):
            out.append((f"mod-{i}", json.loads(line)["prompt"], at(6 + i if i % 2 == 0 else 30 + i)))
    return out


def publish_spam_v2(wh: Warehouse, small_policies):
    spam = next(p for p in small_policies if p.name == "spam")
    (res,) = policy_store.publish_policies(wh.engine, wh.settings, [dataclasses.replace(
        spam, text=spam.text + "\nv2: posts count as spam.", sha256="", version=None)], "bi-tests")
    return res.policy


def build(settings, small_policies) -> Warehouse:
    """Migrate, publish spam and self-harm, label and publish two nightly intervals, then spam v2
    relabelled everything with different rules (flips)."""
    schema.upgrade(settings)
    wh = Warehouse(settings, db.make_engine(settings))
    wh.policies = [r.policy for r in policy_store.publish_policies(wh.engine, settings, small_policies, author="bi-tests")]
    wh.create_posts()
    wh.add_posts(OUR_POSTS + moderation_posts())
    wh.run_all(T0, T0 + DAY)
    wh.run_all(T0 + DAY, T0 + 2 * DAY)
    v2 = publish_spam_v2(wh, small_policies)
    run_id = runs.create_run(wh.engine, settings, "relabel", [v2])
    extract.extract_relabel(wh.engine, settings, run_id, v2.name, v2.version)
    wh.label(run_id, KeywordModel("post"))
    wh.publish(run_id)
    return wh


def bi_settings(settings_factory, url: str):
    return settings_factory(url, sources=[SOURCE], warehouse={"chunk_size": 8})
