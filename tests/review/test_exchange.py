"""Out and back in: `review export --format labelstudio`, annotations added the way Label Studio's
JSON export writes them, `review import`, and the decisions in sg_current_verdicts; Argilla records
with responses; and `eval` reading the jsonl export (the real local vLLM engine)."""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa
import yaml

from safeguard_flow.cli import main as cli
from safeguard_flow.review import queue
from safeguard_flow.warehouse import review_store as store
from safeguard_flow.warehouse import schema
from tests.review.seed import labelled_run, load_posts, publish_versions, relax_gate
from tests.review.test_queue import choose


def _routed(settings, engine, tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SAFEGUARD_TEST_")]:
        monkeypatch.delenv(key)  # the helpers' port variables are not settings
    relax_gate(settings)
    settings.review.audit_rate = 0.25
    load_posts(engine, per_day=20)
    (spam,) = publish_versions(engine, settings)
    labelled_run(engine, settings, [spam], choose)
    config = tmp_path / "safeguard.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return engine, settings, config


@pytest.fixture
def routed(wh_settings, wh_engine, tmp_path, monkeypatch):
    return _routed(wh_settings, wh_engine, tmp_path, monkeypatch)


@pytest.fixture
def routed_sqlite(sqlite_wh_settings, tmp_path, monkeypatch):
    """The eval test needs one warehouse only: the engine, not the database, is what it exercises."""
    from safeguard_flow.warehouse import db

    engine = db.make_engine(sqlite_wh_settings)
    yield _routed(sqlite_wh_settings, engine, tmp_path, monkeypatch)
    engine.dispose()


def _human_rows(engine, settings) -> dict[str, dict]:
    view = schema.view_names(settings)["current_verdicts"]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {view} WHERE decided_by = 'human'")).mappings().all()
    return {r["content_id"]: dict(r) for r in rows}


def _as_label_studio_writes_it(tasks: list[dict], choices: dict[int, str | None]) -> list[dict]:
    """The JSON export of a Label Studio project after annotating: task ids, annotation objects with
    completed_by, result ids and timestamps; a cancelled (skipped) annotation; an untouched task."""
    out = []
    for n, task in enumerate(tasks, 1):
        task = {"id": n, "project": 3, "created_at": "2026-12-03T10:00:00.000000Z", **task,
                "predictions": [dict(p, id=500 + n, task=n) for p in task.get("predictions", [])]}
        choice = choices.get(n, "none")
        if choice == "cancelled":
            task["annotations"] = [{"id": 900 + n, "completed_by": 2, "result": [], "was_cancelled": True,
                                    "ground_truth": False, "task": n, "project": 3, "lead_time": 1.0}]
        elif choice != "none":
            task["annotations"] = [{
                "id": 100 + n, "completed_by": 7, "was_cancelled": False, "ground_truth": False,
                "result": [{"id": f"r{n}", "type": "choices", "value": {"choices": [choice]}, "origin": "manual",
                            "to_name": "text", "from_name": "label"},
                           {"id": f"n{n}", "type": "textarea", "value": {"text": [f"note {n}"]}, "origin": "manual",
                            "to_name": "text", "from_name": "notes"}],
                "created_at": "2026-12-03T10:05:00.000000Z", "updated_at": "2026-12-03T10:05:00.000000Z",
                "lead_time": 4.2, "prediction": {}, "result_count": 0, "task": n, "project": 3,
                "last_action": None, "parent_prediction": 500 + n, "parent_annotation": None}]
        else:
            task["annotations"] = []
        out.append(task)
    return out


def _flip(task: dict) -> str:
    """The opposite of the model's prediction ("1" for an error verdict, which has none)."""
    predictions = task.get("predictions")
    return "1" if not predictions or predictions[0]["result"][0]["value"]["choices"] == ["0"] else "0"


def test_labelstudio_round_trip(routed, tmp_path, capsys):
    engine, settings, config = routed
    exported = tmp_path / "tasks.json"
    assert cli.main(["--config", str(config), "review", "export", "--format", "labelstudio", "--output", str(exported)]) == 0
    tasks = json.loads(exported.read_text())
    open_items = store.queue_items(engine, settings, status="open")
    assert len(tasks) == len(open_items) >= 4
    with_prediction = [t for t in tasks if t.get("predictions")]
    assert all(0 < t["predictions"][0]["score"] <= 1 for t in with_prediction)
    assert {"review_item", "source", "content_id", "policy", "policy_version", "content_hash", "text"} <= set(tasks[0]["data"])

    # Reviewers in Label Studio: 1 and 2 flip the model, 3 agrees, 4 cancelled, the rest untouched.
    annotated = _as_label_studio_writes_it(tasks, {1: _flip(tasks[0]), 2: _flip(tasks[1]), 3: "0", 4: "cancelled"})
    back = tmp_path / "project-3-at-2026-12-03.json"
    back.write_text(json.dumps(annotated))
    capsys.readouterr()
    assert cli.main(["--config", str(config), "review", "import", str(back)]) == 0
    out = capsys.readouterr()
    assert "imported 3 decision(s)" in out.out and "no annotation" in out.err

    human = _human_rows(engine, settings)
    for task in annotated[:3]:
        row = human[task["data"]["content_id"]]
        want = int(task["annotations"][0]["result"][0]["value"]["choices"][0])
        assert (row["label"], row["reviewer"]) == (want, "labelstudio:7")
    assert len(human) == 3
    history = store.decision_history(engine, settings, "spam", annotated[0]["data"]["content_hash"])
    assert history[0]["origin"] == "labelstudio" and history[0]["note"] == "note 1"
    decided = {r["content_id"] for r in store.queue_items(engine, settings, status="decided")}
    assert decided == {t["data"]["content_id"] for t in annotated[:3]}


def test_argilla_export_and_responses(routed, tmp_path):
    engine, settings, _ = routed
    with open(tmp_path / "records.json", "w") as fh:
        queue.export_items(engine, settings, "argilla", fh)
    records = json.loads((tmp_path / "records.json").read_text())
    records[0]["responses"] = {"label": [{"value": "1", "user_id": "u-1"}]}
    records[1]["responses"] = [{"question_name": "label", "value": "0", "user_id": "u-2", "status": "submitted"},
                               {"question_name": "label", "value": "1", "user_id": "u-3", "status": "draft"}]
    records[2]["responses"] = {"label": [{"value": "maybe", "user_id": "u-1"}]}
    (tmp_path / "answered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    result = queue.import_decisions(engine, settings, tmp_path / "answered.jsonl")
    assert result["decisions"] == 2 and len(result["problems"]) == 1 and "maybe" in result["problems"][0]
    human = _human_rows(engine, settings)
    assert {human[r["metadata"]["content_id"]]["reviewer"] for r in records[:2]} == {"argilla:u-1", "argilla:u-2"}


@pytest.mark.slow
def test_eval_reads_the_jsonl_export(routed_sqlite, tmp_path, vllm_engine, lend_engine):
    engine, settings, config = routed_sqlite
    items = store.queue_items(engine, settings, "spam")[:6]
    for i, r in enumerate(items):
        store.record_decision(engine, settings, reviewer="ann", decision=i % 2, origin="ui", item_id=r["id"])
    dataset = tmp_path / "reviewed.jsonl"
    assert cli.main(["--config", str(config), "review", "export", "--format", "jsonl", "--output", str(dataset)]) == 0
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == 6 and [r["spam"] for r in rows] == [i % 2 for i in range(6)]
    lend_engine(vllm_engine)
    out = tmp_path / "eval"
    assert cli.main(["--config", str(config), "eval", "--policies", settings.policies_dir, "--dataset", str(dataset),
                     "--label", "spam=spam", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows_scored"] == 6
    p = metrics["policies"]["spam"]
    assert p["tp"] + p["fp"] + p["fn"] + p["tn"] + p["errors"] + p["skipped"] == 6


def test_review_route_estimates_and_queue_commands(routed, capsys):
    engine, settings, config = routed
    run_id = store.queue_items(engine, settings)[0]["run_id"]
    capsys.readouterr()
    assert cli.main(["--config", str(config), "review", "route", run_id]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: 20 verdict(s)" in out and "0 added to the queue" in out and "error 2" in out
    assert cli.main(["--config", str(config), "review", "queue"]) == 0
    assert "spam" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "review", "estimates", "--refresh"]) == 0
    assert "audit decided/items" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "review", "route", "no-such-run"]) == 2
