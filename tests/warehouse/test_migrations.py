"""Frozen migrations: every revision (whatever sql/migrations/versions holds) upgrades an empty
database one step at a time and downgrades back to base, each downgrade restoring exactly the schema
of the revision below; the head reached step by step equals a fresh `db upgrade`; and the view files
in sql/views describe the head's views."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from safeguard_flow.warehouse import db, schema

PREFIX = "rt_"


def revisions() -> list[str]:
    """Every revision in the script directory, base first (one linear history)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(schema.sql_dir() / "migrations"))
    script = ScriptDirectory.from_config(cfg)
    assert len(script.get_heads()) == 1, f"migrations must have one head, found {script.get_heads()}"
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def snapshot(engine: sa.Engine) -> dict:
    """Tables (columns, primary key, indexes, unique constraints, foreign keys) and view definitions,
    by reflection; the version table is Alembic's, not the schema's."""
    insp = sa.inspect(engine)
    tables = {}
    for t in sorted(insp.get_table_names()):
        if t == f"{PREFIX}alembic_version":
            continue
        tables[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in insp.get_columns(t)],
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)),
            "fks": sorted((f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"])
                          for f in insp.get_foreign_keys(t)),
        }
    views = {v: " ".join(insp.get_view_definition(v).split()) for v in sorted(insp.get_view_names())}
    return {"tables": tables, "views": views}


def _fresh_url(warehouse_url, tmp_path, request) -> str:
    if warehouse_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_url_factory")()


def test_step_by_step_to_head_and_back_to_base(warehouse_url, settings_factory, tmp_path, request):
    revs = revisions()
    assert revs[:3] == ["0001", "0002", "0003"]
    settings = settings_factory(warehouse_url, warehouse={"table_prefix": PREFIX})
    engine = db.make_engine(settings)
    try:
        below = {rev: prev for rev, prev in zip(revs, [None, *revs[:-1]])}
        up = {None: snapshot(engine)}
        assert up[None] == {"tables": {}, "views": {}}
        for rev in revs:
            assert schema.upgrade(settings, rev, engine=engine) == rev
            up[rev] = snapshot(engine)
        for rev in reversed(revs):
            assert schema.downgrade(settings, below[rev] or "base", engine=engine) == below[rev]
            assert snapshot(engine) == up[below[rev]], f"downgrade of {rev} does not restore {below[rev] or 'base'}"
        assert sa.inspect(engine).get_table_names() == [f"{PREFIX}alembic_version"]

        assert schema.upgrade(settings, engine=engine) == revs[-1] == schema.head()
        assert snapshot(engine) == up[revs[-1]]
    finally:
        engine.dispose()

    fresh = settings_factory(_fresh_url(warehouse_url, tmp_path, request), warehouse={"table_prefix": PREFIX})
    schema.upgrade(fresh)
    fresh_engine = db.make_engine(fresh)
    try:
        assert snapshot(fresh_engine) == up[revs[-1]]
    finally:
        fresh_engine.dispose()


def test_0003_downgrade_restores_the_0002_rates_view(warehouse_url, settings_factory):
    """The 0002 view counts a verdict on its labelling day; 0003's on its run's interval day."""
    settings = settings_factory(warehouse_url, warehouse={"table_prefix": PREFIX})
    engine = db.make_engine(settings)
    try:
        schema.upgrade(settings, "0002", engine=engine)
        v2 = snapshot(engine)["views"][f"{PREFIX}daily_policy_rates"]
        schema.upgrade(settings, "0003", engine=engine)
        v3 = snapshot(engine)["views"][f"{PREFIX}daily_policy_rates"]
        assert "interval_start" in v3 and "interval_start" not in v2
        schema.downgrade(settings, "0002", engine=engine)
        assert snapshot(engine)["views"][f"{PREFIX}daily_policy_rates"] == v2
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_0013_the_flips_probe_reads_the_old_label_from_the_key(pg_url, settings_factory):
    """On PostgreSQL the verdicts' primary key carries the label (INCLUDE), so the flips view's probe of
    the older version can be an index-only scan (the plan at 10M verdicts: bench/bi_views_bench.py);
    downgrading restores the plain key. Same key columns."""
    settings = settings_factory(pg_url, warehouse={"table_prefix": PREFIX})
    engine = db.make_engine(settings)
    key_sql = ("SELECT pg_get_indexdef(conindid) FROM pg_constraint "
               f"WHERE conrelid = CAST('{PREFIX}verdicts' AS regclass) AND contype = 'p'")
    try:
        schema.upgrade(settings, engine=engine)
        with engine.begin() as conn:
            key = conn.exec_driver_sql(key_sql).scalar_one()
            assert "(source, content_id, policy, policy_version) INCLUDE (label)" in key, key
        schema.downgrade(settings, "0011", engine=engine)
        with engine.connect() as conn:
            key = conn.exec_driver_sql(key_sql).scalar_one()
            assert "INCLUDE" not in key and "(source, content_id, policy, policy_version)" in key, key
    finally:
        engine.dispose()


def test_view_files_describe_the_head(warehouse_url, settings_factory):
    """sql/views (what analysts read) is the head revision's SQL: a view change needs both a new
    revision with its own copy and the file."""
    settings = settings_factory(warehouse_url, warehouse={"table_prefix": PREFIX})
    schema.upgrade(settings)
    engine = db.make_engine(settings)
    try:
        head = snapshot(engine)
        with engine.begin() as conn:
            schema.drop_views(conn, PREFIX, None)
            schema.create_views(conn, PREFIX, None)
        assert snapshot(engine) == head
    finally:
        engine.dispose()


def test_revisions_are_self_contained():
    """A revision imports nothing from safeguard_flow: refactoring the library never rewrites history."""
    import ast

    for path in sorted((schema.sql_dir() / "migrations" / "versions").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "safeguard_flow" for n in names), f"{path.name} imports {names}"
