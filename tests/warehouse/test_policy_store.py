"""Immutable policy versions: same text never twice, reverts, pins, retrieval."""

import dataclasses
import threading

import pytest
import sqlalchemy as sa

from safeguard_flow.domain.policies import Policy
from safeguard_flow.warehouse import policy_store, schema
from safeguard_flow.warehouse.errors import WarehouseError


def edited(policy: Policy, extra: str) -> Policy:
    return dataclasses.replace(policy, text=policy.text + "\n" + extra, sha256="", version=None)


def test_versions_are_immutable_and_text_is_never_stored_twice(make_warehouse, small_policies):
    wh = make_warehouse(publish_policies=False)
    spam = next(p for p in small_policies if p.name == "spam")
    first = policy_store.publish_policies(wh.engine, wh.settings, [spam], "alice")[0]
    assert (first.version, first.created, first.changed) == (1, True, True)
    again = policy_store.publish_policies(wh.engine, wh.settings, [spam], "bob")[0]
    assert (again.version, again.created, again.changed) == (1, False, False)

    v2 = policy_store.publish_policies(wh.engine, wh.settings, [edited(spam, "More rules.")], "carol")[0]
    assert (v2.version, v2.created, v2.changed, v2.previous_version) == (2, True, True, 1)
    # Reverting to v1's text creates nothing: v1 becomes current again.
    back = policy_store.publish_policies(wh.engine, wh.settings, [spam], "dave")[0]
    assert (back.version, back.created, back.changed, back.previous_version) == (1, False, True, 2)

    rows = policy_store.list_versions(wh.engine, wh.settings, "spam")
    assert [(r["version"], r["author"]) for r in rows] == [(1, "alice"), (2, "carol")]
    assert len({r["sha256"] for r in rows}) == 2
    (active,) = policy_store.get_policies(wh.engine, wh.settings, [("spam", None)])
    assert active.version == 1 and active.text == spam.text and active.sha256 == spam.sha256


def test_get_policies_by_version_and_active(make_warehouse, small_policies):
    wh = make_warehouse()
    spam = next(p for p in small_policies if p.name == "spam")
    policy_store.publish_policies(wh.engine, wh.settings, [edited(spam, "v2")], "me")
    got = policy_store.get_policies(wh.engine, wh.settings)
    assert [(p.name, p.version) for p in got] == [("self-harm", 1), ("spam", 2)]
    (v1,) = policy_store.get_policies(wh.engine, wh.settings, [("spam", 1)])
    assert v1.version == 1 and v1.sha256 == spam.sha256 and v1.text == spam.text
    assert v1.labels == spam.labels and v1.output_format == spam.output_format

    policy_store.pin_policy(wh.engine, wh.settings, "spam", 1)
    assert [p.version for p in policy_store.get_policies(wh.engine, wh.settings, [("spam", None)])] == [1]
    policy_store.pin_policy(wh.engine, wh.settings, "spam", None)
    assert [p.version for p in policy_store.get_policies(wh.engine, wh.settings, [("spam", None)])] == [2]

    with pytest.raises(WarehouseError, match="no stored version 7"):
        policy_store.get_policies(wh.engine, wh.settings, [("spam", 7)])
    with pytest.raises(WarehouseError, match="'nope' is not published"):
        policy_store.get_policies(wh.engine, wh.settings, [("nope", None)])
    with pytest.raises(WarehouseError, match="no such stored version"):
        policy_store.pin_policy(wh.engine, wh.settings, "spam", 9)


def test_tampered_version_text_is_detected(make_warehouse):
    wh = make_warehouse()
    pv = schema.tables(wh.settings).policy_versions
    with wh.engine.begin() as conn:
        conn.execute(pv.update().where(pv.c.name == "spam").values(text="be nice"))
    with pytest.raises(WarehouseError, match="does not match its sha256"):
        policy_store.get_policies(wh.engine, wh.settings, [("spam", 1)])


def test_concurrent_publishers_of_the_same_new_text_make_one_version(make_warehouse, small_policies):
    wh = make_warehouse()
    spam = next(p for p in small_policies if p.name == "spam")
    new = edited(spam, "Concurrent edit.")
    barrier = threading.Barrier(4)
    results, errors = [], []

    def publish():
        barrier.wait()
        try:
            results.append(policy_store.publish_policies(wh.engine, wh.settings, [new], "bot")[0])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert {r.version for r in results} == {2}
    assert sum(r.created for r in results) == 1
    pv = schema.tables(wh.settings).policy_versions
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(pv.c.name == "spam")).scalar_one() == 2


def test_cli_publish_reports_versions_and_db_current(warehouse_url, tmp_path, capsys):
    """`safeguard-flow policies publish DIR` and `db current` through a settings file, as a user runs them."""
    import yaml

    from safeguard_flow.cli import main as cli
    from safeguard_flow.warehouse.sample_data import copy_policies

    policies = copy_policies(tmp_path / "policies", ["spam"])
    config = tmp_path / "safeguard.yaml"
    config.write_text(yaml.safe_dump({"home": str(tmp_path / "home"), "warehouse": {"url": warehouse_url}}))

    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 0
    out = capsys.readouterr().out
    assert "spam" in out and "new version" in out and "airflow dags trigger" not in out  # a first version
    assert "trigger safeguard_relabel" in out
    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 0
    out = capsys.readouterr().out
    assert "unchanged" in out and "airflow dags" not in out  # nothing to announce

    spam = policies / "spam.md"
    spam.write_text(spam.read_text() + "\nPromotional links in signatures count as spam.\n")
    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 0
    out = capsys.readouterr().out
    assert "new version" in out  # the hint unpauses before triggering: a paused DAG's run stays queued
    assert "airflow dags unpause safeguard_relabel && airflow dags unpause safeguard_policy_sync && " \
           "airflow dags trigger safeguard_policy_sync" in out
    assert cli.main(["--config", str(config), "db", "current"]) == 0
    assert schema.head() in capsys.readouterr().out

    (policies / "broken.md").write_text("no front matter here\n")
    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 2
    assert "broken.md" in capsys.readouterr().err  # the file is named, nothing half-published


def test_validate_and_publish_take_the_same_arguments(tmp_path, capsys):
    """Both default the folder to settings policies_dir, and both accept one."""
    import yaml

    from safeguard_flow.cli import main as cli
    from safeguard_flow.warehouse.sample_data import copy_policies

    policies = copy_policies(tmp_path / "policies", ["spam"])
    config = tmp_path / "safeguard.yaml"
    config.write_text(yaml.safe_dump({"home": str(tmp_path / "home"), "policies_dir": str(policies)}))
    parser = cli.build_parser()
    for command in ("validate", "publish"):
        for argv in (["policies", command], ["policies", command, str(policies)]):
            args = parser.parse_args(argv)
            assert (args.directory, args.author if command == "publish" else "cli") == (argv[2] if len(argv) > 2 else None, "cli")
    assert cli.main(["--config", str(config), "policies", "validate"]) == 0
    assert "spam" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "policies", "publish"]) == 0
    assert "new version" in capsys.readouterr().out


def test_change_log_gives_each_announcement_its_true_previous_version(make_warehouse, small_policies):
    """Versions published anywhere (the CLI included) are announced once, with the version they
    replaced; unchanged policies and first versions never are."""
    wh = make_warehouse(publish_policies=False)
    spam = next(p for p in small_policies if p.name == "spam")
    policy_store.publish_policies(wh.engine, wh.settings, small_policies, "cli")
    assert policy_store.changes_to_announce(wh.engine, wh.settings, []) == []  # first versions
    assert {c.version for c in policy_store.latest_changes(wh.engine, wh.settings).values()} == {1}

    policy_store.publish_policies(wh.engine, wh.settings, [edited(spam, "v2 rules")], "cli")
    policy_store.publish_policies(wh.engine, wh.settings, small_policies, "sync")  # spam back to v1, self-harm same
    policy_store.publish_policies(wh.engine, wh.settings, [edited(spam, "v2 rules")], "cli")
    (change,) = policy_store.changes_to_announce(wh.engine, wh.settings, [])
    assert (change.name, change.version, change.previous_version, change.created, change.author) == ("spam", 2, 1, False, "cli")
    policy_store.publish_policies(wh.engine, wh.settings, [edited(spam, "v2 rules")], "sync")  # unchanged now
    assert policy_store.changes_to_announce(wh.engine, wh.settings, [change.id]) == []
    v3 = policy_store.publish_policies(wh.engine, wh.settings, [edited(spam, "v3 rules")], "cli")[0]
    (later,) = policy_store.changes_to_announce(wh.engine, wh.settings, [change.id])
    assert (later.version, later.previous_version, later.created) == (3, 2, True) == (v3.version, v3.previous_version, True)
