"""The view's pages through the app itself (no browser, no API server): every report route renders,
unknown ids are 404, and values from the warehouse are escaped by the templates (autoescape)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def client(seeded_warehouse):
    from fastapi.testclient import TestClient

    from safeguard_flow.airflow.ui import Dashboard, create_app
    from safeguard_flow.warehouse import db

    settings, facts = seeded_warehouse
    engine = db.make_engine(settings)
    yield TestClient(create_app(lambda: Dashboard(engine, settings), require_auth=False)), settings, engine, facts
    engine.dispose()


def test_every_report_route_renders(client):
    app, _, _, facts = client
    page = app.get("/").text
    assert f'href="runs/{facts["relabel_run"]}"' in page and f'href="evals/{facts["eval_ids"][2]}"' in page
    assert 'href="diff/self-harm/1/2"' in page
    run = app.get(f"/runs/{facts['relabel_run']}")
    assert run.status_code == 200 and "Flips against the previous version" in run.text and "<svg" in run.text
    assert app.get(f"/evals/{facts['eval_ids'][1]}").status_code == 200
    diff = app.get("/diff/self-harm/1/2")
    assert diff.status_code == 200 and "Flipped items" in diff.text and "McNemar" in diff.text
    assert app.get("/runs/no-such-run").status_code == 404
    assert app.get("/evals/no-such-eval").status_code == 404
    assert app.get("/diff/self-harm/2/1").status_code == 404  # old must be older
    assert app.get("/api/evals").json()[0]["id"] in facts["eval_ids"].values()


def test_warehouse_values_are_escaped(client):
    from safeguard_flow.warehouse import runs

    app, settings, engine, facts = client
    runs.update_run(engine, settings, facts["quarantined_run"], warnings=["<script>alert('x')</script>"],
                    error="<img src=x onerror=alert(1)>")
    text = app.get(f"/runs/{facts['quarantined_run']}").text
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
