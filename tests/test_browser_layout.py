"""The report and the top bar at the widths people use (issue 15): at every width the
page is no wider than the window, no number in the lift map is cut off, the stages sit
side by side on a desktop and stack on a phone, and the account and "Log out" stay on
the dark bar."""

from __future__ import annotations

import re

import pytest

from .conftest import PASSWORD
from .reports_support import seed_counts
from .test_browser import app, browser_context  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
WIDTHS = (390, 1024, 1280, 1440, 1920)

# The widest report: five stages, a control and two treatments, ratings everywhere.
COUNTS = {
    variant: (2000, dict(zip(STAGES, converters, strict=True)))
    for variant, converters in {
        "current-checkout": (1900, 1100, 300, 150, 60),
        "one-page-checkout": (1910, 1150, 420, 170, 70),
        "express-checkout": (1890, 1120, 380, 140, 55),
    }.items()
}
RATINGS = {
    variant: {stage: [1 + (i * 7 + offset) % 5 for i in range(300)] for stage in STAGES}
    for offset, variant in enumerate(COUNTS)
}

CLIPPED = """() => [...document.querySelectorAll('.liftmap, .liftmap *')]
  .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
  .map(e => `${e.tagName}.${e.className} ${e.textContent.slice(0,30)} ${e.scrollWidth}>${e.clientWidth}`)"""


def test_the_report_fits_every_width_and_the_top_bar_keeps_the_account(app, live_server, browser_context, make_user):  # noqa: F811
    seed_counts(app, app.extensions["db"], "wide-report", COUNTS, stages=STAGES, target="purchase", ratings=RATINGS)
    make_user("editor", "a.rather.long.address@example.com")
    page = browser_context.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", "a.rather.long.address@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*|.*/$"))
    page.goto(f"{live_server}/experiments/wide-report/report")
    assert page.locator(".lm-stage").count() == 5

    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth") <= width, width
        assert page.evaluate(CLIPPED) == [], width
        tops = [page.locator(f".lm-stage[data-stage={stage}]").bounding_box()["y"] for stage in STAGES]
        if width == 390:
            assert tops == sorted(tops) and len(set(tops)) == 5, tops  # stacked, in journey order
        if width >= 1280:
            assert len(set(tops)) == 1, (width, tops)  # side by side
        bar = page.locator(".topbar").bounding_box()
        for element in (".logout button", ".who a"):
            box = page.locator(element).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, element, box)
            assert bar["y"] <= box["y"] and box["y"] + box["height"] <= bar["y"] + bar["height"], (width, element)


OVERFLOWING = """() => [document.documentElement, ...document.querySelectorAll('.card, table, section')]
  .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
  .map(e => `${e.tagName}.${e.className}#${e.id} ${e.scrollWidth}>${e.clientWidth}`)"""


@pytest.mark.parametrize("width", [390, 1280, 1920])
def test_every_page_fits_the_window_with_no_card_or_table_overflowing(
    app,  # noqa: F811
    live_server,
    browser_context,  # noqa: F811
    make_user,
    width,
):
    """Issue 15's check: the report, the experiment form (new and edit), the list, the
    experiment page, the journey list, map and form, and the Integrate page, each at a
    phone's, a laptop's and a large screen's width; screenshots in test-artifacts/."""
    from expplatform.models import Experiment

    from .test_browser import ARTIFACTS

    db = app.extensions["db"]
    seed_counts(app, db, "wide-report", COUNTS, stages=STAGES, target="purchase", ratings=RATINGS)
    with db.sessionmaker() as session:
        journey = session.query(Experiment).filter_by(key="wide-report").one().journey.key
    make_user("editor", "a.rather.long.address@example.com")
    page = browser_context.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{live_server}/login")
    page.fill("#email", "a.rather.long.address@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*|.*/$"))
    ARTIFACTS.mkdir(exist_ok=True)
    pages = {
        "report": "/experiments/wide-report/report",
        "experiment": "/experiments/wide-report",
        "list": "/experiments",
        "form-new": "/experiments/new",
        "form-edit": "/experiments/wide-report/edit",
        "journeys": "/journeys",
        "journey-map": f"/journeys/{journey}",
        "journey-form": f"/journeys/{journey}/edit",
        "integrate": "/experiments/wide-report/integrate",
    }
    overflowing = {}
    for name, path in pages.items():
        response = page.goto(f"{live_server}{path}")
        assert response is not None and response.status == 200, (name, path)
        page.screenshot(path=str(ARTIFACTS / f"layout-{name}-{width}.png"), full_page=True)
        found = page.evaluate(OVERFLOWING)
        if found:
            overflowing[name] = found
    assert not overflowing, "\n".join(f"{name}: {found}" for name, found in overflowing.items())
