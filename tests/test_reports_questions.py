"""Reports of an experiment whose stages ask different rating questions, or none:
each stage's ratings are its own question's, on its own scale, in the JSON, the CSV,
the page and the terminal table; a stage without a question has conversion only; NPS
where the question is 0-10. Seeded through the events API (ratings naming their
question, as client apps send them) and as the outcome rows ingest keeps, on every
test database."""

from __future__ import annotations

import csv
import io
import json
import re
from statistics import mean

import pytest
from sqlalchemy import select

from analysis import analyze
from analysis.types import Scale
from expplatform.aggregation import experiment_stats, segment_stats, stage_questions
from expplatform.cli import main
from expplatform.experiment_settings import experiment_settings
from expplatform.jobs import get_runner
from expplatform.models import AnalysisJob, Experiment
from expplatform.reports.render import with_questions

from .openapi_check import checked
from .reports_support import MEASURED, QUESTION_STAGES, QUESTIONS, fake_fit, seed_questions

VARIANTS = ("control", "treatment")
SCALES = {"browse": None, "purchase": Scale(1, 5), "retention": None, "advocacy": Scale(0, 10)}
METRICS = {
    "browse": ["conversion"],
    "purchase": ["conversion", "mean_rating", "top_box"],
    "retention": ["conversion"],
    "advocacy": ["conversion", "mean_rating", "top_box", "nps"],
}


@pytest.fixture(params=["events", "rows"])
def mixed(request, app, db, client_api):
    return seed_questions(app, db, via=request.param, client_api=client_api)


DASH = "\N{EN DASH}"  # between a scale's ends, as the reports write it


def roundtrip(value):
    return json.loads(json.dumps(value))


def question_json(stage):
    key = MEASURED.get(stage)
    if key is None:
        return None
    _stage, text, lo, hi = QUESTIONS[key]
    return {"key": key, "text": text, "scale": {"min": lo, "max": hi}}


def nps(ratings):
    return 100.0 * (sum(r >= 9 for r in ratings) - sum(r <= 6 for r in ratings)) / len(ratings)


def stored(db):
    session = db.sessionmaker()
    experiment = session.scalars(select(Experiment).where(Experiment.key == "mixed")).one()
    return session, experiment


def test_the_seeding_is_what_the_test_expects(mixed):
    # Every stage has conversions, both measured questions ratings from both variants,
    # and the unmeasured retention question got ratings that must not count.
    assert all(mixed.converted.get((s, v)) for s in QUESTION_STAGES for v in VARIANTS)
    assert all(mixed.rated.get((s, v)) for s in MEASURED for v in VARIANTS)
    assert set(mixed.rated) == {(s, v) for s in MEASURED for v in VARIANTS}
    assert set(mixed.unmeasured) == {("retention", v) for v in VARIANTS}
    assert {r for ratings in mixed.rated.values() for r in ratings} >= {0, 6, 7, 9, 10}


def test_the_statistics_have_a_histogram_per_stage_on_its_own_scale(db, mixed):
    session, experiment = stored(db)
    stats = experiment_stats(session, experiment)
    assert {s: stats.scale_of(s) for s in QUESTION_STAGES} == SCALES
    for stage in QUESTION_STAGES:
        scale = SCALES[stage]
        for variant in VARIANTS:
            cell = stats.cells[stage][variant]
            assert (cell.exposed, cell.converted) == (mixed.exposed[variant], mixed.converted[(stage, variant)])
            if scale is None:
                assert cell.ratings == ()  # no question: no histogram, whatever was sent
            else:
                ratings = mixed.rated[(stage, variant)]
                assert cell.ratings == tuple(ratings.count(r) for r in range(scale.min, scale.max + 1))
    session.close()


def test_the_json_report_names_each_stages_question_and_counts_exactly(db, admin_api, mixed):
    response = checked(admin_api).get("/api/v1/experiments/mixed/report")
    assert response.status_code == 200
    body = response.get_json()
    stages = {s["stage"]: s for s in body["result"]["stages"]}
    assert list(stages) == list(QUESTION_STAGES)
    for stage, entry in stages.items():
        scale = SCALES[stage]
        assert entry["question"] == question_json(stage)
        assert entry["scale"] == (None if scale is None else {"min": scale.min, "max": scale.max})
        assert [m["metric"] for m in entry["metrics"]] == METRICS[stage]
        metrics = {m["metric"]: m for m in entry["metrics"]}
        for variant in VARIANTS:
            exposed, converted = mixed.exposed[variant], mixed.converted[(stage, variant)]
            conversion = next(a for a in metrics["conversion"]["arms"] if a["variant"] == variant)
            assert (conversion["n"], conversion["observed"]) == (exposed, pytest.approx(converted / exposed))
            if scale is None:
                continue
            ratings = mixed.rated[(stage, variant)]
            arms = {name: next(a for a in m["arms"] if a["variant"] == variant) for name, m in metrics.items()}
            assert arms["mean_rating"]["n"] == len(ratings)
            assert arms["mean_rating"]["observed"] == pytest.approx(mean(ratings))
            top = scale.top_box_min
            assert arms["top_box"]["observed"] == pytest.approx(sum(r >= top for r in ratings) / len(ratings))
            if "nps" in arms:
                assert arms["nps"]["observed"] == pytest.approx(nps(ratings))
    # No note about ratings where no question is asked.
    assert not [
        n for n in body["result"]["notes"] if n["stage"] in ("browse", "retention") and n["metric"] != "conversion"
    ]
    # The rest is the analysis of the stored statistics, with those scales.
    session, experiment = stored(db)
    prior, rule = experiment_settings(experiment)
    expected = analyze(experiment_stats(session, experiment), prior=prior, rule=rule, seed=0).to_dict()
    assert body["result"] == roundtrip(with_questions(expected, stage_questions(experiment)))
    assert body["experiment"]["journey"] == "mixed-journey"
    session.close()


def test_the_segments_have_the_same_questions(db, admin_api, mixed):
    body = checked(admin_api).get("/api/v1/experiments/mixed/report?segment=platform").get_json()
    segments = body["segments"]
    assert segments["status"] == "ready" and sorted(s["value"] for s in segments["values"]) == ["ios", "web"]
    for segment in segments["values"]:
        assert [s["question"] for s in segment["result"]["stages"]] == [question_json(s) for s in QUESTION_STAGES]
    # Compared with the rest at the stage under test: its conversion, and its question's mean rating.
    assert {d["metric"] for d in segments["differences"]} == {"conversion", "mean_rating"}
    session, experiment = stored(db)
    by_value = segment_stats(session, experiment, "platform")
    assert {v: s.scale_of("advocacy") for v, s in by_value.items()} == {"ios": Scale(0, 10), "web": Scale(0, 10)}
    whole = experiment_stats(session, experiment)
    assert by_value["ios"] + by_value["web"] == whole
    session.close()


def parse_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_the_csv_rows_name_their_question_scale_and_credible_level(admin_api, mixed):
    rows = parse_csv(checked(admin_api).get("/api/v1/experiments/mixed/report.csv?credible_level=0.9").data)
    assert [(r["stage"], r["metric"], r["variant"]) for r in rows] == [
        (s, m, v) for s in QUESTION_STAGES for m in METRICS[s] for v in VARIANTS
    ]
    for row in rows:
        assert row["credible_level"] == "0.9"
        if row["metric"] == "conversion":
            assert row["question"] == row["question_text"] == row["scale_min"] == row["scale_max"] == ""
            assert int(row["count"]) == admin_conversions(mixed, row)
            continue
        key = MEASURED[row["stage"]]
        _stage, text, lo, hi = QUESTIONS[key]
        assert (row["question"], row["question_text"], row["scale_min"], row["scale_max"]) == (
            key,
            text,
            str(lo),
            str(hi),
        )
        assert int(row["count"]) == len(mixed.rated[(row["stage"], row["variant"])])
    advocacy = {r["variant"]: r for r in rows if r["stage"] == "advocacy" and r["metric"] == "nps"}
    for variant, row in advocacy.items():
        assert float(row["observed"]) == pytest.approx(nps(mixed.rated[("advocacy", variant)]))


def admin_conversions(mixed, row):
    return mixed.converted[(row["stage"], row["variant"])]


def lift_map_stages(body: str) -> dict[str, str]:
    lift_map = body.split('id="map-title"')[1].split("</section>")[0]
    return {s: lift_map.split(f'data-stage="{s}"')[1].split('class="lm-stage')[0] for s in QUESTION_STAGES}


def test_the_page_shows_each_question_and_nps_on_the_0_10_stage_only(client, login, db, mixed):
    login("viewer")
    response = client.get("/experiments/mixed/report")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    stages = lift_map_stages(body)
    assert (
        f'<p class="lm-question" data-question="checkout-csat">How easy was checkout? (1{DASH}5)</p>'
        in stages["purchase"]
    )
    assert (
        '<p class="lm-question" data-question="recommend-nps">'
        f"How likely are you to recommend us to a friend? (0{DASH}10)</p>" in stages["advocacy"]
    )
    for stage in ("browse", "retention"):
        block = stages[stage]
        assert "No rating question: conversion only" in block
        # No rating rows, no "no ratings" note and no rating guardrail where nothing is asked.
        assert "Mean rating" not in block and "no ratings" not in block and "NPS" not in block
        assert "Guardrail (mean rating)" not in block
    assert "How much effort" not in body  # the journey's unmeasured question is not the experiment's
    assert "NPS" not in stages["purchase"]
    session, experiment = stored(db)
    prior, rule = experiment_settings(experiment)
    result = analyze(experiment_stats(session, experiment), prior=prior, rule=rule, seed=0)
    session.close()
    advocacy = result.stage("advocacy")
    shown = re.findall(r'<dd class="nps">([^<]*)</dd>', stages["advocacy"])
    assert shown == [f"{round(advocacy.metric('nps').arm(v).observed) + 0.0:+.0f}" for v in VARIANTS]
    assert len(re.findall(r'<dd class="nps">', body)) == 2  # the advocacy stage's two variants only
    difference = advocacy.metric("nps").comparison("treatment").absolute_difference
    assert f'<dd class="nps-difference">{round(difference.mean) + 0.0:+.0f} ' in stages["advocacy"]
    purchase = result.stage("purchase").metric("mean_rating")
    assert f"{purchase.arm('treatment').observed:,.2f}" in stages["purchase"]
    # The forest plot names the question of each mean-rating row (shortened), and has
    # none where no question is asked.
    forest = body.split("plot-forest")[1].split("</svg>")[0]
    labels = [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", forest) if " · " in t]
    assert labels == [
        f"advocacy · mean rating: How likely are you to recommend us to a… (0{DASH}10) · treatment",
        "advocacy · conversion · treatment",
        "retention · conversion · treatment",
        f"purchase · mean rating: How easy was checkout? (1{DASH}5) · treatment",
        "purchase · conversion · treatment",
        "browse · conversion · treatment",
    ]
    # The data-quality table says which question each stage measures.
    assert (
        f"<td><code>checkout-csat</code> 1{DASH}5</td>" in body
        and f"<td><code>recommend-nps</code> 0{DASH}10</td>" in body
    )


def test_the_terminal_table_shows_each_stages_question(runner, mixed):
    result = runner.invoke(main, ["report", "mixed"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"  rating question checkout-csat: How easy was checkout? (1{DASH}5)" in lines
    assert f"  rating question recommend-nps: How likely are you to recommend us to a friend? (0{DASH}10)" in lines
    assert lines.count("  no rating question at this stage: conversion only") == 2
    headers = [line.split() for line in lines if line.startswith("  variant")]
    assert [("rating" in h, "NPS" in h) for h in headers] == [
        (False, False),
        (True, False),
        (False, False),
        (True, True),
    ]
    assert max(len(line) for line in lines) <= 140


def test_the_full_model_sees_each_stages_scale_and_shows_its_rating_rows(app, db, client, login, mixed):
    seen = []

    def fit(stats, params, *, prior, rule, progress):
        seen.append(stats)
        return fake_fit(stats, params, prior=prior, rule=rule, progress=progress)

    get_runner(app).fit = fit
    login("editor")
    assert client.post("/experiments/mixed/report/full-model").status_code == 302
    assert get_runner(app).run_pending() == 1
    assert {s: seen[0].scale_of(s) for s in QUESTION_STAGES} == SCALES
    with db.sessionmaker() as session:
        job = session.scalars(select(AnalysisJob)).one()
    assert job.snapshot["scales"] == {
        s: None if scale is None else {"min": scale.min, "max": scale.max} for s, scale in SCALES.items()
    }
    assert job.snapshot["questions"] == {s: MEASURED.get(s) for s in QUESTION_STAGES}
    assert [s["scale"] for s in job.result["stages"]] == [job.snapshot["scales"][s] for s in QUESTION_STAGES]
    body = client.get("/experiments/mixed/report").get_data(as_text=True)
    table = body.split('class="compact side-by-side"')[1].split("</table>")[0]
    rows = re.findall(r"<tr>\s*<td>(\w+)</td><td>([\w ]+)</td><td>(\w+)</td>", table)
    assert rows == [
        (s, m, "treatment")
        for s in QUESTION_STAGES
        for m in ("conversion", "mean rating")
        if m == "conversion" or SCALES[s] is not None
    ]
