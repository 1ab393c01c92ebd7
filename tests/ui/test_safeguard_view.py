"""The Safeguard view inside the real Airflow UI, in headless Chromium; writes a screenshot to
artifacts/ui/safeguard_view.png (and the bare page to artifacts/ui/safeguard_page.png)."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import quote

import pytest
from tests.ui.ui_browser import SCREENSHOT_DIR

pytestmark = pytest.mark.slow

IFRAME_TEXT = "(() => { const f = document.querySelector('iframe'); return f && f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : ''; })()"


def test_plugin_is_registered_with_the_api_server(api_server):
    plugins = {p["name"]: p for p in api_server.api("GET", "plugins")["plugins"]}
    sg = plugins["safeguard_flow"]
    assert sg["fastapi_apps"][0]["url_prefix"] == "/safeguard"
    view = sg["external_views"][0]
    assert view["url_route"] == "safeguard" and view["destination"] == "nav" and view["href"] == "safeguard/"


def test_view_serves_json_to_an_airflow_user(api_server, seeded_warehouse):
    # (All-admins mode authenticates every request; the 401 path is tested in tests/airflow/test_ui_app.py.)
    req = urllib.request.Request(f"{api_server.base_url}/safeguard/api/runs",
                                 headers={"Authorization": f"Bearer {api_server.token()}"})
    runs = json.load(urllib.request.urlopen(req, timeout=30))
    assert {r["status"] for r in runs} == {"published", "quarantined"}
    req = urllib.request.Request(f"{api_server.base_url}/safeguard/api/flips",
                                 headers={"Authorization": f"Bearer {api_server.token()}"})
    flips = json.load(urllib.request.urlopen(req, timeout=30))
    assert [(f["policy"], f["old_version"], f["new_version"]) for f in flips] == [("self-harm", 1, 2)]
    assert flips[0]["flips"] > 0 and flips[0]["compared"] == seeded_warehouse[1]["rows"]


def test_view_renders_in_the_airflow_ui(api_server, browser, seeded_warehouse):
    _, facts = seeded_warehouse
    target = f"{api_server.base_url}/plugin/safeguard"
    browser.goto(f"{api_server.base_url}/auth/token/login?next={quote(target, safe='')}")  # all-admins login sets the cookie
    text = browser.wait_for(f"(() => {{ const t = {IFRAME_TEXT}; return t.includes('Recent runs') ? t : ''; }})()", timeout_s=90)
    assert "Positive rate per policy version" in text and "Flips between policy versions" in text
    assert "quarantined" in text and facts["quarantined_run"] in text
    assert "v1 → v2" in text  # the self-harm flip row
    # The chart is inline SVG: one small chart per policy, a line per version.
    charts = browser.evaluate("document.querySelector('iframe').contentDocument.querySelectorAll('svg.chart').length")
    lines = browser.evaluate("document.querySelector('iframe').contentDocument.querySelectorAll('svg.chart polyline').length")
    assert charts == 2 and lines >= 2
    # The nav entry is there too (Browse menu), and we are still inside the Airflow UI.
    assert browser.evaluate("location.pathname").startswith("/plugin/safeguard")
    path = browser.screenshot(SCREENSHOT_DIR / "safeguard_view.png")
    assert path.stat().st_size > 20_000

    browser.goto(f"{api_server.base_url}/safeguard/")
    browser.wait_for("document.body && document.body.innerText.includes('Recent runs')", timeout_s=30)
    assert browser.screenshot(SCREENSHOT_DIR / "safeguard_page.png").stat().st_size > 10_000
