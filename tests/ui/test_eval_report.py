"""The eval report (report.html with its PNGs) and the run, eval and diff reports of the Safeguard view,
in headless Chromium. Screenshots: artifacts/ui/eval_report.png, artifacts/ui/run_report.png,
artifacts/ui/diff_report.png."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from tests.ui.ui_browser import SCREENSHOT_DIR

pytestmark = pytest.mark.slow

IMAGES_LOADED = ("(() => { const imgs = [...document.images]; "
                 "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0; })()")


def test_eval_report_file_in_chromium(browser, seeded_warehouse):
    _, facts = seeded_warehouse
    browser.goto(facts["eval_report"].resolve().as_uri())
    text = browser.wait_for("document.body && document.body.innerText.includes('Confusion matrices') ? document.body.innerText : ''",
                            timeout_s=30)
    assert "Policy evaluation" in text and "multi-policy accuracy" in text and "Against the previous version" in text
    assert "McNemar exact p" in text and facts["eval_ids"][2] in text
    assert browser.wait_for(IMAGES_LOADED, timeout_s=20) == 2  # scores.png and confusion.png, beside the report
    assert browser.evaluate("document.querySelectorAll('table.matrix').length") == 1
    assert browser.screenshot(SCREENSHOT_DIR / "eval_report.png").stat().st_size > 20_000


def test_run_eval_and_diff_reports_in_the_view(api_server, browser, seeded_warehouse):
    _, facts = seeded_warehouse
    base = f"{api_server.base_url}/safeguard/"
    target = base + "runs/" + quote(facts["relabel_run"], safe="")
    browser.goto(f"{api_server.base_url}/auth/token/login?next={quote(target, safe='')}")
    text = browser.wait_for("document.body && document.body.innerText.includes('Timings') ? document.body.innerText : ''",
                            timeout_s=90)
    assert facts["relabel_run"] in text and "Positive rate per policy version over time" in text
    assert "Flips against the previous version" in text and "v1 → v2" in text
    assert browser.evaluate("document.querySelectorAll('svg.chart polyline, svg.chart circle').length") > 0
    browser.screenshot(SCREENSHOT_DIR / "run_report.png")

    browser.goto(base)  # the overview links to the reports
    browser.wait_for("document.body && document.body.innerText.includes('Evals')", timeout_s=30)
    links = browser.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    assert f"evals/{facts['eval_ids'][2]}" in links and "diff/self-harm/1/2" in links
    assert any(h.startswith("runs/") for h in links)

    browser.goto(base + "diff/self-harm/1/2")
    text = browser.wait_for("document.body && document.body.innerText.includes('Flipped items') ? document.body.innerText : ''",
                            timeout_s=30)
    assert "what v2 changes" in text and "Evaluated on the same dataset" in text
    browser.screenshot(SCREENSHOT_DIR / "diff_report.png")

    browser.goto(base + f"evals/{facts['eval_ids'][1]}")
    text = browser.wait_for("document.body && document.body.innerText.includes('Confusion matrices') ? document.body.innerText : ''",
                            timeout_s=30)
    assert facts["eval_ids"][1] in text
