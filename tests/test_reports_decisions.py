"""Issue 12 on the page side: decisions an analyst can act on at any look.

One test (or a few) per rule of the issue: the decision and the anytime-valid interval
beside the Bayesian numbers, exploratory segments, no numbers where a stage has no
data, the full model refused without data, badges only where a call is made, one
meaning per rate, headline words from the decision, and the duration estimates."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from analysis import analyze, forecast, plan, segment_differences
from expplatform.aggregation import experiment_stats, segment_stats
from expplatform.cli import main
from expplatform.experiment_settings import experiment_settings
from expplatform.ingest import record_events
from expplatform.jobs import get_runner
from expplatform.models import AnalysisJob, Experiment
from expplatform.reports.decisions import has_outcomes

from .events_support import expose, make_experiment
from .openapi_check import checked
from .reports_support import event_of, fake_fit, seed_counts


def page(client, path) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def section(body: str, marker: str) -> str:
    return body.split(marker, 1)[1].split("</section>", 1)[0]


def stage_block(body: str, stage: str) -> str:
    lift_map = section(body, 'id="map-title"')
    return lift_map.split(f'data-stage="{stage}"', 1)[1].split('class="lm-stage', 1)[0]


def stats_of(db, key):
    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).where(Experiment.key == key)).one()
        return experiment_stats(session, experiment), *experiment_settings(experiment)


GAP = {
    # No event at all at awareness; the rest a clear funnel.
    "control": (400, {"browse": 240, "cart": 80, "purchase": 40}),
    "treatment": (400, {"browse": 240, "cart": 120, "purchase": 48}),
}
GAP_RATINGS = {"control": {"cart": [4, 3, 5] * 20}, "treatment": {"cart": [5, 4, 4] * 20}}


@pytest.fixture
def gap(app, db):
    seed_counts(app, db, "gap", GAP, ratings=GAP_RATINGS)
    return "gap"


# -- 1. the decision and the anytime-valid interval beside the Bayesian numbers ------------------


def test_the_call_and_its_anytime_valid_interval_stand_beside_the_bayesian_numbers(db, client, login, admin_api, gap):
    stats, prior, rule = stats_of(db, "gap")

    result = analyze(stats, prior=prior, rule=rule, seed=0)
    c = result.stage("cart").metric("conversion").comparison("treatment")
    body = checked(admin_api).get("/api/v1/experiments/gap/report").get_json()
    (call,) = body["decision"]["treatments"]
    assert call["decision"] == c.decision and call["decision_basis"] == c.decision_basis
    assert call["always_valid_interval"] == c.always_valid_interval.to_dict()
    # One treatment: the ship and harm budgets (5% each) make a 90% two-sided interval.
    assert call["always_valid_level"] == c.always_valid_level == pytest.approx(0.9)
    assert "anytime-valid 90% interval" in call["rests_on"]
    login("viewer")
    calls = section(page(client, "/experiments/gap/report"), 'id="calls-title"')
    row = calls.split('data-treatment="treatment"', 1)[1].split("</tr>", 1)[0]
    # The Bayesian numbers stay, the anytime-valid interval and the decision are beside them.
    lift, anytime = c.relative_lift, c.always_valid_interval
    assert f"[{lift.low * 100:+.1f}%, {lift.high * 100:+.1f}%]" in row and f"{c.p_better:.3f}" in row
    assert f"{c.expected_loss_relative * 100:.2f}%" in row
    assert f'<span class="anytime">[{anytime.low * 100:+.1f}%, {anytime.high * 100:+.1f}%]</span>' in row
    assert f'class="decision decision-{c.decision}"' in row
    assert "The call rests on the anytime-valid 90% interval of the relative lift" in row
    assert "credible interval says what the data suggest now and does not decide" in row


def test_the_terminal_table_names_what_the_call_rests_on(runner, gap):

    output = runner.invoke(main, ["report", "gap"], catch_exceptions=False).output
    assert "The call at cart conversion:" in output
    assert re.search(r"^  treatment: (keep running|ship|harmful); anytime-valid 90% interval [+-]", output, re.M)
    assert "The call rests on the anytime-valid 90% interval" in output
    assert max(len(line) for line in output.splitlines()) <= 140


# -- 3. no numbers where a stage has no outcome data -----------------------------------------------


def test_a_stage_without_outcome_data_shows_no_numbers(db, client, login, admin_api, gap):
    login("viewer")
    body = page(client, "/experiments/gap/report")
    awareness = stage_block(body, "awareness")
    assert awareness.count("No data at this stage") == 2 and "Other variants have outcomes" not in awareness
    for word in ("Conversion", "P(better)", "Exp. loss", "Lift", "0.0%", "evidence-strong", "evidence-better"):
        assert word not in awareness, word
    # Stages with data keep their numbers.
    assert "P(better)" in stage_block(body, "browse") and "Exp. loss" in stage_block(body, "cart")
    # The engine itself still has numbers for awareness (0% against 0%): the page hides them.
    stats, _prior, _rule = stats_of(db, "gap")
    assert not any(has_outcomes(stats.cells["awareness"][v]) for v in ("control", "treatment"))
    # No lift is drawn for it either.
    forest = body.split('<svg class="plot plot-forest"', 1)[1].split("</svg>", 1)[0]
    assert "browse" in forest and "awareness" not in forest
    # Nor is a stage without data the journey's largest gain or pain point.
    journey = section(body, 'id="journey-title"')
    assert "awareness" not in journey
    api = checked(admin_api).get("/api/v1/experiments/gap/report").get_json()
    assert api["decision"]["outcome_data"]["awareness"] == {"control": False, "treatment": False}
    assert api["decision"]["outcome_data"]["cart"] == {"control": True, "treatment": True}
    rows = list(csv.DictReader(io.StringIO(admin_api.get("/api/v1/experiments/gap/report.csv").get_data(as_text=True))))
    aware = [r for r in rows if r["stage"] == "awareness"]
    assert aware and all(r["has_data"] == "false" for r in aware)
    assert all(r["observed"] == r["p_better"] == r["expected_loss_relative"] == r["decision"] == "" for r in aware)
    assert all(r["exposed"] == "400" for r in aware)  # counts stay
    cart = [r for r in rows if r["stage"] == "cart" and r["metric"] == "conversion"]
    assert all(r["has_data"] == "true" and r["observed"] for r in cart)


def test_a_variant_without_data_where_the_control_has_some_gets_no_comparison(app, db, client, login):
    seed_counts(
        app,
        db,
        "half",
        {"control": (200, {"browse": 100, "cart": 40}), "treatment": (200, {"cart": 60})},
    )
    login("viewer")
    browse = stage_block(page(client, "/experiments/half/report"), "browse")
    treatment = browse.split('data-variant="treatment"', 1)[1]
    assert "No data at this stage" in treatment and "P(better)" not in treatment
    assert "Other variants have outcomes here: check this variant's event tracking." in treatment
    assert "50.0%" in browse.split('data-variant="treatment"', 1)[0]  # the control's own rate stays


# -- 4. the full model needs data ------------------------------------------------------------------


def test_the_full_model_is_refused_without_any_outcome_data(app, db, client, login, admin_api):
    with db.write() as session:
        experiment = make_experiment(session, "quiet")
        for i in range(40):
            expose(session, experiment, f"q{i}", ("control", "treatment")[i % 2])
    response = checked(admin_api).post("/api/v1/experiments/quiet/full-model", json={})
    assert response.status_code == 409
    assert (
        response.get_json()["error"] == "no_data"
        and "No variant has any outcome data" in (response.get_json()["message"])
    )
    login("editor")
    body = page(client, "/experiments/quiet/report")
    assert "Run full model" not in body and "Not offered: No variant has any outcome data" in body
    posted = client.post("/experiments/quiet/report/full-model")
    assert posted.status_code == 302
    assert "The full model was not started" in page(client, "/experiments/quiet/report")
    with db.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(AnalysisJob)) == 0


def test_the_full_model_reports_nothing_for_stages_without_data(app, db, client, login, admin_api, gap):
    get_runner(app).fit = fake_fit
    assert admin_api.post("/api/v1/experiments/gap/full-model", json={}).status_code == 202
    assert get_runner(app).run_pending() == 1
    login("editor")
    table = page(client, "/experiments/gap/report").split('class="compact side-by-side"')[1].split("</table>")[0]
    stages = re.findall(r"<tr>\s*<td>(\w+)</td><td>([\w ]+)</td>", table)
    assert {s for s, _ in stages} == {"browse", "cart", "purchase"}
    assert ("cart", "mean rating") in stages and ("purchase", "mean rating") not in stages  # no ratings there


# -- 5. badges only where a call is made -----------------------------------------------------------


def test_a_broken_guardrail_is_labelled_as_such_and_only_the_target_carries_badges(app, db, client, login):
    seed_counts(
        app,
        db,
        "guard",
        {
            "control": (1500, {"browse": 900, "cart": 150, "purchase": 120}),
            "treatment": (1500, {"browse": 900, "cart": 450, "purchase": 30}),
        },
    )
    login("viewer")
    body = page(client, "/experiments/guard/report")
    cart, purchase = stage_block(body, "cart"), stage_block(body, "purchase")
    assert 'class="decision decision-ship"' in cart
    assert "decision-harmful" not in purchase and 'class="decision' not in purchase
    assert 'class="guardrail guardrail-broken">Guardrail (conversion): broken' in purchase
    assert 'class="decision' not in stage_block(body, "browse")
    assert "Keep control: every treatment is called worse at cart or breaks a guardrail." in body


# -- 6. one rate, one meaning ----------------------------------------------------------------------


def test_the_lift_map_and_the_journey_show_the_same_observed_rate(db, client, login, gap):
    login("viewer")
    body = page(client, "/experiments/gap/report")
    stats, _prior, _rule = stats_of(db, "gap")
    journey = section(body, 'id="journey-title"')
    assert "End-to-end conversion, observed" in journey and "Estimated (95% credible)" in journey
    for variant in ("control", "treatment"):
        cell = stats.cells["purchase"][variant]
        rate = cell.converted / cell.exposed
        row = journey.split(f'data-journey-variant="{variant}"', 1)[1].split("</tr>", 1)[0]
        assert re.search(rf"<td>{rate * 100:.2f}%</td>", row), row
        lift_map_cell = stage_block(body, "purchase").split(f'data-variant="{variant}"', 1)[1]
        assert f"<dd>{rate * 100:.1f}%</dd>" in lift_map_cell


# -- 7. the headline's words come from the decision --------------------------------------------------


@pytest.mark.parametrize("level", ["0.8", "0.99"])
def test_a_ship_headline_shows_the_interval_it_rests_on_at_any_credible_level(app, db, client, login, level):
    seed_counts(
        app,
        db,
        "winner",
        {
            "control": (1500, {"browse": 900, "cart": 150, "purchase": 60}),
            "treatment": (1500, {"browse": 900, "cart": 300, "purchase": 120}),
        },
    )
    login("viewer")
    body = page(client, f"/experiments/winner/report?credible_level={level}")
    recommendation = section(body, 'aria-label="Recommendation"')
    summary = re.search(r'<p class="rec-summary">(.*?)</p>', recommendation).group(1)
    assert summary.startswith("Ship treatment: the peeking-safe rule calls it better at cart conversion")
    assert "credibly" not in summary
    stats, prior, rule = stats_of(db, "winner")

    c = analyze(stats, prior=prior, rule=rule, seed=0).stage("cart").metric("conversion").comparison("treatment")
    anytime = c.always_valid_interval
    assert anytime.low > 0
    assert (
        f"Anytime-valid 90% interval of the relative lift: <strong>[{anytime.low * 100:+.1f}%, "
        f"{anytime.high * 100:+.1f}%]</strong>" in recommendation
    )


# -- 2. segments are exploratory -----------------------------------------------------------------------


def _platform(variant, i):
    return {"platform": ("ios", "web", "android")[i % 3]}


def test_a_segment_view_makes_no_call_and_flags_a_segment_that_differs(app, db, client, login, admin_api):
    # ios: a huge lift; web and android: none. Per segment alone, ios would be 'ship'.
    exposed = 1800
    counts = {"control": (exposed, {"cart": 180}), "treatment": (exposed, {"cart": 0})}
    seed_counts(app, db, "seg", counts, stages=("browse", "cart"), target="cart", attributes=_platform)
    # Treatment converters: ios customers (i % 3 == 0) at 45%, the others at 10%.
    events, n_ios = [], exposed // 3
    with db.sessionmaker() as session:
        started = session.scalars(select(Experiment.started_at).where(Experiment.key == "seg")).one()
    for i in range(exposed):
        share = 0.45 if i % 3 == 0 else 0.10
        rank = (i // 3) / n_ios
        if rank < share:
            at = started + timedelta(hours=1, seconds=i)
            events.append(event_of("seg", f"treatment-{i}", "cart", at, "conversion"))
    settings = app.extensions["settings"]
    for start in range(0, len(events), settings.max_batch_events):
        assert not record_events(db, events[start : start + settings.max_batch_events], settings).rejected

    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).where(Experiment.key == "seg")).one()
        by_value = segment_stats(session, experiment, "platform")
        prior, rule = experiment_settings(experiment)

    assert analyze(by_value["ios"], prior=prior, rule=rule, seed=0).recommendation.action == "ship"
    expected = {d.segment: d for d in segment_differences(by_value, treatment="treatment", rule=rule)}
    assert expected["ios"].flagged and not expected["web"].flagged

    login("viewer")
    body = page(client, "/experiments/seg/report?segment=platform")
    segments = section(body, 'id="segments-title"')
    assert "exploratory" in segments and "Exploratory: 3 segments looked at" in segments
    assert 'class="decision' not in segments and "Ship" not in segments
    assert "Flagged: <strong>ios</strong> (treatment, conversion)" in segments
    ios = segments.split("platform = ios", 1)[1].split("</table>", 1)[0]
    assert '<span class="flag">flagged:' in ios
    assert '<span class="flag">' not in segments.split("platform = web", 1)[1].split("</table>", 1)[0]

    api = checked(admin_api).get("/api/v1/experiments/seg/report?segment=platform").get_json()["segments"]
    assert api["exploratory"] is True and api["looked_at"] == 3
    flagged = {(d["segment"], d["metric"]) for d in api["differences"] if d["flagged"]}
    assert flagged == {("ios", "conversion")}
    assert all(v["result"]["recommendation"] is None for v in api["values"])
    rows = csv.DictReader(
        io.StringIO(admin_api.get("/api/v1/experiments/seg/report.csv?segment=platform").get_data(as_text=True))
    )
    segment_rows = [r for r in rows if r["segment"]]
    assert segment_rows and all(r["decision"] == "" and r["role"] == "exploratory" for r in segment_rows)


# -- 8. planning -----------------------------------------------------------------------------------------


def test_a_running_experiment_forecasts_the_days_to_a_decision(app, db, client, login, admin_api, gap):
    body = checked(admin_api).get("/api/v1/experiments/gap/report").get_json()["forecast"]
    stats, _prior, rule = stats_of(db, "gap")
    # 400 per arm over the two days since the start.
    assert body["measured_over_days"] == pytest.approx(2.0, abs=0.01)
    assert body["per_arm_per_day"] == pytest.approx(200, rel=0.01)
    cart = stats.cells["cart"]
    expected = forecast(
        exposed_t=cart["treatment"].exposed,
        converted_t=cart["treatment"].converted,
        exposed_c=cart["control"].exposed,
        converted_c=cart["control"].converted,
        per_arm_per_day=float(f"{body['per_arm_per_day']:.2g}"),
        arms=2,
        rule=rule,
        horizon_days=90,
    )
    (got,) = body["treatments"]
    assert got == {"treatment": "treatment", **expected.to_dict()}
    login("viewer")
    text = section(page(client, "/experiments/gap/report"), 'id="calls-title"')
    if expected.decided_now:
        assert "already decided" in text
    elif expected.more_days is not None:
        assert f"about {expected.more_days} more day" in text and "at the current rate" in text
        assert f"chance of a decision by then {expected.p_decision_by_then * 100:.0f}%" in text
    else:
        assert "probably not within 90 days" in text


def test_a_stopped_experiment_has_no_forecast(app, db, admin_api):
    seed_counts(app, db, "done", GAP, status="stopped")
    assert checked(admin_api).get("/api/v1/experiments/done/report").get_json()["forecast"] is None


def test_the_experiment_page_estimates_the_duration_from_a_baseline_a_lift_and_traffic(app, db, client, login, gap):
    login("viewer")
    body = page(client, "/experiments/gap?baseline=10&lift=15&per_day=800")
    assert "and its anytime-valid interval lies above 0" in body  # the rule as it now is
    panel = section(body, 'id="duration-title"')
    expected = plan(baseline=0.10, lift=0.15, per_arm_per_day=400, arms=2)
    assert f"About <strong>{expected.median_days} days</strong>" in panel
    assert f"({expected.median_customers_per_arm:,} customers per variant)" in panel
    assert f"have decided by day {expected.days_for_power}" in panel
    # Without the form: traffic and baseline prefilled from the running experiment.
    plain = section(page(client, "/experiments/gap"), 'id="duration-title"')
    assert 'name="per_day" inputmode="decimal" value="400"' in plain  # 800 customers over two days
    assert 'name="baseline" inputmode="decimal" value="20"' in plain  # the control's 80 of 400 at cart
    assert "About <strong>" not in plain


@pytest.mark.parametrize(
    "query, field",
    [
        ("baseline=0&lift=10&per_day=100", "baseline"),
        ("baseline=10&lift=0&per_day=100", "lift"),
        ("baseline=60&lift=80&per_day=100", "lift"),
        ("baseline=10&lift=10&per_day=-5", "per_day"),
        ("baseline=ten&lift=10&per_day=100", "baseline"),
    ],
)
def test_a_bad_duration_form_names_the_field(app, db, client, login, query, field):
    with db.write() as session:
        make_experiment(session, "draft", status="draft")
    login("viewer")
    panel = section(page(client, f"/experiments/draft?{query}"), 'id="duration-title"')
    assert f'data-field="{field}"' in panel and "About <strong>" not in panel
