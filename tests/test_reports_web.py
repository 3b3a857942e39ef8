"""The journey lift map page: what it shows, escaping of user text, the segment and
credible-level selector, the full-model button and results, roles and CSRF."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

from sqlalchemy import select

from analysis import analyze
from expplatform.aggregation import experiment_stats
from expplatform.experiment_settings import experiment_settings
from expplatform.jobs import get_runner
from expplatform.models import AnalysisJob, Experiment, utcnow

from .conftest import make_test_app, sign_in
from .events_support import expose, make_experiment
from .reports_support import STAGES, WAIT, fake_fit, seed_journey

LIFT = re.compile(r"[+-]\d+\.\d%</strong> <span class=\"interval\">\[[+-]\d+\.\d%, [+-]\d+\.\d%\]</span>")

DASH = "\N{EN DASH}"  # between a scale's ends, as the reports write it


def page(client, path="/experiments/checkout/report") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def expected_result(db, key="checkout"):
    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).where(Experiment.key == key)).one()
        prior, rule = experiment_settings(experiment)
        return analyze(experiment_stats(session, experiment), prior=prior, rule=rule, seed=0)


def test_the_lift_map_shows_stages_in_journey_order_with_every_variant(client, login, db, seeded):
    login("viewer")
    body = page(client)
    result = expected_result(db)
    assert result.recommendation.action == "keep_running"
    assert "Keep running: no treatment is called better or worse at cart conversion yet." in body
    # Stages left to right, the target marked; each with a cell per variant.
    headings = re.findall(r'<div class="lm-stage( lm-target)?"[^>]*>\s*<h3>(\w+)', body)
    assert [(stage, bool(target)) for target, stage in headings] == [(s, s == "cart") for s in STAGES]
    cells = re.findall(r'data-variant="(\w+)"', body)
    assert cells == ["control", "bold", "plain"] * 3
    # Per treatment and stage: a lift with its interval, P(better), expected loss, a decision.
    assert len(LIFT.findall(body)) == 6
    cart = result.stage("cart").metric("conversion").comparison("bold")
    lift_range = f"[{cart.relative_lift.low * 100:+.1f}%, {cart.relative_lift.high * 100:+.1f}%]"
    lift = f'{cart.relative_lift.mean * 100:+.1f}%</strong> <span class="interval">{lift_range}'
    assert lift in body and f"{cart.p_better:.3f}" in body
    # Decision badges at the tested stage only; the stage before it is a balance check,
    # the one after it a guardrail, shown as such.
    lift_map = body.split('id="map-title"')[1].split("</section>")[0]
    stages = dict(re.findall(r'data-stage="(\w+)" data-role="(\w+)"', lift_map))
    assert stages == {"browse": "balance_check", "cart": "decides", "purchase": "guardrail"}
    by_stage = {s: lift_map.split(f'data-stage="{s}"')[1].split("lm-stage")[0] for s in STAGES}
    assert by_stage["cart"].count('class="decision decision-') == 2
    assert 'class="decision' not in by_stage["browse"] + by_stage["purchase"]
    assert by_stage["purchase"].count("Guardrail (conversion): holds") == 2
    assert re.findall(r'<h3>(\w+) <span class="chip chip-muted"[^>]*>balance check</span>', lift_map) == ["browse"]
    assert "Exp. loss" in body and "top-box" in body
    # Each stage's ratings are named by the question asked there, with its scale.
    for stage in STAGES:
        question = f"How would you rate the {stage} step? (1{DASH}5)"
        assert f'<p class="lm-question" data-question="{stage}-rating">{question}</p>' in by_stage[stage]


def test_the_plots_are_inline_svg(client, login, seeded):
    login("viewer")
    body = page(client)
    for name in ("forest", "densities", "funnel", "over-time"):
        assert f'<svg class="plot plot-{name}" role="img"' in body
    assert "<script" not in body  # nothing to run, nothing fetched
    assert not re.search(r'(src|href)="https?://', body)


def test_evidence_colours_follow_p_better(client, login, db, seeded):
    login("viewer")
    body = page(client)
    result = expected_result(db)
    for stage in STAGES:
        for treatment in ("bold", "plain"):
            p = result.stage(stage).metric("conversion").comparison(treatment).p_better
            expected = (
                "strong-better"
                if p >= 0.95
                else "strong-worse"
                if p <= 0.05
                else "better"
                if p >= 0.75
                else "worse"
                if p <= 0.25
                else "unclear"
            )
            assert f'class="lm-cell evidence-{expected}" style="--variant: ' in body


def test_user_text_is_escaped_everywhere(app, db, client, login):
    script = '<script>alert("x")</script>'
    with db.write() as session:
        experiment = make_experiment(session, "xss")
        experiment.name = script
        for i in range(10):
            expose(
                session,
                experiment,
                f"x{i}",
                ("control", "treatment")[i % 2],
                attributes={"persona": '<img src=x onerror="alert(1)">'},
            )
    login("viewer")
    body = page(client, "/experiments/xss/report?segment=persona")
    assert script not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body  # in the title, heading and breadcrumb
    assert "&lt;img src=x onerror=" in body  # the segment value, shown as text


def test_the_segment_selector_lists_recorded_attributes_and_breaks_down(client, login, seeded):
    login("viewer")
    body = page(client)
    assert re.findall(r'<option value="(\w+)" >', body) == ["persona", "platform"]
    broken_down = page(client, "/experiments/checkout/report?segment=platform&credible_level=0.9")
    assert '<option value="platform" selected>' in broken_down and '<option value="0.9" selected>' in broken_down
    assert re.findall(r"platform = (\w+)", broken_down) == ["android", "ios", "web"]  # most exposed first, then by name
    assert "90% credible intervals" in broken_down
    assert 'href="/api/v1/experiments/checkout/report.csv?segment=platform&amp;credible_level=0.9"' in broken_down


def test_bad_options_are_ignored_with_a_message(client, login, seeded):
    login("viewer")
    body = page(client, "/experiments/checkout/report?credible_level=2")
    assert "Ignored: credible_level: must be a number" in body and "95% credible intervals" in body


def test_the_page_needs_a_login_and_an_existing_experiment(client, login, seeded):
    response = client.get("/experiments/checkout/report")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    login("viewer")
    assert client.get("/experiments/nope/report").status_code == 404


def test_the_experiment_page_links_to_its_report(client, login, seeded):
    login("viewer")
    body = page(client, "/experiments/checkout")
    assert '<a class="button" href="/experiments/checkout/report">Report</a>' in body


def test_only_editors_see_and_may_use_the_full_model_button(app, client, login, seeded):
    login("viewer")
    assert "Run full model" not in page(client)
    assert client.post("/experiments/checkout/report/full-model").status_code == 403
    login("editor")
    assert "Run full model" in page(client)


def test_the_button_queues_a_fit_whose_results_appear_beside_the_conjugate_ones(app, db, client, login, seeded):
    get_runner(app).fit = fake_fit
    login("editor")
    response = client.post("/experiments/checkout/report/full-model")
    assert response.status_code == 302 and response.headers["Location"].endswith(
        "/experiments/checkout/report#full-model"
    )
    assert get_runner(app).run_pending() == 1  # what `expplatform worker` does
    body = page(client)
    assert 'Fit #1: <span class="status job-finished">finished</span>' in body
    assert "Diagnostics passed: max R-hat 1.002" in body
    # The snapshot it was fitted on, and a side-by-side row per stage x metric x treatment.
    assert "Fitted on the data of" in body and "control 300" in body
    table = body.split('class="compact side-by-side"')[1].split("</table>")[0]
    rows = re.findall(r"<tr>\s*<td>(\w+)</td><td>([\w ]+)</td><td>(\w+)</td>", table)
    assert rows == [(s, m, t) for s in STAGES for m in ("conversion", "mean rating") for t in ("bold", "plain")]
    with db.sessionmaker() as session:
        job = session.scalars(select(AnalysisJob)).one()
    fitted = job.result["stages"][1]["metrics"][0]["comparisons"][0]
    assert f"{fitted['relative_lift']['mean'] * 100:+.1f}%" in body
    assert "Run full model again" in body


def test_a_running_fit_hides_the_button_and_a_failed_one_shows_its_error(app, db, client, login, seeded):
    login("editor")
    with db.sessionmaker() as session:
        experiment_id = session.scalars(select(Experiment.id)).one()
    with db.write() as session:
        session.add(
            AnalysisJob(
                experiment_id=experiment_id,
                status="running",
                requested_by="user:x",
                params={"draws": 10, "chains": 1},
                worker="elsewhere",
                started_at=utcnow(),
                heartbeat_at=utcnow(),
            )
        )
    body = page(client)
    assert "job-running" in body and "Run full model" not in body
    with db.write() as session:
        job = session.scalars(select(AnalysisJob)).one()
        job.heartbeat_at = utcnow() - timedelta(hours=1)  # its worker died
    body = page(client)
    assert "job-failed" in body and "stopped responding" in body and "Run full model again" in body


def test_the_button_needs_a_csrf_token(database_url, tmp_path, make_user):
    app = make_test_app(database_url, tmp_path / "csrf", wtf_csrf_enabled=True, report_wait_seconds=float(WAIT))
    try:
        seed_journey(app, app.extensions["db"])
        client = app.test_client()
        with app.extensions["db"].write() as session:
            from expplatform.auth import create_user

            user = create_user(session, "ed@example.com", "correct horse battery", "editor")
        sign_in(client, app, user)
        assert client.post("/experiments/checkout/report/full-model").status_code == 400
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page(client)).group(1)
        get_runner(app).fit = fake_fit
        assert client.post("/experiments/checkout/report/full-model", data={"csrf_token": token}).status_code == 302
        assert get_runner(app).run_pending() == 1  # what `expplatform worker` does
    finally:
        app.extensions["report_cache"].slow.wait_idle(WAIT)
        app.extensions["db"].engine.dispose()


def test_a_part_still_computing_reloads_the_page_back_at_its_section(app, client, login, seeded, monkeypatch):
    """A large experiment's daily series or breakdown is computed in the background;
    the page refreshes itself (no script: the CSP allows none) until it is there, back
    at the section that waits, and the breakdown form lands at its results."""
    import threading

    from expplatform.reports import build

    release = threading.Event()
    real_series, real_segments = build.daily_series, build.segment_results

    def slow_series(*args, **kwargs):
        release.wait(WAIT)
        return real_series(*args, **kwargs)

    def slow_segments(*args, **kwargs):
        release.wait(WAIT)
        return real_segments(*args, **kwargs)

    monkeypatch.setattr(build, "daily_series", slow_series)
    monkeypatch.setattr(build, "segment_results", slow_segments)
    database = app.extensions["db"]
    monkeypatch.setattr(database, "settings", dataclasses.replace(database.settings, report_wait_seconds=0.0))
    login("viewer")
    waiting = page(client)
    assert "this page reloads itself until it is ready" in waiting
    assert re.search(
        r'<meta http-equiv="refresh" content="5; url=/experiments/checkout/report\?refresh=1#plots">', waiting
    )
    by_platform = page(client, "/experiments/checkout/report?segment=platform")
    assert "refresh=1#segments" in by_platform
    assert 'action="/experiments/checkout/report#segments"' in by_platform
    release.set()
    assert app.extensions["report_cache"].slow.wait_idle(WAIT)
    done = page(client, "/experiments/checkout/report?segment=platform&refresh=1")
    assert 'http-equiv="refresh"' not in done and re.findall(r"platform = (\w+)", done) == ["android", "ios", "web"]
