"""Publish: one transaction, idempotent, newest content wins, concurrent publishes, dropped connections.

Each dialect's own upsert (ON CONFLICT on PostgreSQL, SQLite and DuckDB; ON DUPLICATE KEY UPDATE on
MariaDB) runs on its database; the generic path for other dialects on SQLite and PostgreSQL.
"""

import threading
import time

import pytest
from tests.conftest import EVERY_WAREHOUSE, warehouse_url_for
import sqlalchemy as sa
from tests.warehouse.warehouse_helpers import at

from safeguard_flow.warehouse import runs, schema, staging
from safeguard_flow.warehouse.errors import RunStateError, WarehouseError

METHODS = ["native", "generic"]


@pytest.fixture(params=EVERY_WAREHOUSE)
def warehouse_url(request, tmp_path):
    """Each dialect's own upsert (ON CONFLICT, ON DUPLICATE KEY UPDATE) and the generic path, on SQLite,
    PostgreSQL, MariaDB and DuckDB."""
    return warehouse_url_for(request, tmp_path, request.param)


def method_kw(method):
    return {} if method == "native" else {"method": "generic"}


def seeded(wh, n=12):
    wh.add_posts([(f"{i:03d}", f"buy thing {i}" if i % 4 == 0 else f"post {i}", at(i / n)) for i in range(n)])


def edit_all(wh, n=12, hours=25, word="edited"):
    for i in range(n):
        wh.edit_post(f"{i:03d}", f"{word} post {i}" + (" buy" if i % 2 else ""), at(hours))


def key_counts(wh):
    v = schema.tables(wh.settings).verdicts
    keys = [v.c.source, v.c.content_id, v.c.policy, v.c.policy_version]
    with wh.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(v)).scalar_one()
        distinct = conn.execute(sa.select(sa.func.count()).select_from(sa.select(*keys).distinct().subquery())).scalar_one()
    return total, distinct


@pytest.mark.parametrize("method", METHODS)
def test_publish_inserts_records_the_run_and_is_idempotent(wh, method):
    seeded(wh)
    run_id = wh.nightly()
    wh.label(run_id)
    first = wh.publish(run_id, **method_kw(method))
    assert (first["staged"], first["inserted"], first["updated"], first["unchanged"]) == (24, 24, 0, 0)
    assert first["positives"] == 6 and first["errors"] == 0
    before = wh.verdicts()
    assert len(before) == 24 and {v["run_id"] for v in before} == {run_id}
    hit = next(v for v in before if v["content_id"] == "004" and v["policy"] == "spam")
    # The model's own words about its confidence stay apart from the engine-measured `confidence`
    # (this rule engine measures none).
    assert (hit["label"], hit["category"], hit["rule_ids"], hit["confidence"]) == (1, "promo", ["R1"], None)
    assert hit["extra"]["stated_confidence"] == 0.9
    assert hit["raw_output"] is None and hit["labelled_at"].tzinfo is not None  # raw text kept for errors only
    run = runs.get_run(wh.engine, wh.settings, run_id)
    assert run.status == "published" and run.published_at is not None
    assert (run.verdicts, run.inserted, run.positives, run.model) == (24, 24, 6, "keyword-rules")
    assert (run.prompt_tokens, run.completion_tokens) == (24 * 20, 24 * 5)

    again = wh.publish(run_id, **method_kw(method))
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 24)
    assert wh.verdicts() == before  # not a single value changed, published_at included


@pytest.mark.parametrize("method", METHODS)
def test_newer_content_wins_and_a_late_older_run_changes_nothing(wh, method):
    seeded(wh)
    old_run = wh.nightly()  # reads the original texts...
    edit_all(wh, hours=1.5)
    new_run = wh.nightly(run_id="newer")  # ...this one the edited texts (extracted later)
    wh.label(old_run)
    wh.label(new_run)
    assert wh.publish(new_run, **method_kw(method))["inserted"] == 24
    late = wh.publish(old_run, **method_kw(method))
    assert (late["inserted"], late["updated"], late["unchanged"]) == (0, 0, 24)
    assert {v["run_id"] for v in wh.verdicts()} == {"newer"}

    # A later run over the edited content replaces what it labelled.
    edit_all(wh, hours=30, word="rewritten")
    latest = wh.nightly(at(29), at(31))
    wh.label(latest)
    assert wh.publish(latest, **method_kw(method))["updated"] == 24
    assert {v["run_id"] for v in wh.verdicts()} == {latest}
    assert key_counts(wh) == (24, 24)


def test_unparseable_output_is_published_as_an_error_row_with_its_raw_text(wh):
    wh.add_posts([("1", "garbage in", at(1)), ("2", "fine", at(1))])
    run_id = wh.nightly()
    wh.label(run_id)
    assert wh.publish(run_id)["errors"] == 2
    rows = {(v["content_id"], v["policy"]): v for v in wh.verdicts()}
    bad = rows[("1", "spam")]
    assert (bad["parse_status"], bad["label"], bad["raw_output"]) == ("malformed", None, "I think maybe")
    assert bad["error"] and rows[("2", "spam")]["raw_output"] is None


def test_publish_refuses_every_run_the_gate_did_not_validate(wh):
    """Whoever calls publish_run: only a validated run (or a published one, again) is merged."""
    seeded(wh)
    run_id = wh.nightly()
    with pytest.raises(RunStateError, match="is extracted, not validated"):
        wh.publish(run_id, validate=False)
    chunk = staging.pending_chunks(wh.engine, wh.settings, run_id)[0]
    from safeguard_flow.labelling.loop import label_items
    from tests.warehouse.warehouse_helpers import KeywordModel

    items = staging.read_chunk(wh.engine, wh.settings, run_id, chunk)
    staging.write_chunk(wh.engine, wh.settings, run_id, chunk, label_items(KeywordModel(), items, wh.policies))
    with pytest.raises(RunStateError, match="not validated"):
        wh.publish(run_id, allow_partial=True, validate=False)
    wh.label(run_id)
    assert runs.get_run(wh.engine, wh.settings, run_id).status is runs.RunStatus.LABELLED
    with pytest.raises(RunStateError, match="is labelled, not validated"):  # 100 malformed verdicts would go in
        wh.publish(run_id, validate=False)
    runs.transition(wh.engine, wh.settings, run_id, runs.RunStatus.QUARANTINED, validation={"success": False})
    with pytest.raises(RunStateError, match="quarantined"):
        wh.publish(run_id)
    with pytest.raises(runs.IllegalTransition, match="reset"):  # nor can it be validated behind the gate's back
        runs.transition(wh.engine, wh.settings, run_id, runs.RunStatus.VALIDATED, validation={"success": True})
    assert wh.verdicts() == []
    never = runs.create_run(wh.engine, wh.settings, "manual", wh.policies)
    with pytest.raises(RunStateError, match="no complete work list"):
        wh.publish(never)


def test_publish_method_must_fit_the_database(wh):
    other = "postgresql" if wh.engine.dialect.name == "sqlite" else "sqlite"
    with pytest.raises(WarehouseError, match=f"method '{other}' cannot be used"):
        wh.publish("whatever", method=other)


@pytest.mark.parametrize("method", METHODS)
def test_concurrent_publishes_of_overlapping_verdicts_leave_no_duplicates(wh, method):
    seeded(wh, n=40)
    run_ids = [wh.nightly(run_id=f"run-{i}") for i in range(3)]  # all three hold every item
    for run_id in run_ids:
        wh.label(run_id)
    results, errors = {}, []
    first_upserted = threading.Event()

    def publish(run_id, hold=0.0):
        def after_upsert(conn):
            first_upserted.set()
            time.sleep(hold)  # keep the rows locked while the others try to write them

        try:
            results[run_id] = wh.publish(run_id, _after_upsert=after_upsert if hold else None, **method_kw(method))
        except Exception as exc:  # pragma: no cover - asserted below
            errors.append(exc)

    holder = threading.Thread(target=publish, args=("run-0", 1.0))
    holder.start()
    assert first_upserted.wait(30)
    racers = [threading.Thread(target=publish, args=(r,)) for r in run_ids[1:]]
    for th in racers:
        th.start()
    for th in [holder, *racers]:
        th.join(120)
    assert not errors, errors
    assert set(results) == set(run_ids)
    assert key_counts(wh) == (80, 80)
    assert sum(r["inserted"] for r in results.values()) == 80
    assert len({v["run_id"] for v in wh.verdicts()}) == 1  # every key ended with the same, latest writer


@pytest.mark.parametrize("method", METHODS)
def test_a_connection_dropped_mid_publish_leaves_verdicts_as_they_were(wh, method):
    seeded(wh)
    wh.run_all()
    edit_all(wh, hours=1.5)
    wh.add_posts([("new-1", "brand new", at(2)), ("new-2", "buy buy", at(2))])
    run_id = wh.nightly(run_id="second")
    wh.label(run_id)
    before = wh.verdicts()

    def drop_connection(conn):
        if conn.dialect.name == "postgresql":
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with wh.engine.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        else:
            conn.connection.dbapi_connection.close()

    with pytest.raises(sa.exc.DBAPIError):
        wh.publish(run_id, _after_upsert=drop_connection, **method_kw(method))
    assert wh.verdicts() == before
    assert runs.get_run(wh.engine, wh.settings, run_id).status == "labelled" or \
        runs.get_run(wh.engine, wh.settings, run_id).published_at is None

    rerun = wh.publish(run_id, **method_kw(method))
    assert (rerun["inserted"], rerun["updated"]) == (4, 24)
    assert key_counts(wh) == (28, 28)
    assert {v["run_id"] for v in wh.verdicts()} == {"second"}
    assert wh.publish(run_id, **method_kw(method))["unchanged"] == 28


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse_url", ["postgresql"], indirect=True)
def test_postgres_backend_killed_inside_the_upsert_statement(make_warehouse):
    """Kill the publishing backend while its INSERT .. ON CONFLICT is half done (blocked on a row lock)."""
    wh = make_warehouse()
    assert wh.engine.dialect.name == "postgresql"
    wh.create_posts()
    seeded(wh, n=40)
    wh.run_all()
    edit_all(wh, n=40, hours=1.5)
    run_id = wh.nightly(run_id="second")
    wh.label(run_id)
    before = wh.verdicts()
    v = schema.tables(wh.settings).verdicts
    outcome = {}

    blocker = wh.engine.connect()
    tx = blocker.begin()
    # Lock a row in the middle of the key order: the upsert has already written the rows before it.
    blocker.execute(sa.select(v).where(v.c.content_id == "020", v.c.policy == "spam").with_for_update())

    def publish():
        try:
            outcome["result"] = wh.publish(run_id)
        except Exception as exc:
            outcome["error"] = exc

    th = threading.Thread(target=publish)
    th.start()
    pid = None
    # Autocommit: inside one transaction pg_stat_activity would keep showing its first snapshot.
    with wh.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "error" not in outcome and "result" not in outcome:
            pid = watch.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :pattern "
                "AND pid <> pg_backend_pid()"), {"pattern": "%sg_verdicts%"}).scalar()
            if pid:
                break
            time.sleep(0.05)
        assert pid, f"publish never blocked on the locked row: {outcome}"
        assert watch.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar_one()
    th.join(60)
    tx.rollback()
    blocker.close()
    assert isinstance(outcome.get("error"), sa.exc.OperationalError)
    assert wh.verdicts() == before

    rerun = wh.publish(run_id)
    assert (rerun["inserted"], rerun["updated"]) == (0, 80)
    assert key_counts(wh) == (80, 80)
    assert {v["run_id"] for v in wh.verdicts()} == {"second"}
