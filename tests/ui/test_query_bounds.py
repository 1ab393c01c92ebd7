"""Issue 18.5: the view's queries are bounded (a statement past the bound is an error, not a hung page)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa


def test_a_sqlite_statement_past_the_bound_is_interrupted(tmp_path):
    from safeguard_flow.airflow.ui import bound_statements

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    bound_statements(engine, 0.3)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    started = time.monotonic()
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="interrupted"):
        conn.exec_driver_sql(endless).scalar()
    assert time.monotonic() - started < 5
    with engine.connect() as conn:  # the next statement has its own deadline
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


@pytest.mark.postgres
def test_a_postgres_statement_past_the_bound_is_cancelled(pg_url):
    from safeguard_flow.airflow.ui import bound_statements
    from safeguard_flow.warehouse import db
    from safeguard_flow.settings import load_settings

    engine = db.make_engine(load_settings(environ={}, warehouse={"url": pg_url}))
    bound_statements(engine, 0.3)
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="statement timeout"):
        conn.exec_driver_sql("SELECT pg_sleep(3)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "300ms"
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"  # short page queries: no JIT
    engine.dispose()
