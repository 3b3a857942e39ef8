"""The guided paths in a real browser (headless Chromium, as tests/test_browser.py):
a draft's report says what to do next and its button leads to starting it; on the
Integrate page an editor makes a client key, and the live status, a framed page that
refreshes itself, goes from "waiting for the first exposure" to the exposure an
assign call with that key made. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import re

import pytest
import requests

from .conftest import PASSWORD
from .events_support import make_experiment
from .test_browser import ARTIFACTS, app, browser_context  # noqa: F401 (the served app and the browser)

pytestmark = pytest.mark.browser
STATUS_SECONDS = 20  # the status page refreshes every 3 s and is kept 2 s: ample


def log_in(page, live_server: str, email: str) -> None:
    page.goto(f"{live_server}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*|.*/$"))


def test_a_drafts_report_guides_to_starting_it(app, live_server, browser_context, make_user):  # noqa: F811
    with app.extensions["db"].write() as session:
        make_experiment(session, "new-checkout", status="draft", started_at=None)
    make_user("editor", "editor@example.com")
    page = browser_context.new_page()
    log_in(page, live_server, "editor@example.com")

    page.goto(f"{live_server}/experiments/new-checkout/report")
    guide = page.locator("#guide")
    assert guide.get_attribute("data-state") == "draft"
    text = guide.inner_text()
    assert "this experiment is a draft" in text and "at least 200 customers" in text
    assert page.locator(".lm-stage").count() == 0 and page.locator("svg").count() == 0
    assert page.locator("button:has-text('Run full model')").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "guided-draft-report.png"), full_page=True)

    guide.locator("a.button:has-text('Start the experiment')").click()
    page.wait_for_url(f"{live_server}/experiments/new-checkout/start")
    page.click("button:has-text('Yes, start it')")
    page.wait_for_url(f"{live_server}/experiments/new-checkout")
    assert "running" in page.inner_text("h1")
    page.goto(f"{live_server}/experiments/new-checkout/report")
    assert page.locator("#guide").get_attribute("data-state") == "no_exposures"


def test_the_integrate_page_shows_the_first_exposure_as_it_arrives(app, live_server, browser_context, make_user):  # noqa: F811
    with app.extensions["db"].write() as session:
        make_experiment(session, "social-proof")
    make_user("editor", "editor@example.com")
    page = browser_context.new_page()
    log_in(page, live_server, "editor@example.com")

    page.goto(f"{live_server}/experiments/social-proof")
    page.click("a.button:has-text('Integrate')")
    page.wait_for_url(f"{live_server}/experiments/social-proof/integrate")
    status = page.frame_locator("iframe.live-status-frame").locator(".live-status")
    status.filter(has_text="Waiting for the first exposure").wait_for()

    # An editor makes a client key there; its secret is shown once and filled in.
    page.fill("input[name=name]", "checkout app")
    page.click("button:has-text('Create a client key')")
    secret = page.locator(".new-key code").inner_text()
    assert secret.startswith("xp_") and f"Bearer {secret}" in page.locator("[data-snippet=javascript]").inner_text()
    assert f"{live_server}/api/v1/assign" in page.locator("[data-snippet=curl]").inner_text()

    answer = requests.post(
        f"{live_server}/api/v1/assign",
        json={"customer_id": "first-customer", "experiments": ["social-proof"]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["assignments"][0]["enrolled"], answer.text

    status = page.frame_locator("iframe.live-status-frame").locator(".live-status[data-state=live]")
    status.wait_for(timeout=STATUS_SECONDS * 1000)
    text = status.inner_text()
    assert re.search(r"Last exposure \d+ s ago · 1 exposed today", text), text
    page.screenshot(path=str(ARTIFACTS / "integrate.png"), full_page=True)
    assert (ARTIFACTS / "integrate.png").stat().st_size > 30_000
