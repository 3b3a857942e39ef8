"""The whole path in a real browser: headless Chromium (Debian's, driven by
Playwright) against the app served over HTTP. An editor logs in, creates an
experiment with the form, starts it; customers are assigned and send events through
the HTTP API with a clear difference between the variants; the report page then
shows the stages, the variants, a lift with its interval, the recommendation and
the SVG plots. A screenshot is kept in test-artifacts/report.png.

Without /usr/bin/chromium the test is skipped, unless EXPPLATFORM_TEST_REQUIRE_BROWSER
is set (as CI does), when it fails."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from .conftest import PASSWORD, make_test_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
CUSTOMERS = 600
# Conversion at the stage under test: a lift no analysis can miss.
CART_RATE = {"control": 0.20, "treatment": 0.45}

pytestmark = pytest.mark.browser


@pytest.fixture
def app(database_url, tmp_path):
    """CSRF on, as in production: the browser submits the real forms."""
    app = make_test_app(database_url, tmp_path, wtf_csrf_enabled=True, report_wait_seconds=60.0)
    yield app
    app.extensions["report_cache"].slow.wait_idle(60)
    app.extensions["db"].engine.dispose()


@pytest.fixture
def browser_context(tmp_path):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("EXPPLATFORM_TEST_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def send_traffic(base_url: str, client_key: str, key: str) -> dict[str, int]:
    """Assign CUSTOMERS customers one call each, then report their outcomes in
    batches: everyone browses, CART_RATE[variant] of each variant reaches the cart,
    a third of those buy; each rates the last stage reached."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {client_key}"
    exposed: dict[str, int] = {}
    events = []
    for i in range(CUSTOMERS):
        customer = f"shopper-{i}"
        attributes = {"platform": ("ios", "android", "web")[i % 3]}
        response = http.post(
            f"{base_url}/api/v1/assign",
            json={"customer_id": customer, "experiments": [key], "attributes": attributes},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        (assignment,) = response.json()["assignments"]
        assert assignment["enrolled"], assignment
        variant = assignment["variant"]
        exposed[variant] = exposed.get(variant, 0) + 1
        rank = exposed[variant] % 20 / 20  # deterministic, evenly spread in each variant
        reached = ["browse"]
        if rank < CART_RATE[variant]:
            reached.append("cart")
            if rank < CART_RATE[variant] / 3:
                reached.append("purchase")
        for stage in reached:
            events.append(
                {"event_id": f"{customer}-{stage}", "customer_id": customer, "stage": stage, "type": "conversion"}
            )
        rating = 5 if variant == "treatment" and len(reached) > 1 else 3 + i % 2
        events.append(
            {
                "event_id": f"{customer}-rating",
                "customer_id": customer,
                "stage": reached[-1],
                "type": "satisfaction",
                "value": rating,
            }
        )
    for start in range(0, len(events), 500):
        response = http.post(f"{base_url}/api/v1/events", json={"events": events[start : start + 500]}, timeout=60)
        assert response.status_code == 200 and not response.json()["rejected"], response.text[:500]
    return exposed


def test_an_editor_creates_starts_and_reads_an_experiment_in_a_browser(
    live_server, browser_context, make_user, make_key
):
    make_user("editor", "editor@example.com")
    client_key = make_key("client", "shop")
    journey = {
        "key": "shop",
        "name": "Shop",
        "stages": [{"key": stage} for stage in ("browse", "cart", "purchase")],
        "questions": [
            {"key": f"{stage}-csat", "text": f"How was {stage}?", "stage": stage, "scale": {"min": 1, "max": 5}}
            for stage in ("browse", "cart", "purchase")
        ],
    }
    created = requests.post(
        f"{live_server}/api/v1/journeys",
        json=journey,
        headers={"Authorization": f"Bearer {make_key('admin', 'setup')}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    page = browser_context.new_page()

    # Log in through the form.
    page.goto(f"{live_server}/login")
    page.fill("#email", "editor@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*|.*/$"))

    # Create the experiment with the form.
    # The journey and the stage under test come preselected from the journey map's link.
    page.goto(f"{live_server}/experiments/new?journey=shop&stage=cart")
    page.fill("input[name=key]", "checkout-cta")
    page.fill("input[name=name]", "Checkout call to action")
    page.fill("textarea[name=hypothesis]", "A bolder call to action gets more customers to the cart.")
    for stage in ("browse", "cart", "purchase"):
        page.check(f"#measured-{stage}")
    assert page.input_value("select[name=target_stage]") == "cart"
    page.fill("input[name='variants-1-key']", "treatment")
    page.click("button.primary[type=submit]")
    page.wait_for_url(f"{live_server}/experiments/checkout-cta")
    assert "draft" in page.inner_text("h1")

    # Start it, through the confirmation page.
    page.click("a.button:has-text('Start')")
    page.wait_for_url(f"{live_server}/experiments/checkout-cta/start")
    page.click("button:has-text('Yes, start it')")
    page.wait_for_url(f"{live_server}/experiments/checkout-cta")
    assert "running" in page.inner_text("h1")

    exposed = send_traffic(live_server, client_key, "checkout-cta")
    assert set(exposed) == {"control", "treatment"} and min(exposed.values()) >= 200

    # The report, reached from the experiment page.
    page.click("a.button:has-text('Report')")
    page.wait_for_url(f"{live_server}/experiments/checkout-cta/report")
    stages = page.locator(".lm-stage h3").all_inner_texts()
    assert [s.split()[0] for s in stages] == ["browse", "cart", "purchase"] and "under test" in stages[1]
    assert page.locator(".lm-stage").nth(1).locator("[data-variant]").evaluate_all(
        "cells => cells.map(c => c.dataset.variant)"
    ) == ["control", "treatment"]
    cart_treatment = page.locator(".lm-stage").nth(1).locator("[data-variant=treatment]").inner_text()
    # The interval sits under the lift (its own line in a narrow stage column).
    assert re.search(r"Lift\s+\+\d+\.\d%\s+\[[+-]\d+\.\d%, \+\d+\.\d%\]", cart_treatment), cart_treatment
    assert "Ship" in cart_treatment
    recommendation = page.inner_text(".recommendation .rec-summary")
    assert recommendation.startswith("Ship treatment"), recommendation
    assert page.locator("svg.plot").count() == 4
    for name in ("forest", "densities", "funnel", "over-time"):
        plot = page.locator(f"svg.plot-{name}")
        assert plot.is_visible() and plot.bounding_box()["width"] > 300, name
    assert "treatment" in page.locator("svg.plot-densities").inner_html()
    assert page.locator("select[name=segment] option").all_inner_texts()[1:] == ["platform"]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def test_a_stage_without_data_shows_no_number_and_a_segment_view_no_ship_headline(
    app, live_server, browser_context, make_user, tmp_path
):
    """Issue 12 in a real browser: 'awareness' has no outcome at all, so its cells show
    no number but the exposed count; the breakdown by platform (each platform alone
    would be a 'ship') is exploratory and has no ship headline of its own."""
    from analysis import analyze
    from expplatform.aggregation import segment_stats
    from expplatform.experiment_settings import experiment_settings
    from expplatform.models import Experiment

    from .reports_support import seed_counts

    db = app.extensions["db"]
    counts = {
        "control": (1500, {"browse": 900, "cart": 150, "purchase": 60}),
        "treatment": (1500, {"browse": 900, "cart": 300, "purchase": 120}),
    }
    seed_counts(app, db, "no-awareness", counts)
    with db.sessionmaker() as session:
        experiment = session.query(Experiment).filter_by(key="no-awareness").one()
        prior, rule = experiment_settings(experiment)
        by_platform = segment_stats(session, experiment, "platform")
    assert {analyze(s, prior=prior, rule=rule, seed=0).recommendation.action for s in by_platform.values()} == {"ship"}

    make_user("viewer", "viewer@example.com")
    page = browser_context.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", "viewer@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*|.*/$"))

    page.goto(f"{live_server}/experiments/no-awareness/report")
    awareness = page.locator(".lm-stage[data-stage=awareness]")
    assert awareness.locator("[data-variant]").count() == 2
    for text in awareness.locator("[data-variant]").all_inner_texts():
        assert "No data at this stage" in text, text
        numbers = re.findall(r"\d[\d,.]*%?", text)
        assert numbers == ["1,500"], text  # the exposed count, and no other number
    cart = page.locator(".lm-stage[data-stage=cart] [data-variant=treatment]").inner_text()
    assert re.search(r"P\(better\)\s+\S", cart) and "Ship" in cart
    assert page.inner_text(".recommendation .rec-summary").startswith("Ship treatment")
    page.screenshot(path=str(tmp_path / "report-stage-without-data.png"), full_page=True)

    page.select_option("select[name=segment]", "platform")
    page.click(".segment-options button[type=submit]")
    page.wait_for_url(re.compile(r".*segment=platform.*"))
    # The breakdown lands at its results, not at the top of the page.
    assert page.url.endswith("#segments")
    top = page.evaluate("document.getElementById('segments').getBoundingClientRect().top")
    assert 0 <= top < page.viewport_size["height"] / 2, top
    segments = page.locator("#segments")
    text = segments.inner_text()
    assert "exploratory" in text.lower() and "2 segments looked at" in text
    assert "Ship" not in text and segments.locator(".decision").count() == 0
    assert [t.split(" ·")[0] for t in segments.locator("h3.segment-title").all_inner_texts()] == [
        "platform = ios",
        "platform = web",
    ]
    segments.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "report-segments.png"), full_page=True)

    # The duration estimate on the experiment page: a plain GET form, prefilled from
    # the running experiment (3,000 customers over two days; 10% at cart for control).
    page.goto(f"{live_server}/experiments/no-awareness")
    assert page.input_value("input[name=per_day]") == "1500" and page.input_value("input[name=baseline]") == "10"
    page.fill("input[name=lift]", "15")
    page.click("#duration button[type=submit]")
    page.wait_for_url(re.compile(r".*lift=15.*"))
    result = page.inner_text("#duration .plan-result")
    assert re.match(r"About \d+ days? \([\d,]+ customers per variant\) until a call", result), result
    page.screenshot(path=str(tmp_path / "experiment-duration.png"), full_page=True)
    for name in ("report-stage-without-data.png", "report-segments.png", "experiment-duration.png"):
        assert (tmp_path / name).stat().st_size > 50_000
