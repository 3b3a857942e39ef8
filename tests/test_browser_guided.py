"""The guided paths in a real browser (headless Chromium, as tests/test_browser.py):
a draft's report says what to do next and its button leads to starting it; on the
Integrate page an editor makes a client key, the page's JavaScript snippet (with that
key filled in) runs in the browser, and the live status, a framed page that refreshes
itself, goes from "waiting for the first exposure" to the exposure its assign call
made. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from expplatform.activity import activity
from expplatform.models import Experiment, utcnow

from .conftest import PASSWORD
from .events_support import make_experiment
from .test_browser import ARTIFACTS, app, browser_context  # noqa: F401 (the served app and the browser)

pytestmark = pytest.mark.browser
WIDTHS = (390, 1280)
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

    # The JavaScript snippet, as shown, run in a browser page of the service's origin
    # (an API response: the pages' policy allows no script): it assigns, then sends events.
    javascript = page.locator("[data-snippet=javascript]").inner_text()
    api_page = browser_context.new_page()
    api_page.goto(f"{live_server}/api/v1/health")
    variant = api_page.evaluate(f"async () => {{\n{javascript}\nreturn variant;\n}}")
    assert variant in ("control", "treatment")
    with app.extensions["db"].sessionmaker() as session:
        experiment_id = session.scalars(select(Experiment.id).where(Experiment.key == "social-proof")).one()
        sent = activity(session, [experiment_id], utcnow())[experiment_id]
    assert sent.total == 1 and sent.last_outcome_at is not None  # its events arrived and counted

    status = page.frame_locator("iframe.live-status-frame").locator(".live-status[data-state=live]")
    status.wait_for(timeout=STATUS_SECONDS * 1000)
    text = status.inner_text()
    assert re.search(r"Last exposure \d+ s ago · 1 exposed today", text), text
    page.screenshot(path=str(ARTIFACTS / "integrate.png"), full_page=True)
    assert (ARTIFACTS / "integrate.png").stat().st_size > 30_000

    # The long snippets scroll inside themselves: no page is wider than a phone, nor the
    # experiment list with its sparklines.
    for path in ("/experiments/social-proof/integrate", "/experiments"):
        page.goto(f"{live_server}{path}")
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (path, width)
