"""The review routes in-process (FastAPI TestClient, auth swapped for a local user): GETs change
nothing, writes need the CSRF header, a decision lands in sg_current_verdicts; the page escapes
content. The real Airflow server, roles and Chromium are tests/review/test_review_browser.py."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from safeguard_flow.airflow.ui import Dashboard, create_app
from safeguard_flow.warehouse import review_store as store
from safeguard_flow.warehouse import schema
from tests.review.seed import labelled_run, load_posts, publish_versions, relax_gate
from tests.review.test_queue import choose

CSRF = {"X-Safeguard-CSRF": "1"}


@pytest.fixture
def client(sqlite_wh_settings):
    from safeguard_flow.warehouse import db

    settings = sqlite_wh_settings
    engine = db.make_engine(settings)
    relax_gate(settings)
    load_posts(engine, per_day=20)
    (spam,) = publish_versions(engine, settings)
    labelled_run(engine, settings, [spam], choose)
    app = create_app(lambda: Dashboard(engine, settings), require_auth=False)
    with TestClient(app, base_url="http://testserver") as c:
        yield c, engine, settings
    engine.dispose()


def test_review_flow_in_process(client):
    c, engine, settings = client
    overview = c.get("/review/")
    assert overview.status_code == 200 and "spam" in overview.text and "Agreement and production estimates" in overview.text
    page = c.get("/review/spam")
    assert page.status_code == 200 and "Taking the next item" in page.text  # a GET leases nothing
    assert store.held_item(engine, settings, "spam", "local") is None

    assert c.post("/review/api/spam/claim").status_code == 403  # no CSRF header
    assert c.post("/review/api/spam/claim", headers={**CSRF, "Origin": "http://evil.example"}).status_code == 403
    item_id = c.post("/review/api/spam/claim", headers={**CSRF, "Origin": "http://testserver"}).json()["item"]
    item = store.get_item(engine, settings, item_id)
    page = c.get("/review/spam")
    assert f'data-id="{item_id}"' in page.text and item.content_id in page.text and "Decision history" in page.text

    assert c.post(f"/review/api/items/{item_id}/decision", json={"decision": 1}).status_code == 403
    assert c.post(f"/review/api/items/{item_id}/decision", json={"decision": 2}, headers=CSRF).status_code == 422
    r = c.post(f"/review/api/items/{item_id}/decision", json={"decision": 1, "note": "<b>spam</b>"}, headers=CSRF)
    assert r.status_code == 200
    assert c.post(f"/review/api/items/{item_id}/decision", json={"decision": 0}, headers=CSRF).status_code == 409
    view = schema.view_names(settings)["current_verdicts"]
    with engine.connect() as conn:
        row = conn.execute(sa.text(f"SELECT label, decided_by, reviewer FROM {view} WHERE content_id = :c AND policy = 'spam'"),
                           {"c": item.content_id}).one()
    assert tuple(row) == (1, "human", "local")
    # The decision history keeps the note as written (templates escape it).
    c.post("/review/api/spam/claim", headers=CSRF)
    history = store.decision_history(engine, settings, "spam", item.content_hash)
    assert history[0]["note"] == "<b>spam</b>"
