"""Shadow versions, the version diff and the promotion gate, end to end on SQLite and PostgreSQL.

Labels come from the sample's human annotations through the real warehouse flow (extract, stage,
GX gate, publish): the model is not under test here (tests/eval runs it). The CLI is driven as a
user runs it, with a settings file.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
import yaml

from safeguard_flow.cli import main as cli
from safeguard_flow.policy_quality.datasets import LabelledRow, dataset_key, dataset_sha256
from safeguard_flow.policy_quality.metrics import compute_metrics, mcnemar_exact
from safeguard_flow.domain.policies import load_policy
from safeguard_flow import pipeline
from safeguard_flow.warehouse.sample_data import POSTS_SOURCE, copy_policies, load_sample, read_sample
from safeguard_flow.settings import load_settings
from safeguard_flow.domain.verdicts import OK, Verdict
from safeguard_flow.warehouse import db, evals, extract, policy_store, publish, runs, schema, staging

POLICY = "self-harm"


@pytest.fixture(autouse=True)
def _no_test_port_vars(monkeypatch):
    """The helpers' SAFEGUARD_TEST_* port variables are not settings; keep them out of the CLI's env."""
    import os

    for key in [k for k in os.environ if k.startswith("SAFEGUARD_TEST_")]:
        monkeypatch.delenv(key)


def _label(version: int, row: dict, index: int) -> int:
    gold = int(row.get("SH") or 0)
    return 1 - gold if version >= 2 and index % 4 == 0 else gold  # v2 (and v3) flip every 4th item


def _relabel(engine, settings, policy, rows_by_id, order) -> str:
    run_id = runs.create_run(engine, settings, "relabel", [policy], params={"scope": "all"})
    extract.extract_relabel(engine, settings, run_id, policy.name, policy.version)
    for chunk in staging.pending_chunks(engine, settings, run_id):
        items = staging.read_chunk(engine, settings, run_id, chunk)
        staging.write_chunk(engine, settings, run_id, chunk, [Verdict(
            content_id=i.content_id, policy=policy.name, policy_version=policy.version, source=i.source,
            content_hash=i.content_hash, label=_label(policy.version, rows_by_id[i.content_id], order[i.content_id]),
            parse_status=OK, rationale=f"v{policy.version} on {i.content_id}", model="annotations") for i in items])
    staging.finish_labelling(engine, settings, run_id)
    pipeline.validate_run(engine, settings, run_id)
    publish.publish_run(engine, settings, run_id)
    return run_id


def _nightly(engine, settings, rows):
    """The nightly run of the interval holding `rows` (all at one time), labelled from the annotations
    (both versions agree on these); published."""
    import datetime as dt

    at = dt.datetime.fromisoformat(rows[0]["updated_at"])
    run = pipeline.start_interval_run(engine, settings, at - dt.timedelta(hours=1), at + dt.timedelta(hours=1))
    gold = {r["id"]: int(r.get("SH") or 0) for r in rows}
    policies = policy_store.get_policies(engine, settings, run.policy_refs)
    for chunk in staging.pending_chunks(engine, settings, run.id):
        items = staging.read_chunk(engine, settings, run.id, chunk)
        staging.write_chunk(engine, settings, run.id, chunk, [Verdict(
            content_id=i.content_id, policy=p.name, policy_version=p.version, source=i.source,
            content_hash=i.content_hash, label=gold[i.content_id],
            parse_status=OK, rationale=f"v{p.version} on {i.content_id}", model="annotations")
            for i in items for p in policies])
    staging.finish_labelling(engine, settings, run.id)
    pipeline.validate_run(engine, settings, run.id)
    publish.publish_run(engine, settings, run.id)
    return run


def _store_eval(engine, settings, policy, rows, dataset):
    verdicts = [Verdict(content_id=r.content_id, policy=policy.name, policy_version=policy.version, label=_label(
        policy.version, {"SH": r.gold[POLICY]}, n), parse_status=OK, model="annotations") for n, r in enumerate(rows)]
    metrics = compute_metrics(rows, verdicts, [policy.name], bootstrap_samples=200)
    metrics.update(model="annotations", engine="none", prompt_tokens=0, completion_tokens=0, seconds=0.0,
                   policy_versions={policy.name: {"version": policy.version, "sha256": policy.sha256}})
    key = dataset_key(str(dataset))
    return evals.store_eval(engine, settings, metrics, rows, verdicts, dataset=key, dataset_sha256=dataset_sha256(rows),
                            label_map={POLICY: "SH"}), verdicts


def _current(engine, settings) -> set[tuple[int, int]]:
    view = sa.table(schema.view_names(settings)["current_verdicts"])
    with engine.connect() as conn:
        return set(conn.execute(sa.select(sa.column("policy_version"), sa.column("is_active_version")).select_from(view)
                                .where(sa.column("policy") == POLICY)).all())


def test_shadow_diff_refused_forced_and_passing_promotion(warehouse_url, tmp_path, capsys):
    policies = copy_policies(tmp_path / "policies", [POLICY])
    labelled = [r for r in read_sample() if r.get("SH") in (0, 1)]
    sample = [r for r in labelled if r["SH"] == 1][:10] + [r for r in labelled if r["SH"] == 0][:30]
    dataset = tmp_path / "eval.jsonl"
    dataset.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "SH": r["SH"]}) + "\n" for r in sample))
    cfg = {"home": str(tmp_path / "home"), "policies_dir": str(policies), "warehouse": {"url": warehouse_url},
           "sources": [POSTS_SOURCE], "policy_gate": {"max_f1_drop": 0.02, "max_flip_rate": 0.10},
           "evals": {"policies": {POLICY: {"dataset": str(dataset), "label_column": "SH"}}}}
    config = tmp_path / "safeguard.yaml"
    config.write_text(yaml.safe_dump(cfg))
    settings = load_settings(config, environ={})
    run = lambda *argv: cli.main(["--config", str(config), *argv])  # noqa: E731

    assert run("policies", "publish", str(policies)) == 0
    engine = db.make_engine(settings)
    load_sample(engine, sample)
    by_id = {r["id"]: r for r in sample}
    order = {r["id"]: n for n, r in enumerate(sample)}
    rows = [LabelledRow(r["id"], r["text"], {POLICY: r["SH"]}) for r in sample]
    v1 = policy_store.get_policies(engine, settings)[0]
    _relabel(engine, settings, v1, by_id, order)
    _store_eval(engine, settings, v1, rows, dataset)

    # v2, published as shadow: stored, labels everything, but BI keeps v1.
    path = policies / "self-harm.md"
    path.write_text(path.read_text() + "\nAlso flag jokes about self-harm.\n")
    capsys.readouterr()
    assert run("policies", "publish", "--shadow", str(policies)) == 0
    assert "shadow (BI keeps v1)" in capsys.readouterr().out
    t = schema.tables(settings)
    with engine.connect() as conn:
        head = conn.execute(sa.select(t.policies).where(t.policies.c.name == POLICY)).one()
    assert (head.current_version, head.shadow_version) == (1, 2)
    assert [p.version for p in policy_store.get_policies(engine, settings)] == [1]  # the active version
    v2 = policy_store.get_policies(engine, settings, [(POLICY, 2)])[0]
    _relabel(engine, settings, v2, by_id, order)
    assert _current(engine, settings) == {(1, 1)}  # the current view holds v1 while v2 has labelled it all
    # A nightly run labels new content with both: the shadow labels as usual, BI still sees v1.
    fresh = [dict(r, id=f"new-{r['id']}", updated_at="2026-11-25T03:00:00+00:00") for r in sample[:6]]
    load_sample(engine, sample + fresh)  # (re)creates the table: the sample stays, new posts arrive
    by_id.update({r["id"]: r for r in fresh})
    order.update({r["id"]: 4 * n + 1 for n, r in enumerate(fresh)})  # later relabels do not flip them either
    nightly = _nightly(engine, settings, fresh)
    assert nightly.policy_refs == [(POLICY, 1), (POLICY, 2)]
    with engine.connect() as conn:
        per_version = dict(conn.execute(sa.select(t.verdicts.c.policy_version, sa.func.count()).where(
            t.verdicts.c.run_id == nightly.id).group_by(t.verdicts.c.policy_version)).all())
    assert per_version == {1: len(fresh), 2: len(fresh)}
    assert _current(engine, settings) == {(1, 1)}
    _, v2_verdicts = _store_eval(engine, settings, v2, rows, dataset)

    # The diff: flips from the view, the F1 change, McNemar on the paired predictions.
    assert run("policies", "diff", POLICY, "1", "2", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    flipped = [r for n, r in enumerate(sample) if n % 4 == 0]
    assert d["flips"]["compared"] == d["flips"]["both_labelled"] == len(sample) + len(fresh)
    assert d["flips"]["to_positive"] == sum(1 for r in flipped if r["SH"] == 0)
    assert d["flips"]["to_safe"] == sum(1 for r in flipped if r["SH"] == 1)
    assert d["flips"]["flip_rate"] == pytest.approx(len(flipped) / (len(sample) + len(fresh)))
    assert {e["content_id"] for e in d["examples"]} <= {r["id"] for r in flipped} and d["examples"]
    assert d["examples"][0]["new_rationale"].startswith("v2 on ")
    (comparison,) = d["evals"]
    expected = mcnemar_exact([r.gold[POLICY] for r in rows], [r.gold[POLICY] for r in rows], [v.label for v in v2_verdicts])
    assert comparison["mcnemar"]["old_only_correct"] == expected.old_only_correct == len(flipped)
    assert comparison["mcnemar"]["new_only_correct"] == 0
    assert comparison["mcnemar"]["p_value"] == pytest.approx(expected.p_value)
    assert comparison["old_f1"] == 1.0 and comparison["f1_change"] < -0.02
    assert run("policies", "diff", POLICY, "1", "2", "--html", str(tmp_path / "diff.html")) == 0
    assert "McNemar" in (tmp_path / "diff.html").read_text()

    # The relabel flow's review step: the diff report and the gate; no promotion without auto_promote.
    from safeguard_flow.policy_quality.policy_change import review_version

    review = review_version(engine, settings, POLICY, 2, actor="airflow:test")
    assert review["shadow"] and review["compared_with"] == 1 and review["gate_passed"] is False
    assert review["outcome"].startswith("awaiting promotion") and "McNemar" in open(review["report"]).read()

    # Refused: F1 drops and too many flips. Recorded, nothing changes.
    capsys.readouterr()
    assert run("policies", "promote", POLICY, "2", "--actor", "alice") == 1
    err = capsys.readouterr().err
    assert "refused" in err and "max_f1_drop" in err and "max_flip_rate" in err
    assert _current(engine, settings) == {(1, 1)}
    assert run("policies", "promote", POLICY, "2", "--force") == 2  # a forced promotion needs a reason
    # Forced, with its reason: v2 becomes what BI sees.
    assert run("policies", "promote", POLICY, "2", "--force", "--reason", "legal asked for it", "--actor", "bob") == 0
    assert _current(engine, settings) == {(2, 1)}
    with engine.connect() as conn:
        head = conn.execute(sa.select(t.policies).where(t.policies.c.name == POLICY)).one()
        log = [dict(r._mapping) for r in conn.execute(sa.select(t.policy_promotions).order_by(t.policy_promotions.c.id))]
    assert (head.current_version, head.shadow_version) == (2, None)
    assert [(r["outcome"], r["actor"], r["from_version"], r["to_version"]) for r in log] == [
        ("refused", "alice", 1, 2), ("forced", "bob", 1, 2)]
    assert log[1]["reason"] == "legal asked for it" and log[0]["reason"] is None
    assert log[0]["problems"] and log[1]["problems"] == log[0]["problems"]
    assert log[1]["figures"]["f1_drop"] == pytest.approx(comparison["old_f1"] - comparison["new_f1"])
    assert log[1]["figures"]["flip_rate"] == pytest.approx(d["flips"]["flip_rate"])

    # v3: same labels and eval figures as v2 -> the gate passes.
    path.write_text(path.read_text() + "\nQuotes of song lyrics are SAFE.\n")
    assert run("policies", "publish", "--shadow", str(policies)) == 0
    v3 = policy_store.get_policies(engine, settings, [(POLICY, 3)])[0]
    assert run("policies", "promote", POLICY, "3") == 1  # no eval of v3 yet, no v3 verdicts: refused
    _relabel(engine, settings, v3, by_id, order)
    _store_eval(engine, settings, v3, rows, dataset)
    assert _current(engine, settings) == {(2, 1)}
    auto = settings.model_copy(update={"policy_gate": settings.policy_gate.model_copy(update={"auto_promote": True})})
    review = review_version(engine, auto, POLICY, 3, actor="airflow:relabel/run-1")  # the gate passes: promoted
    assert review["gate_passed"] is True and review["outcome"] == "promoted"
    assert _current(engine, settings) == {(3, 1)}
    capsys.readouterr()
    assert run("policies", "promotions", POLICY) == 0
    listing = capsys.readouterr().out
    assert "legal asked for it" in listing and "airflow:relabel/run-1" in listing and listing.count(" refused ") == 2, listing
    engine.dispose()


def test_view_file_and_migration_agree():
    """sql/views/policy_version_diff.sql (for readers and BI) is the SQL migration 0005 creates."""
    import importlib.util

    from safeguard_flow.warehouse.schema import sql_dir

    path = next((sql_dir() / "migrations" / "versions").glob("0005_*.py"))
    spec = importlib.util.spec_from_file_location("m0005", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    view = (sql_dir() / "views" / "policy_version_diff.sql").read_text()
    assert view.replace("${verdicts}", "{verdicts}").strip() == module.POLICY_VERSION_DIFF.strip()


def test_eval_dataset_from_a_warehouse_table(sqlite_url, settings_factory):
    from safeguard_flow.policy_quality.datasets import read_dataset

    settings = settings_factory(sqlite_url)
    engine = db.make_engine(settings)
    table = sa.Table("labelled_posts", sa.MetaData(), sa.Column("post_id", sa.String, primary_key=True),
                     sa.Column("body", sa.Text), sa.Column("is_spam", sa.Integer))
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"post_id": "b", "body": "buy now", "is_spam": 1},
                                      {"post_id": "a", "body": "hello", "is_spam": None}])
    engine.dispose()
    rows = read_dataset(settings, "labelled_posts", {"spam": "is_spam"}, id_column="post_id", text_column="body")
    assert [(r.content_id, r.text, r.gold) for r in rows] == [("a", "hello", {"spam": None}), ("b", "buy now", {"spam": 1})]
    with pytest.raises(ValueError, match="no column"):
        read_dataset(settings, "labelled_posts", {"spam": "nope"}, id_column="post_id", text_column="body")
    with pytest.raises(FileNotFoundError, match="neither a file nor a table"):
        read_dataset(settings, "missing_table", {"spam": "x"})
    with pytest.raises(ValueError, match="plain SQL identifier"):
        read_dataset(settings, "posts; drop table x", {"spam": "x"})


def test_front_matter_shadow_publishes_a_shadow_version(sqlite_url, settings_factory, tmp_path):
    from safeguard_flow.domain.policies import PolicyError, parse_policy

    settings = settings_factory(sqlite_url)
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    path = copy_policies(tmp_path / "p", [POLICY]) / "self-harm.md"
    plain = load_policy(path)
    policy_store.publish_policies(engine, settings, [plain], author="t")
    text = path.read_text().replace("name: self-harm", "name: self-harm\nshadow: true", 1) + "\nMore examples.\n"
    shadow = parse_policy(text, path)
    assert shadow.shadow and not plain.shadow
    assert parse_policy(text.replace("shadow: true", "shadow: false"), path).sha256 == shadow.sha256  # not identity
    (result,) = policy_store.publish_policies(engine, settings, [shadow], author="sync")
    assert (result.version, result.shadow, result.changed, result.previous_version) == (2, True, False, 1)
    assert [p.version for p in policy_store.get_policies(engine, settings)] == [1]
    (again,) = policy_store.publish_policies(engine, settings, [plain], author="sync", shadow=True)
    assert (again.version, again.shadow) == (1, False)  # the promoted text is not a shadow of itself
    with pytest.raises(PolicyError, match="shadow"):
        parse_policy(text.replace("shadow: true", "shadow: maybe"), path)
    engine.dispose()
