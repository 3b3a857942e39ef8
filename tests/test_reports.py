"""The report as JSON and CSV: its numbers are the analysis of the stored data, its
options, warnings, daily series and segments, access rules, full-model endpoints,
and the caches that keep it fast."""

from __future__ import annotations

import ast
import csv
import io
import json
import threading
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from analysis import FAST_DRAWS, analyze
from analysis.types import DecisionRule, Prior
from expplatform import reports
from expplatform.aggregation import daily_stats, data_quality, experiment_stats, segment_stats, stage_questions
from expplatform.ingest import record_events
from expplatform.jobs import get_runner
from expplatform.models import Experiment
from expplatform.reports import build
from expplatform.reports.background import Pending, SlowParts
from expplatform.reports.options import SEED
from expplatform.reports.render import CSV_COLUMNS, exploratory_result, with_questions
from expplatform.reports.series import SeriesPoint, series_points, target_only, with_live_point

from .events_support import expose, iso, make_experiment
from .openapi_check import checked
from .reports_support import STAGES, START, WAIT, fake_fit, seed_journey


def roundtrip(value):
    return json.loads(json.dumps(value))


def analysed(stats, experiment, **kwargs):
    """The JSON the report gives for ``analyze(stats, **kwargs)``: the analysis, each
    stage with the rating question the experiment measures there."""
    return roundtrip(with_questions(analyze(stats, **kwargs).to_dict(), stage_questions(experiment)))


def current(db, key="checkout"):
    """(session, experiment, whole stats, prior, rule) as stored now."""
    session = db.sessionmaker()
    experiment = session.scalars(select(Experiment).where(Experiment.key == key)).one()
    stats = experiment_stats(session, experiment)
    prior, rule = Prior.from_mapping(experiment.prior), DecisionRule.from_mapping(experiment.decision)
    return session, experiment, stats, prior, rule


def test_the_json_report_is_the_analysis_of_the_stored_data(db, admin_api, seeded):
    response = checked(admin_api).get("/api/v1/experiments/checkout/report")
    assert response.status_code == 200
    body = response.get_json()
    session, experiment, stats, prior, rule = current(db)
    # The stored statistics are what the seeding sent...
    assert body["exposed"] == seeded.exposed
    for stage in STAGES:
        for variant in seeded.exposed:
            cell = stats.cells[stage][variant]
            assert cell.converted == seeded.converted.get((stage, variant), 0)
            histogram = Counter(seeded.rated.get((stage, variant), []))
            assert cell.ratings == tuple(histogram[r] for r in range(1, 6))
    # ...and the report's numbers are the analysis of them, exactly, each stage with the
    # question its ratings answer (here the implicit journey's 1-5 question per stage).
    assert body["result"] == analysed(stats, experiment, prior=prior, rule=rule, seed=SEED)
    assert [(s["stage"], s["scale"], s["question"]) for s in body["result"]["stages"]] == [
        (
            stage,
            {"min": 1, "max": 5},
            {
                "key": f"{stage}-rating",
                "text": f"How would you rate the {stage} step? (1-5)",
                "scale": {"min": 1, "max": 5},
            },
        )
        for stage in STAGES
    ]
    assert body["experiment"]["journey"] == experiment.journey.key
    assert body["settings"] == {"prior": roundtrip(vars(prior)), "decision": roundtrip(vars(rule)), "seed": 0}
    assert body["experiment"]["stages"] == list(STAGES) and body["experiment"]["target_stage"] == "cart"
    assert [v["key"] for v in body["experiment"]["variants"]] == ["control", "bold", "plain"]
    assert body["warnings"] == [] and body["recorded_attributes"] == ["persona", "platform"]
    assert body["segments"] is None and body["full_model"] is None
    session.close()


def test_the_experiments_own_settings_and_a_credible_level_override_are_used(app, db, admin_api):
    seed_journey(app, db, key="tuned")
    with db.write() as session:
        experiment = session.scalars(select(Experiment).where(Experiment.key == "tuned")).one()
        experiment.prior = {"conversion_alpha": 3.0, "conversion_beta": 7.0}
        experiment.decision = {"ship_probability": 0.9, "min_exposed": 50}
    wide = checked(admin_api).get("/api/v1/experiments/tuned/report").get_json()
    narrow = checked(admin_api).get("/api/v1/experiments/tuned/report?credible_level=0.8").get_json()
    session, experiment, stats, prior, rule = current(db, "tuned")
    assert prior == Prior(conversion_alpha=3.0, conversion_beta=7.0) and rule.ship_probability == 0.9
    assert wide["result"] == analysed(stats, experiment, prior=prior, rule=rule, seed=0)
    assert narrow["result"] == analysed(stats, experiment, prior=prior, rule=replace(rule, credible_level=0.8), seed=0)
    assert narrow["result"]["credible_level"] == 0.8 and narrow["settings"]["decision"]["credible_level"] == 0.8
    for w_stage, n_stage in zip(wide["result"]["stages"], narrow["result"]["stages"], strict=True):
        for w_metric, n_metric in zip(w_stage["metrics"], n_stage["metrics"], strict=True):
            for w, n in zip(w_metric["comparisons"], n_metric["comparisons"], strict=True):
                if w["relative_lift"] is not None:
                    assert (
                        n["relative_lift"]["high"] - n["relative_lift"]["low"]
                        < w["relative_lift"]["high"] - w["relative_lift"]["low"]
                    )
    session.close()


@pytest.mark.parametrize(
    "query, field",
    [
        ("segment=no%20spaces", "segment"),
        ("segment=" + "x" * 65, "segment"),
        ("credible_level=high", "credible_level"),
        ("credible_level=1.5", "credible_level"),
        ("credible_level=0.2", "credible_level"),
        ("full_model=maybe", "full_model"),
    ],
)
def test_bad_options_are_400_with_the_field(admin_api, seeded, query, field):
    for path in ("report", "report.csv"):
        response = checked(admin_api).get(f"/api/v1/experiments/checkout/{path}?{query}")
        assert response.status_code == 400
        assert response.get_json()["error"] == "validation_failed" and set(response.get_json()["fields"]) == {field}


def test_an_unknown_experiment_is_404_json(admin_api):
    for path in ("report", "report.csv", "full-model", "full-model/1"):
        response = checked(admin_api).get(f"/api/v1/experiments/nope/{path}")
        assert response.status_code == 404 and response.get_json()["error"] == "experiment_not_found"


def test_who_may_read_reports_and_queue_fits(app, client, login, client_key, admin_key, seeded):
    for path in ("/api/v1/experiments/checkout/report", "/api/v1/experiments/checkout/report.csv"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {client_key}"}).status_code == 403
        assert client.get(path, headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
    fit = "/api/v1/experiments/checkout/full-model"
    assert client.post(fit).status_code == 401
    assert client.post(fit, headers={"Authorization": f"Bearer {client_key}"}).status_code == 403
    login("viewer")
    assert client.get("/api/v1/experiments/checkout/report").status_code == 200
    assert client.post(fit, json={}).status_code == 403
    login("editor")
    # A session may queue only with a JSON body, which a cross-site form cannot send.
    form = client.post(fit, data={"draws": "100"})
    assert form.status_code == 400 and form.get_json()["error"] == "invalid_content_type"
    get_runner(app).fit = lambda stats, params, **kwargs: {"fake": True}
    queued = client.post(fit, json={"draws": 200})
    assert queued.status_code == 202 and queued.get_json()["params"]["draws"] == 200


def parse_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def _number(value: str):
    return None if value == "" else float(value)


def test_the_csv_has_one_row_per_stage_variant_metric_matching_the_analysis(db, admin_api, seeded):
    response = checked(admin_api).get("/api/v1/experiments/checkout/report.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="checkout-report.csv"'
    rows = parse_csv(response.data)
    assert tuple(rows[0]) == CSV_COLUMNS
    session, _experiment, stats, prior, rule = current(db)
    result = analyze(stats, prior=prior, rule=rule, seed=0)
    metrics = ("conversion", "mean_rating", "top_box")  # no NPS on a 1-5 scale
    assert [(r["stage"], r["metric"], r["variant"]) for r in rows] == [
        (s, m, v) for s in STAGES for m in metrics for v in ("control", "bold", "plain")
    ]
    for row in rows:
        metric = result.stage(row["stage"]).metric(row["metric"])
        arm = metric.arm(row["variant"])
        cell = stats.cells[row["stage"]][row["variant"]]
        assert int(row["exposed"]) == cell.exposed
        assert int(row["count"]) == (cell.converted if row["metric"] == "conversion" else sum(cell.ratings))
        assert _number(row["observed"]) == arm.observed and _number(row["posterior_low"]) == arm.posterior.low
        assert _number(row["p_best"]) == arm.p_best
        if row["is_control"] == "true":
            assert row["variant"] == "control" and row["relative_lift"] == row["p_better"] == row["decision"] == ""
            continue
        comparison = metric.comparison(row["variant"])
        assert _number(row["relative_lift"]) == comparison.relative_lift.mean
        assert (_number(row["relative_lift_low"]), _number(row["relative_lift_high"])) == (
            comparison.relative_lift.low,
            comparison.relative_lift.high,
        )
        assert _number(row["absolute_difference"]) == comparison.absolute_difference.mean
        assert _number(row["p_better"]) == comparison.p_better
        assert _number(row["expected_loss"]) == comparison.expected_loss
        # A decision only where a call is made: the stage under test's conversion.
        deciding = row["stage"] == "cart" and row["metric"] == "conversion"
        assert (row["decision"] or None) == (comparison.decision if deciding else None)
        assert row["role"] == (
            "decides"
            if deciding
            else "balance_check"
            if row["stage"] == "browse" and row["metric"] == "conversion"
            else "guardrail"
            if row["metric"] in ("conversion", "mean_rating")
            else "reported"
        )
        assert row["has_data"] == "true"
        if row["metric"] in ("conversion", "mean_rating"):
            anytime = comparison.always_valid_interval
            assert (_number(row["always_valid_low"]), _number(row["always_valid_high"])) == (anytime.low, anytime.high)
            assert row["always_valid_scale"] == comparison.always_valid_scale
            assert _number(row["always_valid_level"]) == comparison.always_valid_level
            assert row["decision_basis"] == comparison.decision_basis
            assert row["guardrail"] == ("holds" if row["role"] == "guardrail" else "")
    session.close()


def test_segments_split_the_report_by_a_recorded_attribute(db, admin_api, seeded):
    body = checked(admin_api).get("/api/v1/experiments/checkout/report?segment=platform").get_json()
    segments = body["segments"]
    assert segments["attribute"] == "platform" and segments["status"] == "ready"
    assert sorted(s["value"] for s in segments["values"]) == ["android", "ios", "web"]
    assert sum(s["exposed"] for s in segments["values"]) == sum(seeded.exposed.values())
    session, experiment, _stats, prior, rule = current(db)
    by_value = segment_stats(session, experiment, "platform")
    for segment in segments["values"]:
        expected = analyze(by_value[segment["value"]], prior=prior, rule=rule, seed=0).to_dict()
        # A segment's analysis without its calls: exploratory, no ship headline of its own.
        assert segment["result"]["recommendation"] is None and expected["recommendation"]["summary"]
        decisions = [
            c["decision"] for st in segment["result"]["stages"] for m in st["metrics"] for c in m["comparisons"]
        ]
        assert set(decisions) == {None}
        assert segment["result"] == roundtrip(with_questions(exploratory_result(expected), stage_questions(experiment)))
    assert segments["exploratory"] is True and segments["looked_at"] == 3 and segments["stage"] == "cart"
    # The CSV follows the whole experiment's rows with each segment's.
    rows = parse_csv(checked(admin_api).get("/api/v1/experiments/checkout/report.csv?segment=platform").data)
    assert Counter(r["segment"] for r in rows) == {
        "": 27,
        "platform=android": 27,
        "platform=ios": 27,
        "platform=web": 27,
    }
    ios = [r for r in rows if r["segment"] == "platform=ios" and r["metric"] == "conversion" and r["stage"] == "cart"]
    expected = analyze(by_value["ios"], prior=prior, rule=rule, seed=0).stage("cart").metric("conversion")
    assert [_number(r["observed"]) for r in ios] == [arm.observed for arm in expected.arms]
    session.close()


def test_customers_without_the_attribute_form_their_own_segment(app, db, admin_api):
    with db.write() as session:
        experiment = make_experiment(session, "bare")
        for i in range(20):
            expose(
                session,
                experiment,
                f"b{i}",
                ("control", "treatment")[i % 2],
                attributes={"tier": "gold"} if i < 6 else {},
            )
    body = admin_api.get("/api/v1/experiments/bare/report?segment=tier").get_json()
    assert {s["value"]: s["exposed"] for s in body["segments"]["values"]} == {None: 14, "gold": 6}
    rows = parse_csv(admin_api.get("/api/v1/experiments/bare/report.csv?segment=tier").data)
    assert {r["segment"] for r in rows} == {"", "tier=gold", "tier=(not recorded)"}


def test_the_daily_series_is_the_cumulative_analysis_of_each_day(db, admin_api, seeded):
    body = checked(admin_api).get("/api/v1/experiments/checkout/report").get_json()
    series = body["time_series"]
    assert series["status"] == "ready" and series["stage"] == "cart" and series["metric"] == "conversion"
    days = sorted({p["day"] for p in series["points"]})
    assert days == ["2024-05-01", "2024-05-02", "2024-05-03"]
    session, experiment, _stats, prior, rule = current(db)
    by_day = dict(daily_stats(session, experiment))
    for point in series["points"]:
        day_stats = by_day[date.fromisoformat(point["day"])]
        target = target_only(day_stats)
        comparison = (
            analyze(target, prior=prior, rule=rule, seed=0, draws=FAST_DRAWS, max_p_better_error=None)
            .stage("cart")
            .metric("conversion")
            .comparison(point["variant"])
        )
        assert point["relative_lift"] == roundtrip(comparison.relative_lift.to_dict())
        assert point["p_better"] == comparison.p_better
        assert point["exposed"] == day_stats.cells["cart"][point["variant"]].exposed
    # Cumulative: the exposed count grows to the whole experiment's on the last day.
    bold = [p["exposed"] for p in series["points"] if p["variant"] == "bold"]
    assert bold == sorted(bold) and bold[-1] == seeded.exposed["bold"]
    # P(better) of conversion is exact, so the last point agrees with the full analysis.
    last = [p for p in series["points"] if p["day"] == days[-1]]
    full = {
        c["treatment"]: c
        for m in body["result"]["stages"][1]["metrics"]
        if m["metric"] == "conversion"
        for c in m["comparisons"]
    }
    for point in last:
        assert point["p_better"] == pytest.approx(full[point["variant"]]["p_better"], abs=1e-9)
    session.close()


def test_without_data_the_report_says_so_and_has_no_series(app, db, admin_api):
    with db.write() as session:
        make_experiment(session, "empty")
    body = checked(admin_api).get("/api/v1/experiments/empty/report").get_json()
    assert body["result"]["status"] == "no_exposures"
    assert body["result"]["recommendation"]["action"] == "not_enough_data"
    assert body["time_series"]["points"] == [] and body["exposed"] == {"control": 0, "treatment": 0}
    assert [w["code"] for w in body["warnings"]] == ["not_enough_data"]
    assert admin_api.get("/api/v1/experiments/empty/report.csv").status_code == 200


# -- warnings ---------------------------------------------------------------------------------

T = START


def _balanced(session, experiment, n=240, **kwargs):
    for i in range(n):
        expose(session, experiment, f"w{i}", ("control", "treatment")[i % 2], exposed_at=T, **kwargs)


def _srm(app, db):
    with db.write() as session:
        experiment = make_experiment(session, "warn")
        for i in range(400):
            expose(session, experiment, f"w{i}", "control" if i % 4 else "treatment", exposed_at=T)


def _mismatch(app, db):
    with db.write() as session:
        experiment = make_experiment(session, "warn")
        _balanced(session, experiment)
        expose(session, experiment, "moved", "treatment", exposed_at=T, mismatches=3)
        expose(session, experiment, "moved2", "control", exposed_at=T, mismatches=1)


def _send(app, db, events):
    result = record_events(db, events, app.extensions["settings"])
    assert result.accepted == len(events) and not result.rejected


def _unmatched(app, db):
    with db.write() as session:
        _balanced(session, make_experiment(session, "warn", started_at=datetime.now(UTC) - timedelta(days=1)))
    _send(
        app,
        db,
        [
            {"event_id": "u1", "customer_id": "stranger", "stage": "purchase", "type": "conversion"},
            {
                "event_id": "u2",
                "customer_id": "stranger2",
                "stage": "purchase",
                "type": "conversion",
                "experiment": "warn",
            },
        ],
    )


def _before(app, db):
    with db.write() as session:
        _balanced(session, make_experiment(session, "warn"))
    _send(
        app,
        db,
        [
            {
                "event_id": "b1",
                "customer_id": "w1",
                "stage": "purchase",
                "type": "conversion",
                "timestamp": iso(T - timedelta(hours=1)),
            }
        ],
    )


def _after_stop(app, db):
    with db.write() as session:
        _balanced(session, make_experiment(session, "warn", status="stopped", stopped_at=T + timedelta(days=1)))
    _send(
        app,
        db,
        [
            {
                "event_id": "a1",
                "customer_id": "w1",
                "stage": "purchase",
                "type": "conversion",
                "timestamp": iso(T + timedelta(days=2)),
            }
        ],
    )


def _forced(app, db):
    with db.write() as session:
        experiment = make_experiment(session, "warn")
        _balanced(session, experiment)
        expose(session, experiment, "qa-1", "treatment", exposed_at=T, forced=True)
    _send(
        app,
        db,
        [
            {
                "event_id": "f1",
                "customer_id": "qa-1",
                "stage": "purchase",
                "type": "conversion",
                "timestamp": iso(T + timedelta(minutes=1)),
            }
        ],
    )


def _small(app, db):
    with db.write() as session:
        _balanced(session, make_experiment(session, "warn"), n=60)


WARNINGS = {
    "sample_ratio_mismatch": (_srm, "Sample-ratio mismatch"),
    "multiple_exposures": (
        _mismatch,
        "2 customers would since have been assigned another variant than the one recorded (4 times in all)",
    ),
    "unmatched_events": (_unmatched, "2 events at this experiment's stages matched no exposure (purchase: 2)"),
    "events_before_exposure": (
        _before,
        "1 event happened before the customer's exposure (purchase: 1) and is not counted",
    ),
    "events_after_stop": (_after_stop, "1 event arrived after the experiment stopped and is not counted"),
    "forced_customers_excluded": (_forced, "1 forced (QA) customer and their 1 event are excluded"),
    "not_enough_data": (_small, "control has 30, treatment has 30 exposed customers; no decision is made below 100"),
}


@pytest.mark.parametrize("code", WARNINGS)
def test_each_warning_appears_when_its_condition_holds(app, db, admin_api, code):
    build, message = WARNINGS[code]
    build(app, db)
    body = checked(admin_api).get("/api/v1/experiments/warn/report").get_json()
    assert [w["code"] for w in body["warnings"]] == [code]
    assert message in body["warnings"][0]["message"]


def test_a_clean_experiment_has_no_warnings(admin_api, seeded):
    assert admin_api.get("/api/v1/experiments/checkout/report").get_json()["warnings"] == []


def test_data_quality_reads_flagged_exposures_through_the_partial_index(db, seeded):
    session, experiment, *_ = current(db)
    from sqlalchemy import func, or_, true

    from expplatform.models import Exposure

    statement = select(func.count()).where(
        Exposure.experiment_id == experiment.id, or_(Exposure.forced == true(), Exposure.mismatches > 0)
    )
    compiled = str(statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    if session.get_bind().dialect.name == "sqlite":
        plan = " ".join(str(row) for row in session.execute(text("EXPLAIN QUERY PLAN " + compiled)))
    else:
        session.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: ask whether the index *can* serve
        plan = " ".join(str(row) for row in session.execute(text("EXPLAIN " + compiled)))
    assert "ix_exposures_flagged" in plan, plan
    assert data_quality(session, experiment).forced_customers == 0
    session.close()


# -- caches and the slow parts ------------------------------------------------------------------


def test_a_report_whose_data_did_not_move_is_not_analysed_again(app, db, admin_api, seeded, monkeypatch):
    calls: list[int] = []
    real = build.analyze

    def counting(stats, **kwargs):  # the whole report's analysis (series points have their own)
        calls.append(1)
        return real(stats, **kwargs)

    monkeypatch.setattr(build, "analyze", counting)
    first = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    second = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    assert len(calls) == 1 and first["result"] == second["result"]
    _send(
        app,
        db,
        [
            {
                "event_id": "new-1",
                "customer_id": "u0",
                "stage": "purchase",
                "type": "conversion",
                "timestamp": iso(START + timedelta(days=3)),
            }
        ],
    )
    third = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    assert len(calls) == 2 and third["result"] != first["result"]


def test_slow_parts_are_computed_in_the_background_and_reused_while_fresh():
    slow = SlowParts(refresh=3600)
    release = threading.Event()
    runs: list[str] = []

    def compute(value):
        def run():
            assert release.wait(WAIT)
            runs.append(value)
            return value

        return run

    assert slow.get("k", 1, compute("first"), wait=0).status == "computing"
    # One computation at a time, and only the request that started it waits for it.
    assert slow.get("k", 1, compute("again"), wait=WAIT).status == "computing"
    release.set()
    assert slow.wait_idle(WAIT)
    ready = slow.get("k", 1, compute("unused"), wait=0)
    assert (ready.status, ready.value, ready.version) == ("ready", "first", 1) and runs == ["first"]
    # New data within the refresh interval: the last value is shown, nothing recomputed.
    assert slow.get("k", 2, compute("newer"), wait=0).value == "first" and runs == ["first"]


def test_a_stale_slow_part_is_shown_while_it_is_recomputed():
    slow = SlowParts(refresh=0)
    assert slow.get("k", 1, lambda: "v1", wait=WAIT).value == "v1"
    release = threading.Event()

    def newer():
        assert release.wait(WAIT)
        return "v2"

    assert slow.get("k", 2, newer, wait=WAIT).value == "v1"  # stale, without waiting
    release.set()
    assert slow.wait_idle(WAIT)
    assert slow.get("k", 2, lambda: "unused", wait=0).value == "v2"


def test_a_failing_slow_part_says_failed_and_is_tried_again():
    slow = SlowParts(refresh=3600)

    def broken():
        raise RuntimeError("database went away")

    assert slow.get("k", 1, broken, wait=WAIT).status == "failed"
    assert slow.get("k", 1, lambda: "ok", wait=WAIT).value == "ok"


def test_the_series_point_of_today_comes_from_the_live_data(db, seeded):
    session, _experiment, stats, prior, rule = current(db)
    older = Pending(
        "ready",
        (
            SeriesPoint(date(2024, 5, 1), "bold", 1, 1, None, 0.5),
            SeriesPoint(date(2024, 5, 9), "bold", 2, 2, None, 0.5),
        ),
        version="old",
    )
    now = datetime(2024, 5, 9, 12, tzinfo=UTC)
    live = with_live_point(older, "new", stats, prior, rule, now)
    assert [p.day for p in live.value] == [date(2024, 5, 1), date(2024, 5, 9), date(2024, 5, 9)]
    today = {p.variant: p for p in live.value[1:]}
    expected = series_points(now.date(), stats, prior, rule)
    assert today == {p.variant: p for p in expected} and today["bold"].exposed == seeded.exposed["bold"]
    assert with_live_point(older, "old", stats, prior, rule, now) is older  # up to date: untouched
    session.close()


# -- full model through the API -----------------------------------------------------------------


def test_a_fit_is_queued_run_and_shown_in_the_report(app, admin_api, seeded):
    get_runner(app).fit = fake_fit
    api = checked(admin_api)
    queued = api.post("/api/v1/experiments/checkout/full-model", json={"draws": 300, "chains": 2, "seed": 4})
    assert queued.status_code == 202
    job = queued.get_json()
    assert job["status"] == "queued" and job["params"] == {"draws": 300, "tune": 1000, "chains": 2, "seed": 4}
    assert queued.headers["Location"].endswith(f"/api/v1/experiments/checkout/full-model/{job['id']}")
    assert get_runner(app).run_pending() == 1  # what `expplatform worker` does
    done = api.get(f"/api/v1/experiments/checkout/full-model/{job['id']}").get_json()
    assert done["status"] == "finished" and done["result"]["method"] == "hierarchical"
    assert done["snapshot"]["exposed"] == seeded.exposed
    assert api.get("/api/v1/experiments/checkout/full-model").get_json()["jobs"] == [done]
    report = api.get("/api/v1/experiments/checkout/report").get_json()
    assert report["full_model"] == done
    assert api.get("/api/v1/experiments/checkout/report?full_model=false").get_json()["full_model"] is None
    assert api.get("/api/v1/experiments/checkout/full-model/999").status_code == 404


def test_queueing_while_a_fit_is_active_returns_it(app, admin_api, seeded):
    release = threading.Event()

    def held(stats, params, **kwargs):
        assert release.wait(WAIT)
        return {}

    get_runner(app).fit = held
    first = checked(admin_api).post("/api/v1/experiments/checkout/full-model")
    again = checked(admin_api).post("/api/v1/experiments/checkout/full-model")
    release.set()
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["id"] == again.get_json()["id"]


@pytest.mark.parametrize("body", [{"draws": 5}, {"chains": "four"}, {"cores": 2}, [1, 2]])
def test_bad_fit_options_are_400(admin_api, seeded, body):
    response = checked(admin_api).post("/api/v1/experiments/checkout/full-model", json=body)
    assert response.status_code == 400 and "error" in response.get_json()


def test_an_attribute_with_too_many_values_is_a_400_and_a_message_on_the_page(app, db, admin_api, client, login):
    with db.write() as session:
        experiment = make_experiment(session, "many")
        for i in range(102):
            expose(session, experiment, f"m{i}", ("control", "treatment")[i % 2], attributes={"zip": f"{i:05d}"})
    response = checked(admin_api).get("/api/v1/experiments/many/report?segment=zip")
    assert response.status_code == 400 and "more than 100 distinct values" in response.get_json()["fields"]["segment"]
    login("viewer")
    page = client.get("/experiments/many/report?segment=zip").get_data(as_text=True)
    assert "Ignored: segment: has more than 100 distinct values" in page and 'class="segment-title"' not in page


def test_the_statistics_handed_to_the_analysis_are_plain_integers(db, seeded):
    """PostgreSQL sums BIGINT counters as NUMERIC (Decimal in Python), which the
    analysis and the stored fit snapshots (JSON) must never see."""
    session, experiment, stats, *_ = current(db)
    series = [s for _, s in daily_stats(session, experiment)]
    segments = list(segment_stats(session, experiment, "platform").values())
    for each in [stats, *series, *segments]:
        for cells in each.cells.values():
            for cell in cells.values():
                assert {type(cell.exposed), type(cell.converted), *map(type, cell.ratings)} == {int}
    session.close()


# -- the package's layering ----------------------------------------------------------------------

LAYERS = (
    "options",
    "background",
    "latest",
    "series",
    "warnings",
    "build",
    "decisions",
    "exploratory",
    "planning",
    "views",
    "figures",
    "render",
    "table",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, dotted name) of every import in a module: level 1 is this package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module is None:
                found += [(node.level, alias.name) for alias in node.names]
            else:
                found.append((node.level, node.module))
    return found


def test_report_modules_import_only_down_the_data_flow():
    """Each module of the package imports only the ones before it in LAYERS, and
    nothing of the fit runner (jobs) or the web and API edges."""
    package = Path(reports.__file__).parent
    assert sorted(p.stem for p in package.glob("*.py")) == sorted((*LAYERS, "__init__"))
    for index, name in enumerate(LAYERS):
        for level, imported in _imports(package / f"{name}.py"):
            top = imported.split(".")[0]
            if level == 1:
                assert top in LAYERS[:index], f"reports.{name} imports reports.{top}, not before it"
            elif level == 2 or imported.startswith("expplatform."):
                outside = imported.removeprefix("expplatform.").split(".")[0]
                assert outside not in {"jobs", "api", "web", "reports", "cli"}, f"reports.{name} imports {imported}"
            else:
                assert level == 0, f"reports.{name}: import {'.' * level}{imported} leaves expplatform"
