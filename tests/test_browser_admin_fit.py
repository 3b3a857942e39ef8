"""In a real browser (headless Chromium, as ``test_browser.py``): an editor runs the
full model and the report page follows it by itself, from "waiting" through the
sampler's progress to the result, staying at the full-model section; an admin
deactivates an account through its confirmation page, and its user is told so.

The fit is a stand-in that reports progress and waits inside the fit until the test
has seen the page show it (the real sampler's progress is tested in
``test_fit_progress.py``): the test synchronises on what the page shows, never on
time."""

from __future__ import annotations

import re
import threading

import pytest

from expplatform.jobs import ProgressRecorder, get_runner

from .conftest import PASSWORD
from .test_browser import ARTIFACTS, app, browser_context  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser
WAIT_MS = 30_000  # an upper bound for the page to refresh; the page refreshes every 3 s


class HeldFit:
    """Reports half of its iterations, a hundred a (pretend) second, then waits to be
    released to finish."""

    def __init__(self) -> None:
        self.halfway = threading.Event()
        self.release = threading.Event()
        self.seconds = 0.0

    def clock(self) -> float:
        return self.seconds

    def __call__(self, stats, params, *, prior, rule, progress):
        total = params.chains * (params.draws + params.tune)
        for done in range(1, total // 2 + 1):
            self.seconds += 0.01
            progress(done, total)
        self.halfway.set()
        assert self.release.wait(60), "the test never released the fit"
        progress(total, total)
        return {"method": "stand-in", "stages": []}


def _log_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")


def test_the_report_follows_a_full_model_fit_by_itself_at_its_section(
    app,  # noqa: F811
    seeded,
    live_server,
    browser_context,  # noqa: F811
    make_user,
    monkeypatch,
):
    make_user("editor", "ed@example.com")
    page = browser_context.new_page()
    _log_in(page, live_server, "ed@example.com")
    page.wait_for_url(re.compile(r".*/experiments.*"))
    page.goto(f"{live_server}/experiments/checkout/report")
    page.click("#full-model button:has-text('Run full model')")
    page.wait_for_url(f"{live_server}/experiments/checkout/report#full-model")
    assert "Waiting for a fit worker" in page.inner_text("#full-model")
    page.wait_for_url(re.compile(r".*/report\?refresh=1#full-model$"), timeout=WAIT_MS)  # it refreshed itself

    runner = get_runner(app)
    fit = HeldFit()
    runner.fit = fit
    monkeypatch.setattr(ProgressRecorder, "clock", staticmethod(fit.clock))
    worker = threading.Thread(target=runner.run_pending, name="test-worker")
    worker.start()
    try:
        assert fit.halfway.wait(60)
        # No reload by the test: the page's own refresh brings the progress.
        page.wait_for_selector("#full-model .fit-progress progress", timeout=WAIT_MS)
        status = page.inner_text("#full-model .fit-progress")
        assert re.search(r"[\d,]+ of 8,000 draws \((49|50)%, tuning included\)", status), status
        assert "elapsed" in status and ("left" in status or "nearly done" in status)
        assert page.url.endswith("#full-model")
        top = page.locator("#full-model").bounding_box()["y"]  # in the viewport: still at the section
        assert 0 <= top < page.viewport_size["height"] * 3 / 4 and page.evaluate("window.scrollY") > 1000
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "full-model-progress.png"))
    finally:
        fit.release.set()
        worker.join(60)
    assert not worker.is_alive()
    page.wait_for_selector("#full-model .job-finished", timeout=WAIT_MS)
    assert "draws sampled in" in page.inner_text("#full-model")
    assert page.locator("meta[http-equiv=refresh]").count() == 0  # done: no more refreshing


def test_an_admin_deactivates_an_account_after_confirming_and_its_user_is_told(
    live_server,
    browser_context,  # noqa: F811
    make_user,
):
    make_user("admin", "boss@example.com")
    ana = make_user("editor", "ana@example.com")
    page = browser_context.new_page()
    _log_in(page, live_server, "boss@example.com")
    page.wait_for_url(re.compile(r".*/experiments.*"))
    page.goto(f"{live_server}/admin/users")
    page.click(f"#user-{ana.id} a:has-text('Deactivate')")
    page.wait_for_url(f"{live_server}/admin/users/{ana.id}/deactivate")
    assert page.inner_text("h1") == "Deactivate ana@example.com?"
    page.click("button:has-text('Yes, deactivate it')")
    page.wait_for_url(f"{live_server}/admin/users#user-{ana.id}")
    assert "deactivated" in page.inner_text(f"#user-{ana.id}")

    page.click("button:has-text('Log out')")  # one browser profile: the admin leaves first
    _log_in(page, live_server, "ana@example.com")
    assert "This account is deactivated" in page.inner_text("main")
    assert "/login" in page.url


# Cards, table cells and history lines whose content is wider than themselves.
CLIPPED = """scope => [...document.querySelectorAll(scope)]
  .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1 && !e.closest('pre'))
  .map(e => `${e.tagName}.${e.className} ${e.textContent.trim().slice(0,30)} ${e.scrollWidth}>${e.clientWidth}`)"""
ADMIN = "main .card, main table, main td, main th"
HISTORY = "#history, #history *"  # the rest of the experiment page is another test's


@pytest.mark.parametrize("width", [390, 1280, 1920])
def test_the_admin_pages_and_history_fit_every_width(live_server, browser_context, make_user, make_key, width):  # noqa: F811
    make_user("admin", "boss@example.com")
    for i, role in enumerate(("viewer", "editor", "admin")):
        make_user(role, f"a-rather-long-address-number-{i}@customer-research.example.com")
    key = make_key("admin", "ci-deploy (the release pipeline of the web shop)")
    headers = {"Authorization": f"Bearer {key}"}
    import requests

    experiment = {
        "key": "checkout",
        "name": "Green checkout",
        "target_stage": "purchase",
        "variants": [{"key": "control", "weight": 0.5}, {"key": "one-page-checkout", "weight": 0.5}],
        "traffic": 0.5,
    }
    assert requests.post(f"{live_server}/api/v1/experiments", json=experiment, headers=headers, timeout=30).ok
    targeting = [{"attribute": "platform", "op": "in", "value": ["ios", "android", "web", "kiosk", "smart-tv"]}]
    change = {"traffic": 0.8, "targeting": targeting}
    assert requests.patch(f"{live_server}/api/v1/experiments/checkout", json=change, headers=headers, timeout=30).ok

    page = browser_context.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    _log_in(page, live_server, "boss@example.com")
    page.wait_for_url(re.compile(r".*/experiments.*"))
    ARTIFACTS.mkdir(exist_ok=True)
    pages = (
        ("accounts", "/admin/users", ADMIN),
        ("keys", "/admin/keys", ADMIN),
        ("history", "/experiments/checkout", HISTORY),
    )
    for name, path, scope in pages:
        page.goto(f"{live_server}{path}")
        if scope is ADMIN:
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (name, width)
        assert page.evaluate(CLIPPED, scope) == [], (name, width)
        page.screenshot(path=str(ARTIFACTS / f"admin-{name}-{width}.png"), full_page=True)
    assert "Traffic 50% → 80%" in page.inner_text("#history")
