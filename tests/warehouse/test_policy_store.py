"""Immutable policy versions: same text never twice, reverts, pins, retrieval."""

import dataclasses
import threading

import pytest
import sqlalchemy as sa

from safeguard_flow.policies import Policy
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

    from safeguard_flow import cli
    from safeguard_flow.sample_data import copy_policies

    policies = copy_policies(tmp_path / "policies", ["spam"])
    config = tmp_path / "safeguard.yaml"
    config.write_text(yaml.safe_dump({"home": str(tmp_path / "home"), "warehouse": {"url": warehouse_url}}))

    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 0
    out = capsys.readouterr().out
    assert "spam" in out and "new version" in out and "airflow dags trigger safeguard_policy_sync" in out
    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 0
    out = capsys.readouterr().out
    assert "unchanged" in out and "airflow dags trigger" not in out  # nothing to announce

    spam = policies / "spam.md"
    spam.write_text(spam.read_text() + "\nPromotional links in signatures count as spam.\n")
    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 0
    assert "new version" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "db", "current"]) == 0
    assert schema.head() in capsys.readouterr().out

    (policies / "broken.md").write_text("no front matter here\n")
    assert cli.main(["--config", str(config), "policies", "publish", str(policies)]) == 2
    assert "broken.md" in capsys.readouterr().err  # the file is named, nothing half-published
