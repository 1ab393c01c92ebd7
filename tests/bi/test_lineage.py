"""OpenLineage dataset naming for the extract and publish tasks (airflow/lineage.py)."""

from __future__ import annotations


def test_dataset_names_follow_openlineage_sql_naming(tmp_path):
    """Namespace from the database URL, name as OpenLineage names each dialect's tables."""
    from safeguard_flow.airflow.lineage import table_dataset

    def named(url, table="posts", schema=None):
        d = table_dataset(url, table, schema)
        return d.namespace, d.name

    assert named("postgresql+psycopg://u:secret@DB.example:6543/app") == ("postgres://db.example:6543", "app.public.posts")
    assert named("postgresql+psycopg://u@db/app", schema="content") == ("postgres://db:5432", "app.content.posts")
    assert named("mysql+pymysql://u:pw@app-db/shop?charset=utf8mb4") == ("mysql://app-db:3306", "shop.posts")
    assert named("snowflake://u@acme-xy123/analytics/raw") == ("snowflake://acme-xy123", "ANALYTICS.RAW.POSTS")
    assert named(f"sqlite:///{tmp_path}/wh.db", "sg_verdicts") == (f"sqlite://{tmp_path}/wh.db", "sg_verdicts")
    assert "secret" not in str(named("postgresql+psycopg://u:secret@db/app"))  # never the password
