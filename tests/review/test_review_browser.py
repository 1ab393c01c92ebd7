"""Done-when of issue 19's review page: headless Chromium against a real Airflow API server (simple
auth manager with real users: `rita` with Airflow's User role, `vic` a Viewer). Rita logs in through
Airflow's login page, decides three items with the keyboard (1, 0, 1), and the three are in
sg_current_verdicts as decided_by = 'human'. Vic's attempts and a cross-site POST are refused.
Screenshot: artifacts/ui/review_page.png (the item page) and artifacts/ui/review_overview.png."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest
import sqlalchemy as sa

from tests.review.seed import labelled_run, load_posts, publish_versions, relax_gate
from tests.review.test_queue import choose
from tests.ui.conftest import DEVTOOLS_PORT
from tests.ui.role_server import role_server
from tests.ui.ui_browser import SCREENSHOT_DIR, Browser, find_chromium

pytestmark = pytest.mark.slow

PORT = int(os.environ.get("SAFEGUARD_TEST_UI_PORT", "18220")) + 4  # beside tests/ui's servers
USERS = {"rita": "user", "vic": "viewer"}
ITEM = "(() => { const i = document.getElementById('item'); return i ? i.dataset.id : ''; })()"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    from safeguard_flow.warehouse import db, schema
    from safeguard_flow.warehouse.sample_data import copy_policies, demo_settings

    tmp = tmp_path_factory.mktemp("review-ui")
    settings = demo_settings(tmp, copy_policies(tmp / "policies", ("spam",)))
    engine = db.make_engine(settings)
    schema.upgrade(settings, engine=engine)
    relax_gate(settings)
    settings.review.audit_rate = 0.5  # enough audit items for the estimates table to show figures
    load_posts(engine, per_day=20)
    (spam,) = publish_versions(engine, settings)
    labelled_run(engine, settings, [spam], choose)
    yield engine, settings
    engine.dispose()


@pytest.fixture(scope="module")
def server(warehouse, tmp_path_factory):
    _, settings = warehouse
    with role_server(settings, tmp_path_factory.mktemp("airflow-review"), PORT, USERS) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium); the UI test needs it")
    with Browser(DEVTOOLS_PORT + 2) as b:
        b.send("Network.enable")
        yield b


def _log_in(browser: Browser, base: str, user: str, password: str, then: str) -> None:
    """Through Airflow's own login page (the simple auth manager's form), typing like a user; the page
    sets the _token cookie and goes on to `then`."""
    browser.send("Network.clearBrowserCookies")
    browser.goto(f"{base}/auth/login?next={urllib.parse.quote(then, safe='')}")
    browser.wait_for("document.querySelector('input[name=password]') !== null", timeout_s=60)
    for name, value in (("username", user), ("password", password)):
        browser.evaluate(f"document.querySelector('input[name={name}]').focus()")
        browser.send("Input.insertText", text=value)
    browser.wait_for("(() => { const b = document.querySelector('button[type=submit]'); return b && !b.disabled; })()",
                     timeout_s=30)
    browser.evaluate("document.querySelector('button[type=submit]').click()")
    browser.wait_for(f"location.href.startsWith({json.dumps(then)})", timeout_s=60)


def _press(browser: Browser, key: str) -> None:
    code = {"0": ("Digit0", 48), "1": ("Digit1", 49), "s": ("KeyS", 83)}[key]
    for kind in ("keyDown", "keyUp"):
        browser.send("Input.dispatchKeyEvent", type=kind, key=key, code=code[0], text=key if kind == "keyDown" else "",
                     windowsVirtualKeyCode=code[1])


def _current(engine, settings, content_ids) -> dict[str, dict]:
    from safeguard_flow.warehouse import schema

    view = schema.view_names(settings)["current_verdicts"]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {view} WHERE policy = 'spam'")).mappings().all()
    return {r["content_id"]: dict(r) for r in rows if r["content_id"] in content_ids}


def _post(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, method="POST", data=json.dumps({"decision": 1}).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_reviewer_decides_with_the_keyboard_and_others_are_refused(server, browser, warehouse):
    from safeguard_flow.warehouse import review_store as store

    engine, settings = warehouse
    af, passwords = server
    base = af.base_url
    page = f"{base}/safeguard/review/spam"
    _log_in(browser, base, "rita", passwords["rita"], page)

    decided: list[tuple[str, int]] = []
    for n, key in enumerate(("1", "0", "1")):
        item_id = browser.wait_for(ITEM, timeout_s=60)
        assert browser.evaluate("document.getElementById('reviewer').textContent") == "rita"
        item = store.get_item(engine, settings, int(item_id))
        assert item.leased_by == "rita" and item.content_id in browser.evaluate("document.body.innerText")
        if n == 0:
            assert browser.screenshot(SCREENSHOT_DIR / "review_page.png").stat().st_size > 20_000
        _press(browser, key)
        browser.wait_for(f"{ITEM} && {ITEM} !== {json.dumps(item_id)}", timeout_s=60)
        decided.append((item.content_id, int(key)))

    rows = _current(engine, settings, {c for c, _ in decided})
    assert {c: (r["label"], r["decided_by"], r["reviewer"]) for c, r in rows.items()} == \
        {c: (k, "human", "rita") for c, k in decided}
    history = store.decision_history(engine, settings, "spam", rows[decided[0][0]]["content_hash"])
    assert [(h["reviewer"], h["decision"], h["origin"]) for h in history] == [("rita", 1, "ui")]

    # A cross-site POST: a page of another origin auto-submits a form to the decision endpoint while
    # rita is logged in. Refused (no CSRF header; Lax cookie or not), and nothing is recorded.
    held = int(browser.evaluate(ITEM))
    target = f"{base}/safeguard/review/api/items/{held}/decision"
    form = (f"<form method=post action='{target}' enctype=text/plain><input name='{{\"decision\":1,\"x\":\"' value='\"}}'>"
            "</form><script>document.forms[0].submit()</script>")
    browser.goto("data:text/html," + urllib.parse.quote(form))
    refused = browser.wait_for("location.href.startsWith('http') && document.body && document.body.innerText", timeout_s=30)
    assert "refused" in refused or "log in" in refused, refused
    assert store.get_item(engine, settings, held).status == "open"
    # The same with rita's own session cookie but a foreign Origin (what a fetch from another site sends).
    token = next(c["value"] for c in browser.send("Network.getCookies", urls=[base])["cookies"] if c["name"] == "_token")
    assert _post(target, {"Cookie": f"_token={token}", "X-Safeguard-CSRF": "1", "Origin": "http://evil.example"}) == 403
    assert _post(target, {"Cookie": f"_token={token}"}) == 403
    assert store.get_item(engine, settings, held).status == "open"

    # Vic, a Viewer: sees the queues and estimates, not the items; cannot claim or decide.
    _log_in(browser, base, "vic", passwords["vic"], f"{base}/safeguard/review/")
    text = browser.wait_for("document.body && document.body.innerText.includes('Queues') && document.body.innerText",
                            timeout_s=60)
    assert "spam" in text and "Agreement and production estimates" in text
    assert browser.screenshot(SCREENSHOT_DIR / "review_overview.png").stat().st_size > 10_000
    status = browser.evaluate(f"""fetch('api/items/{held}/decision', {{method: 'POST', credentials: 'same-origin',
        headers: {{'X-Safeguard-CSRF': '1', 'Content-Type': 'application/json'}}, body: '{{"decision": 0}}'}})
        .then((r) => r.status)""")
    claim = browser.evaluate("""fetch('api/spam/claim', {method: 'POST', credentials: 'same-origin',
        headers: {'X-Safeguard-CSRF': '1'}}).then((r) => r.status)""")
    assert (status, claim) == (403, 403)
    browser.goto(page)
    assert "may not edit" in browser.wait_for("document.body && document.body.innerText", timeout_s=30)
    assert store.get_item(engine, settings, held).status == "open"
    assert len(store.decision_history(engine, settings, "spam", store.get_item(engine, settings, held).content_hash)) == 0
