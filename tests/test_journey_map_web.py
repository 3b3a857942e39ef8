"""The journey map pages: the journeys list and the navigation link, the map page's
stages, figures, plots and pain points, the persona links and form (no JavaScript),
the side-by-side view with credible differences marked, bad parameters, an unknown
journey, the stylesheet, and the experiments listed on each stage."""

from __future__ import annotations

import os
import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from expplatform.models import (
    Experiment,
    Journey,
    JourneyCount,
    JourneyPersona,
    JourneyStage,
    RatingQuestion,
    Variant,
    utcnow,
)

from .conftest import PASSWORD

STAGES = (
    ("visit", "Visit", "Lands on the site", ["homepage", "search ad"]),
    ("signup", "Sign up", "Creates an account", ["signup form"]),
    ("order", "First order", "Pays for an order", ["checkout"]),
)


def add_journey(session, key: str = "web") -> Journey:
    journey = Journey(key=key, name="Web store <first order>", description="Visit to first order.")
    journey.stages = [
        JourneyStage(key=k, name=name, position=i, goal=goal, touchpoints=points)
        for i, (k, name, goal, points) in enumerate(STAGES)
    ]
    journey.personas = [
        JourneyPersona(key="student", name="Students", position=0),
        JourneyPersona(key="pro", name="Professionals", position=1),
    ]
    journey.questions = [
        RatingQuestion(
            key=f"{key}-signup-ease",
            stage="signup",
            text="How easy was signing up?",
            scale_min=1,
            scale_max=5,
            position=0,
        ),
        RatingQuestion(
            key=f"{key}-order-nps", stage="order", text="Would you recommend us?", scale_min=0, scale_max=10, position=1
        ),
    ]
    session.add(journey)
    session.flush()
    return journey


def count(journey: Journey, stage: str, persona: str, day: date, n: int, metric: str = "", value: int | None = None):
    kind = "converted" if value is None else "rating"
    return JourneyCount(
        journey_id=journey.id,
        stage=stage,
        metric=metric,
        persona=persona,
        day=day,
        kind=kind,
        value=value or 0,
        customers=n,
    )


@pytest.fixture
def today() -> date:
    return utcnow().date()


@pytest.fixture
def journey(db, today):
    """Students convert from visit to sign-up at 50%, professionals at 20% (a credible
    difference); both sign-up to order at 25% (none). Students rate sign-up 4-5,
    professionals 1-2."""
    with db.write() as session:
        journey = add_journey(session)
        day = today - timedelta(days=2)
        session.add_all(
            [
                count(journey, "visit", "student", day, 800),
                count(journey, "signup", "student", day, 400),
                count(journey, "order", "student", day, 100),
                count(journey, "visit", "pro", day, 1000),
                count(journey, "signup", "pro", day, 200),
                count(journey, "order", "pro", day, 50),
                count(journey, "visit", "", day, 12),
                count(journey, "signup", "student", day, 150, "web-signup-ease", 5),
                count(journey, "signup", "student", day, 50, "web-signup-ease", 4),
                count(journey, "signup", "pro", day, 60, "web-signup-ease", 2),
                count(journey, "signup", "pro", day, 40, "web-signup-ease", 1),
                count(journey, "order", "student", day, 40, "web-order-nps", 10),
                count(journey, "order", "pro", day, 20, "web-order-nps", 3),
            ]
        )
        return journey.id


def add_experiment(session, journey_id: int, key: str, status: str, target: str = "signup", **fields) -> Experiment:
    experiment = Experiment(
        key=key,
        name=fields.pop("name", key.replace("-", " ").title()),
        journey_id=journey_id,
        stages=[s for s, *_ in STAGES],
        target_stage=target,
        salt=key,
        status=status,
        started_at=None if status == "draft" else utcnow() - timedelta(days=9),
        **fields,
    )
    experiment.variants = [
        Variant(key="control", weight=1, position=0, is_control=True),
        Variant(key="treatment", weight=1, position=1),
    ]
    session.add(experiment)
    session.flush()
    return experiment


def page(client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code)
    return response.get_data(as_text=True)


def section(body: str, marker: str) -> str:
    return body.split(marker, 1)[1].split("</section>", 1)[0]


def stage_html(body: str, stage: str) -> str:
    return body.split(f'<li class="jm-stage" data-stage="{stage}">', 1)[1].split('<li class="jm-stage"', 1)[0]


def test_the_journeys_list_links_each_map_with_its_stages_and_experiment_counts(client, login, db, journey):
    with db.write() as session:
        add_experiment(session, journey, "signup-copy", "running")
        add_experiment(session, journey, "signup-form", "draft")
        add_experiment(session, journey, "visit-hero", "running", target="visit")
        other = add_journey(session, "other")
        other.name = "Other journey"
    login("viewer")
    body = page(client, "/journeys")
    assert '<a href="/journeys">Journeys</a>' in body  # the navigation
    row = body.split('data-journey="web"', 1)[1].split("</tr>", 1)[0]
    assert '<a href="/journeys/web"><strong>Web store &lt;first order&gt;</strong></a>' in row
    assert re.findall(r"<li>([^<]+)</li>", row) == ["Visit", "Sign up", "First order"]
    assert re.findall(r'data-status="(\w+)">(\d+) ', row) == [("running", "2"), ("draft", "1")]
    other_row = body.split('data-journey="other"', 1)[1].split("</tr>", 1)[0]
    assert "none" in other_row and 'href="/journeys/other"' in other_row
    assert "Journeys" in page(client, "/experiments").split("</nav>")[0]
    assert "/journeys/new" not in body  # a viewer edits nothing
    login("editor")
    assert '<a class="button" href="/journeys/new">New journey</a>' in page(client, "/journeys")
    assert 'href="/journeys/web/edit">Edit journey</a>' in page(client, "/journeys/web")


def test_the_map_shows_stages_figures_pain_points_and_plots(client, login, journey):
    login("viewer")
    body = page(client, "/journeys/web")
    assert "<h1>Web store &lt;first order&gt;</h1>" in body  # user text escaped
    assert "Edit journey" not in body
    stages = re.findall(
        r'<li class="jm-stage" data-stage="(\w+)">\s*<h3><span class="jm-step-no">(\d)</span>([^<]+)', body
    )
    assert stages == [("visit", "1", "Visit"), ("signup", "2", "Sign up"), ("order", "3", "First order")]
    visit = stage_html(body, "visit")
    assert "<li>homepage</li><li>search ad</li>" in visit and "Lands on the site" in visit
    # 800 + 1000 + 12 reach visit; 600 sign up (33.1%), 150 order (25.0% of 600).
    assert '<dd data-figure="reached">1,812</dd>' in visit
    assert re.search(r'data-figure="conversion">33\.1% <span class="interval">\[\d+\.\d%, \d+\.\d%\]</span>', visit)
    assert "No rating question at this stage." in visit
    signup = stage_html(body, "signup")
    assert '<dd data-figure="reached">600</dd>' in signup
    # Mean rating of sign-up: (150*5 + 50*4 + 60*2 + 40*1) / 300 = 3.70; top box 200/300.
    assert re.search(r'data-figure="mean">3\.70 <span class="interval">\[3\.\d\d, 3\.\d\d\]', signup)
    assert 'data-figure="top-box">66.7%' in signup
    order = stage_html(body, "order")
    # NPS of 40 tens and 20 threes: (40 - 20) / 60 = +33.
    assert re.search(r'data-figure="nps">\+33 <span class="interval">\[[+-]\d+, [+-]\d+\]', order)
    assert "On to" not in order  # the last stage goes nowhere
    pains = section(body, 'id="pain-title"')
    # Drop-off 66.9% of 1,812 after visit, 75.0% of 600 after sign-up; satisfaction 0.68
    # at sign-up ((3.70 - 1) / 4), 0.77 at the order (a mean of 7.67 of 0-10).
    assert 'data-kind="drop_off" data-status="ok" data-stage="signup"' in pains
    assert "The largest drop-off is from Sign up to First order: 75.0%" in pains
    assert 'data-kind="satisfaction" data-status="ok" data-stage="signup"' in pains
    assert "The lowest satisfaction is at Sign up: 0.68" in pains
    plots = section(body, 'id="plots-title"')
    assert plots.count("<svg") == 2 and "plot-journey-funnel" in plots and "plot-emotion-curve" in plots
    assert "Sign up" in plots and "no rating" in plots  # stage names; the visit stage has no point
    assert 'href="/api/v1/journeys/web/map"' in body


def test_the_persona_switch_is_links_and_a_get_form(client, login, journey):
    login("viewer")
    body = page(client, "/journeys/web")
    personas = section(body, 'aria-label="Persona"') if "</section>" in body else body
    nav = body.split('<nav class="filters jm-personas"', 1)[1].split("</nav>", 1)[0]
    links = dict(re.findall(r'href="/journeys/web\?persona=(\w+)" data-persona="\w+" *>([^<]+)', nav))
    assert links == {"student": "Students ", "pro": "Professionals ", "unknown": "Unknown persona "}
    assert "(800)" in nav and "(1,000)" in nav and "(12)" in nav
    form = body.split('<form class="report-options card jm-options" method="get"', 1)[1].split("</form>", 1)[0]
    assert re.findall(r'<select name="(\w+)">', form) == ["persona", "compare", "days"]
    assert personas  # the page has its sections
    # Following the link: the students' figures only.
    body = page(client, "/journeys/web?persona=student")
    visit = stage_html(body, "visit")
    assert '<dd data-figure="reached">800</dd>' in visit and 'data-figure="conversion">50.0%' in visit
    assert 'aria-current="page">Students' in body.split("</nav>", 2)[1]
    assert '<option value="student" selected>Students</option>' in body
    # The unknown persona: 12 customers, none further: not enough data to point at a stage.
    body = page(client, "/journeys/web?persona=unknown")
    assert 'data-note="not-enough-customers"' in stage_html(body, "visit")
    assert 'data-kind="drop_off" data-status="not_enough_data"' in body


def test_side_by_side_marks_the_credible_difference_only(client, login, journey):
    login("viewer")
    body = page(client, "/journeys/web?persona=student&compare=pro")
    visit, signup = stage_html(body, "visit"), stage_html(body, "signup")
    assert visit.count('class="jm-figures"') == 2
    assert re.findall(r'class="jm-figures" style="--variant: (#\w+)" data-group="(\w+)"', visit) == [
        ("#2952cc", "student"),
        ("#d97706", "pro"),
    ]
    # Visit -> sign-up: 50% against 20%: credible. Sign-up -> order: 25% and 25%: not.
    assert re.search(r'data-figure="conversion-difference" data-credible="yes">\+30\.0 pp', visit)
    assert 'data-figure="conversion-difference" data-credible="no">+0.0 pp' in signup
    assert signup.count("jm-credible") == 1  # the sign-up ease rating differs (4.75 against 1.6)
    assert re.search(r'data-question="web-signup-ease" data-credible="yes">\+3\.\d\d', signup)
    pains = section(body, 'id="pain-title"')
    assert re.findall(r'<h3><span class="swatch"></span>(\w+)</h3>', pains) == ["Students", "Professionals"]
    assert '<option value="pro" selected>Professionals</option>' in body.split('name="compare"', 1)[1]


def test_bad_parameters_are_named_and_dropped_on_the_page(client, login, journey, today):
    login("viewer")
    body = page(client, "/journeys/web?persona=student&days=999&compare=nobody")
    assert "Ignored: days: must be a whole number of days from 1 to 366" in body
    assert "compare: is not a persona of this journey" in body
    assert "28 days, UTC" in body and '<option value="student" selected>' in body  # the good one is kept
    body = page(client, f"/journeys/web?from={today.isoformat()}&to={(today - timedelta(days=3)).isoformat()}")
    assert "Ignored: from: must not be after to" in body


def test_a_custom_period_is_kept_by_the_form(client, login, journey, today):
    login("viewer")
    first, last = today - timedelta(days=5), today - timedelta(days=1)
    body = page(client, f"/journeys/web?from={first.isoformat()}&to={last.isoformat()}&persona=pro")
    assert f"{first.isoformat()} to {last.isoformat()} (5 days, UTC)" in body
    assert f'<input type="hidden" name="from" value="{first.isoformat()}">' in body
    assert f'href="/journeys/web?from={first.isoformat()}&amp;to={last.isoformat()}&amp;persona=student"' in body
    body = page(client, f"/journeys/web?from={today.isoformat()}&to={today.isoformat()}")
    assert '<dd data-figure="reached">0</dd>' in stage_html(body, "visit")  # the counts are two days old


def test_an_unknown_journey_is_a_404_page_and_a_visitor_is_sent_to_log_in(client, login, journey):
    response = client.get("/journeys/web")
    assert response.status_code == 302 and "/login" in response.location
    login("viewer")
    response = client.get("/journeys/nope")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_the_stylesheet_is_served_as_css(client):
    response = client.get("/journeys.css")
    assert response.status_code == 200 and response.mimetype == "text/css"
    assert ".jm-stages" in response.get_data(as_text=True) and response.headers["ETag"]
    again = client.get("/journeys.css", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_each_stage_lists_its_running_and_paused_experiments_linked_to_their_reports(client, login, db, journey):
    with db.write() as session:
        add_experiment(session, journey, "signup-copy", "running", name="Shorter <sign-up> copy")
        add_experiment(session, journey, "signup-sso", "paused")
        add_experiment(session, journey, "signup-later", "draft")
    login("viewer")
    body = page(client, "/journeys/web")
    signup = stage_html(body, "signup")
    tests = signup.split('<div class="jm-tests">', 1)[1]
    listed = re.findall(r'<li data-experiment="([\w-]+)">\s*<span class="status status-(\w+)">', tests)
    assert listed == [("signup-copy", "running"), ("signup-sso", "paused")]  # no draft
    assert '<a href="/experiments/signup-copy/report">Shorter &lt;sign-up&gt; copy</a>' in tests
    assert "None running, paused or stopped." in stage_html(body, "visit")


# -- in a real browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium as tests/test_browser.py drives it (skipped without it, unless
    EXPPLATFORM_TEST_REQUIRE_BROWSER is set)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("EXPPLATFORM_TEST_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.mark.browser
def test_a_viewer_reads_the_map_switches_persona_and_opens_an_experiment_report(
    live_server, browser, make_user, admin_api, journey
):
    response = admin_api.post(
        "/api/v1/experiments",
        json={
            "key": "signup-copy",
            "name": "Shorter sign-up copy",
            "journey": "web",
            "target_stage": "signup",
            "variants": [{"key": "control", "weight": 0.5}, {"key": "short", "weight": 0.5}],
        },
    )
    assert response.status_code == 201, response.get_json()
    assert admin_api.post("/api/v1/experiments/signup-copy/start").status_code == 200
    make_user("viewer", "viewer@example.com")
    page = browser.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", "viewer@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*|.*/$"))

    # From the navigation to the journey's map.
    page.click("header nav a:has-text('Journeys')")
    page.wait_for_url(f"{live_server}/journeys")
    page.click("a:has-text('Web store <first order>')")
    page.wait_for_url(f"{live_server}/journeys/web")
    assert [h.split(" ", 1)[-1] for h in page.locator(".jm-stage h3").all_inner_texts()] == [
        "1Visit",
        "2Sign up",
        "3First order",
    ] or page.locator(".jm-stage h3").all_inner_texts() == ["1\nVisit", "2\nSign up", "3\nFirst order"]
    visit = page.locator(".jm-stage[data-stage=visit] [data-figure=reached]")
    assert visit.inner_text() == "1,812"
    assert page.locator("svg.plot-journey-funnel").is_visible()
    assert page.locator("svg.plot-emotion-curve").bounding_box()["width"] > 300

    # Switch persona with the form (a plain GET), then side by side.
    page.select_option("select[name=persona]", "student")
    page.click(".jm-options button[type=submit]")
    page.wait_for_url(re.compile(r".*/journeys/web\?persona=student.*"))
    assert visit.inner_text() == "800"
    page.select_option("select[name=compare]", "pro")
    page.click(".jm-options button[type=submit]")
    page.wait_for_url(re.compile(r".*persona=student.*compare=pro.*"))
    assert page.locator(".jm-stage[data-stage=visit] .jm-figures").count() == 2
    credible = page.locator(".jm-stage[data-stage=visit] [data-figure=conversion-difference]")
    assert credible.get_attribute("data-credible") == "yes" and "credible" in credible.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "journey-map.png"), full_page=True)
    assert (ARTIFACTS / "journey-map.png").stat().st_size > 50_000

    # On a phone the stages scroll sideways, with the cue shown, and the page itself does not.
    page.set_viewport_size({"width": 390, "height": 844})
    scroller = page.locator(".jm-scroll")
    assert scroller.evaluate("e => e.scrollWidth > e.clientWidth")
    assert page.locator(".jm-scroll-hint").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "journey-map-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # A persona link, then the stage's experiment, to its report.
    page.click(".jm-personas a[data-persona=pro]")
    page.wait_for_url(f"{live_server}/journeys/web?persona=pro")
    assert visit.inner_text() == "1,000"
    link = page.locator(".jm-stage[data-stage=signup] li[data-experiment=signup-copy] a")
    assert link.inner_text() == "Shorter sign-up copy"
    assert (
        page.locator(".jm-stage[data-stage=signup] li[data-experiment=signup-copy] .status").inner_text() == "running"
    )
    link.click()
    page.wait_for_url(f"{live_server}/experiments/signup-copy/report")
    assert "Shorter sign-up copy" in page.inner_text("h1")
