"""Issue 18.5: every Safeguard route asks Airflow's auth manager, against a real API server with real
users (simple auth manager: an editor with Airflow's User role, a viewer, and a user with no role, who
may read no DAG), through the API and in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

import pytest
from tests.ui.role_server import role_server as start_role_server

pytestmark = pytest.mark.slow

USERS = {"editor": "user", "viewer": "viewer", "nobody": ""}
ROLE_PORT = int(os.environ.get("SAFEGUARD_TEST_UI_PORT", "18220")) + 2


@pytest.fixture(scope="module")
def role_server(seeded_warehouse, tmp_path_factory):
    settings, _ = seeded_warehouse
    with start_role_server(settings, tmp_path_factory.mktemp("airflow-roles"), ROLE_PORT, USERS) as (af, passwords):
        tokens = {}
        for name, password in passwords.items():
            req = urllib.request.Request(f"{af.base_url}/auth/token", method="POST",
                                         data=json.dumps({"username": name, "password": password}).encode(),
                                         headers={"Content-Type": "application/json"})
            tokens[name] = json.load(urllib.request.urlopen(req, timeout=30))["access_token"]
        yield af, tokens


def _get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method != "GET" else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _every_route() -> list[tuple[str, str]]:
    """(method, path) of every route of the view, path parameters filled in."""
    from safeguard_flow.airflow.ui import create_app

    out = []
    for route in create_app().routes:
        if getattr(route, "path", "/health") == "/health" or not hasattr(route, "methods"):
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        out += [(m, path) for m in sorted(route.methods) if m != "HEAD"]
    return out


def test_a_user_who_may_not_read_dags_gets_403_on_every_route(role_server):
    af, tokens = role_server
    routes = _every_route()
    assert len(routes) >= 8
    for method, path in routes:
        url = f"{af.base_url}/safeguard{path}"
        assert _get(url, method=method)[0] == 401, (method, path)
        assert _get(url, "not-a-token", method=method)[0] == 401, (method, path)
        status, body = _get(url, tokens["nobody"], method=method)
        assert status == 403 and "may not" in body, (method, path, status, body[:200])
    assert _get(f"{af.base_url}/safeguard/health")[0] == 200


def test_a_viewer_sees_rates_and_runs_but_no_content(role_server, seeded_warehouse):
    af, tokens = role_server
    settings, facts = seeded_warehouse
    base = f"{af.base_url}/safeguard"
    bad = facts["quarantined_run"]

    def api(path, who):
        status, body = _get(f"{base}{path}", tokens[who])
        assert status == 200, (path, who, status, body[:300])
        return json.loads(body) if path.startswith("/api/") else body

    # Editors see everything: the quarantined run's reason, flipped items, dataset paths.
    editor_runs = {r["id"]: r for r in api("/api/runs", "editor")}
    assert editor_runs[bad]["error"] and editor_runs[bad]["validation"]
    assert api("/api/evals", "editor")[0]["dataset"] == "/data/self-harm-eval.jsonl"
    assert "Flipped items" in api("/diff/self-harm/1/2", "editor")
    assert "/data/self-harm-eval.jsonl" in api("/diff/self-harm/1/2", "editor")

    # Viewers: the same runs, counts and rates, without what can quote content.
    viewer_runs = {r["id"]: r for r in api("/api/runs", "viewer")}
    assert viewer_runs.keys() == editor_runs.keys()
    assert viewer_runs[bad]["status"] == "quarantined" and viewer_runs[bad]["verdicts"] == editor_runs[bad]["verdicts"]
    assert viewer_runs[bad]["error"].startswith("(hidden") and viewer_runs[bad]["validation"] == {"success": False}
    assert editor_runs[bad]["error"] not in json.dumps(viewer_runs)
    assert api("/api/rates", "viewer") == api("/api/rates", "editor")
    assert api("/api/flips", "viewer") == api("/api/flips", "editor")
    assert api("/api/evals", "viewer")[0]["dataset"] == "self-harm-eval.jsonl"
    diff = api("/diff/self-harm/1/2", "viewer")
    assert "Flipped items" not in diff and 'class="rationale"' not in diff and "/data/" not in diff
    page = api("/", "viewer")
    assert "Recent runs" in page and bad in page and settings.warehouse_url not in page and "/data/" not in page
    from markupsafe import escape

    shown_error = str(escape(editor_runs[bad]["error"]))  # as the page writes it (autoescaped)
    report = api(f"/runs/{bad}", "viewer")
    assert "quarantined" in report and shown_error not in report and "(hidden: needs DAG edit access)" in report
    assert shown_error in api(f"/runs/{bad}", "editor")


def test_the_browser_shows_a_viewer_the_view_and_a_roleless_user_a_403(role_server, browser):
    af, tokens = role_server
    base = af.base_url

    def log_in(who: str) -> None:  # the cookie the Airflow UI's login sets
        browser.send("Network.enable")
        browser.send("Network.setCookie", name="_token", value=tokens[who], url=base, path="/", sameSite="Lax")

    log_in("viewer")
    browser.goto(f"{base}/safeguard/")
    text = browser.wait_for("document.body && document.body.innerText.includes('Recent runs') && document.body.innerText",
                            timeout_s=60)
    assert "needs DAG edit access" in text and "sqlite" not in text
    log_in("nobody")
    browser.goto(f"{base}/safeguard/")
    text = browser.wait_for("document.body && document.body.innerText.includes('may not') && document.body.innerText",
                            timeout_s=60)
    assert "Recent runs" not in text
