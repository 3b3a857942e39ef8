"""In a real browser (headless Chromium, as ``test_browser.py``): an editor defines a
warehouse source on its page (a DuckDB file holding the events), points a running
experiment at it on the experiment form, asks for a refresh on the report, and the
report then shows the warehouse's counts with when they were computed, and breaks
them down by an exposure attribute (segments computed in the warehouse).

The worker's refresh runs in the test once the page has asked for it: the test
synchronises on what the pages show and on the stored request, never on time."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from expplatform.jobs import JobRunner
from expplatform.models import Experiment, WarehouseStats

from .conftest import PASSWORD
from .events_support import expose, make_experiment
from .test_browser import ARTIFACTS, app, browser_context  # noqa: F401  (fixtures)
from .test_warehouse_reports import _event
from .warehouse_support import chdb_folder, make_warehouse  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
WAIT_MS = 30_000  # an upper bound for the page to refresh itself (every 3 s)


@pytest.fixture
def warehouse(tmp_path, chdb_folder):  # noqa: F811
    yield from make_warehouse("duckdb", tmp_path, chdb_folder)


def test_an_editor_defines_a_warehouse_source_and_reads_a_report_computed_there(
    app,  # noqa: F811
    db,
    live_server,
    browser_context,  # noqa: F811
    make_user,
    warehouse,
):
    with db.write() as session:
        make_experiment(session, "checkout", target_stage="purchase", status="draft")
    events = [_event(i, f"c{2 * i + 1}", "purchase", "conversion", 60) for i in range(9)]
    events += [_event(100 + i, f"c{2 * i}", "purchase", "conversion", 60) for i in range(14)]
    warehouse.add_events(events)
    make_user("editor", "ed@example.com")

    page = browser_context.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", "ed@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/experiments.*"))

    page.click("nav >> text=Warehouses")
    page.wait_for_url(f"{live_server}/warehouse-sources")
    page.goto(f"{live_server}/warehouse-sources/new")
    page.fill("#key", "lake")
    page.fill("#name", "Customer lake")
    page.fill("#url", warehouse.url)
    page.fill("#events_table", warehouse.events_table)
    page.fill("#exposures_table", warehouse.exposures_table)
    page.click("button:has-text('Create source')")
    page.wait_for_url(re.compile(r".*/warehouse-sources$"))
    listing = page.inner_text("main")
    assert "Customer lake" in listing and "duckdb:///" in listing
    page.screenshot(path=str(ARTIFACTS / "warehouse-sources.png"), full_page=True)

    page.goto(f"{live_server}/experiments/checkout/edit")
    page.select_option("#warehouse_source", "lake")
    page.click("button[type=submit].primary")
    page.wait_for_url(re.compile(r".*/experiments/checkout$"))
    assert "Customer lake" in page.inner_text("main")
    with db.write() as session:  # started, and customers assigned (the lifecycle is tested elsewhere)
        experiment = session.scalars(select(Experiment).filter_by(key="checkout")).one()
        experiment.status = "running"
        for i in range(40):
            platform = {"platform": ("ios", "android")[i % 4 // 2]}
            expose(session, experiment, f"c{i}", "control" if i % 2 else "treatment", attributes=platform)

    page.goto(f"{live_server}/experiments/checkout/report")
    assert "not computed yet" in page.inner_text("#warehouse")
    page.click("#warehouse button:has-text('Refresh now')")
    page.wait_for_url(re.compile(r".*/report#warehouse$"))
    assert "A refresh is asked for" in page.inner_text("#warehouse")
    with db.sessionmaker() as session:
        experiment_id = session.scalars(select(Experiment.id).filter_by(key="checkout")).one()
        assert session.get(WarehouseStats, experiment_id).requested_at is not None

    assert JobRunner(db).run_pending() == 1  # the fit worker's turn: it exports, computes and stores
    page.wait_for_selector("#warehouse[data-state='fresh']", timeout=WAIT_MS)  # the page refreshed itself
    panel = page.inner_text("#warehouse")
    assert "Computed in the warehouse Customer lake" in panel and "DuckDB" in panel
    assert "40 customers exposed" in page.inner_text(".report-meta")
    assert "treatment" in page.inner_text(".calls-table")
    assert "these are as of" in page.inner_text("#segments")  # computed in the warehouse at its full refresh
    page.screenshot(path=str(ARTIFACTS / "warehouse-report.png"), full_page=True)
    page.select_option("#segments select[name=segment]", "platform")
    page.click("#segments button:has-text('Show')")
    page.wait_for_selector("#segments h3.segment-title", timeout=WAIT_MS)
    titles = page.inner_text("#segments")
    assert "platform = ios · 20 exposed" in titles and "platform = android · 20 exposed" in titles
