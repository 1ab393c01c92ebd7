"""The warehouse on MySQL/MariaDB and DuckDB (real servers/engines) beside SQLite and PostgreSQL."""

import sqlalchemy as sa


def test_mariadb_fixture_gives_an_empty_utc_database(mariadb_url):
    engine = sa.create_engine(mariadb_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar_one() == "+00:00"
        assert conn.exec_driver_sql("SHOW TABLES").all() == []
    engine.dispose()
