"""Aggregation into analysis.types: exact counts, one query per report, segments and
days that add up to the whole, data-quality figures, index use."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text

from analysis.types import CellStats, ExperimentStats, Scale
from expplatform import aggregation
from expplatform.ingest import record_events
from expplatform.models import Experiment
from tests.events_support import expose, iso, make_experiment

DAY1 = datetime(2024, 5, 1, 23, 59, 58, tzinfo=UTC)


def conv(event_id, customer, stage, when):
    return {"event_id": event_id, "customer_id": customer, "stage": stage, "type": "conversion", "timestamp": iso(when)}


def rate(event_id, customer, stage, value, when):
    return {
        "event_id": event_id,
        "customer_id": customer,
        "stage": stage,
        "type": "satisfaction",
        "value": value,
        "timestamp": iso(when),
    }


@pytest.fixture
def data(app, db):
    """Two variants over three days (1-3 May); 'qa' is forced. Day 1 ends at DAY1 + 2 s."""
    with db.write() as session:
        experiment = make_experiment(
            session,
            "funnel",
            stages=("consideration", "purchase"),
            target_stage="purchase",
            variants=("control", "treatment"),
            started_at=DAY1 - timedelta(days=1),
        )
        expose(session, experiment, "a", "control", exposed_at=DAY1, attributes={"country": "fr", "vip": True})
        expose(session, experiment, "b", "control", exposed_at=DAY1, attributes={"country": "de"})
        expose(session, experiment, "c", "treatment", exposed_at=DAY1, attributes={"country": "fr", "vip": False})
        # Exposed just after midnight; converts 1 s before that (within the clock skew).
        expose(
            session,
            experiment,
            "d",
            "treatment",
            exposed_at=DAY1 + timedelta(seconds=3),
            attributes={"country": "fr"},
            mismatches=2,
        )
        expose(session, experiment, "e", "treatment", exposed_at=DAY1 + timedelta(days=2))
        expose(session, experiment, "qa", "treatment", exposed_at=DAY1, forced=True)
        experiment_id = experiment.id
    events = [
        conv("1", "a", "consideration", DAY1 + timedelta(seconds=1)),
        conv("2", "a", "purchase", DAY1 + timedelta(days=1)),
        rate("3", "a", "purchase", 4, DAY1 + timedelta(days=1)),
        conv("4", "c", "consideration", DAY1 + timedelta(seconds=1)),
        rate("5", "c", "purchase", 2, DAY1 + timedelta(seconds=1)),
        rate("6", "c", "purchase", 5, DAY1 + timedelta(days=2)),  # c's latest rating
        conv("7", "d", "consideration", DAY1 + timedelta(seconds=1)),
        conv("8", "qa", "purchase", DAY1 + timedelta(seconds=5)),
        conv("9", "nobody", "purchase", DAY1),
        rate("10", "b", "purchase", 1, DAY1 - timedelta(minutes=1)),  # before exposure
    ]
    result = record_events(db, events, app.extensions["settings"])
    assert (result.accepted, result.rejected) == (10, ())
    with db.sessionmaker() as session:
        yield session, session.get(Experiment, experiment_id)


def stats(cells: dict) -> ExperimentStats:
    return ExperimentStats(
        ("consideration", "purchase"),
        "purchase",
        ("control", "treatment"),
        "control",
        (0.5, 0.5),
        Scale(1, 5),
        cells,
    )


def cell(exposed, converted, ratings=()):
    histogram = [0] * 5
    for r in ratings:
        histogram[r - 1] += 1
    return CellStats(exposed, converted, tuple(histogram))


EXPECTED = stats(
    {
        "consideration": {"control": cell(2, 1), "treatment": cell(3, 2)},
        "purchase": {"control": cell(2, 1, [4]), "treatment": cell(3, 0, [5])},
    }
)


def test_experiment_stats_are_exact(data):
    session, experiment = data
    assert aggregation.experiment_stats(session, experiment) == EXPECTED


def test_an_experiment_without_data_has_zero_cells(db):
    with db.write() as session:
        experiment = make_experiment(session, "empty", stages=("consideration", "purchase"), target_stage="purchase")
        assert aggregation.experiment_stats(session, experiment) == stats(
            {s: {"control": cell(0, 0), "treatment": cell(0, 0)} for s in ("consideration", "purchase")}
        )
        assert aggregation.daily_stats(session, experiment) == []
        assert aggregation.segment_stats(session, experiment, "country") == {}


@pytest.fixture
def statements(db):
    executed: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        executed.append(statement)

    sa_event.listen(db.engine, "before_cursor_execute", record)
    yield executed
    sa_event.remove(db.engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    "report",
    [
        lambda s, e: aggregation.experiment_stats(s, e),
        lambda s, e: aggregation.segment_stats(s, e, "country"),
        lambda s, e: aggregation.daily_stats(s, e),
        lambda s, e: aggregation.data_quality(s, e),
    ],
    ids=["whole", "segments", "daily", "quality"],
)
def test_each_report_is_one_query(data, statements, report):
    session, experiment = data
    # Loaded before counting (the report itself is what is measured): the variants, and
    # the journey's questions, which give each stage its scale.
    experiment.variants  # noqa: B018
    experiment.journey.questions  # noqa: B018
    statements.clear()
    report(session, experiment)
    assert len(statements) == 1, statements


def test_segments_split_the_experiment_and_add_up_to_it(data):
    session, experiment = data
    by_country = aggregation.segment_stats(session, experiment, "country")
    assert set(by_country) == {"fr", "de", None}
    assert by_country["fr"].cells["consideration"] == {"control": cell(1, 1), "treatment": cell(2, 2)}
    assert by_country["fr"].cells["purchase"] == {"control": cell(1, 1, [4]), "treatment": cell(2, 0, [5])}
    assert by_country[None].cells["purchase"] == {"control": cell(0, 0), "treatment": cell(1, 0)}
    assert by_country["fr"] + by_country["de"] + by_country[None] == EXPECTED
    by_vip = aggregation.segment_stats(session, experiment, "vip")
    assert set(by_vip) == {"true", "false", None}
    assert by_vip["true"].cells["purchase"]["control"] == cell(1, 1, [4])


@pytest.mark.parametrize("attribute", ["", "a.b", "x' OR 1=1", "$.country"])
def test_a_bad_segment_attribute_is_a_malformed_request(data, attribute):
    session, experiment = data
    from expplatform.errors import MalformedRequest

    with pytest.raises(MalformedRequest) as raised:
        aggregation.segment_stats(session, experiment, attribute)
    assert set(raised.value.fields) == {"segment"}


def test_daily_series_is_cumulative_and_ends_at_the_whole(data):
    session, experiment = data
    series = aggregation.daily_stats(session, experiment)
    days = [day for day, _ in series]
    assert days == [date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)]
    assert series[-1][1] == EXPECTED
    first = series[0][1].cells
    # Day 1: a, b, c exposed; c's rating 2 was later replaced, so it shows on day 3.
    assert first["consideration"] == {"control": cell(2, 1), "treatment": cell(1, 1)}
    assert first["purchase"] == {"control": cell(2, 0), "treatment": cell(1, 0)}
    second = series[1][1].cells
    # d converted 1 s before its exposure, across midnight: it counts from its exposure day.
    assert second["consideration"]["treatment"] == cell(2, 2)
    assert second["purchase"]["control"] == cell(2, 1, [4])
    assert series[2][1].cells["purchase"]["treatment"] == cell(3, 0, [5])
    for (_, earlier), (_, later) in itertools.pairwise(series):
        for stage in earlier.stages:
            for variant in earlier.variants:
                a, b = earlier.cells[stage][variant], later.cells[stage][variant]
                assert a.exposed <= b.exposed and a.converted <= b.converted


def test_data_quality_figures(data):
    session, experiment = data
    quality = aggregation.data_quality(session, experiment)  # still running: its days reach today
    assert quality.forced_customers == 1
    assert (quality.mismatched_customers, quality.mismatches) == (1, 2)
    assert quality.stages["purchase"] == aggregation.StageQuality(unmatched=1, before_exposure=1, forced=1)
    assert quality.stages["consideration"] == aggregation.StageQuality()
    assert quality.stages["purchase"].excluded == 3
    # Unmatched events are counted by the day they arrived: none on a run long past.
    experiment.started_at, experiment.stopped_at = DAY1 - timedelta(days=90), DAY1 - timedelta(days=60)
    assert aggregation.data_quality(session, experiment).stages["purchase"].unmatched == 0


def test_the_exposed_count_reads_the_covering_index(data):
    session, experiment = data
    if session.get_bind().dialect.name == "postgresql":
        # Tiny tables make a sequential scan cheapest; forbid it to show the index serves
        # the query (bench/ingest.py prints the plan chosen on a million exposures).
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(aggregation.explain_experiment_stats(session, experiment))
        assert "Index Only Scan using ix_exposures_experiment_id" in plan, plan
    else:
        plan = "\n".join(aggregation.explain_experiment_stats(session, experiment))
        assert "USING COVERING INDEX ix_exposures_experiment_id" in plan, plan


# -- each stage on its own question's scale ---------------------------------------------------


def test_the_stages_scales_are_their_questions(db):
    """Stages whose questions share a scale give the statistics of a single-scale
    experiment (stage_scales empty); other scales, and stages without a question, are
    listed in stage_scales, the commonest scale being the experiment's."""
    from expplatform.models import Journey, JourneyStage, RatingQuestion

    stages = ("browse", "cart", "purchase", "advocacy")
    with db.write() as session:
        journey = Journey(
            key="shop",
            name="Shop",
            stages=[JourneyStage(key=s, name=s, position=n) for n, s in enumerate(stages)],
            questions=[
                RatingQuestion(key="cart-ease", stage="cart", text="Easy?", scale_min=1, scale_max=7, position=0),
                RatingQuestion(key="pay-ease", stage="purchase", text="Paid?", scale_min=1, scale_max=7, position=1),
                RatingQuestion(key="nps", stage="advocacy", text="Recommend?", scale_min=0, scale_max=10, position=2),
                RatingQuestion(key="cart-csat", stage="cart", text="Happy?", scale_min=1, scale_max=5, position=3),
            ],
        )
        same = make_experiment(session, "same", stages=("cart", "purchase"), target_stage="cart")
        same.journey, same.metrics = journey, {"cart": "cart-ease", "purchase": "pay-ease"}
        mixed = make_experiment(session, "mixed", stages=stages, target_stage="cart")
        mixed.journey, mixed.metrics = journey, {"cart": "cart-csat", "purchase": "pay-ease", "advocacy": "nps"}
        session.flush()
        one = aggregation.experiment_stats(session, same)
        assert (one.scale, dict(one.stage_scales)) == (Scale(1, 7), {})
        assert {s: one.cells[s]["control"].ratings for s in one.stages} == {s: (0,) * 7 for s in one.stages}
        many = aggregation.experiment_stats(session, mixed)
        assert {s: many.scale_of(s) for s in stages} == {
            "browse": None,
            "cart": Scale(1, 5),
            "purchase": Scale(1, 7),
            "advocacy": Scale(0, 10),
        }
        assert [len(many.cells[s]["treatment"].ratings) for s in stages] == [0, 5, 7, 11]
        questions = aggregation.stage_questions(mixed)
        assert questions["browse"] is None
        assert questions["cart"] == aggregation.StageQuestion("cart-csat", "Happy?", Scale(1, 5))
        assert questions["advocacy"].label == "Recommend? (0\N{EN DASH}10)"


def test_a_rating_counter_with_no_bin_on_its_stages_scale_is_left_out(db):
    """Counters ingest would not write (a rating at a stage without a question, or off
    its scale) do not land in another bin: the histograms stay the stage's own."""
    from expplatform.models import OutcomeCount

    with db.write() as session:
        experiment = make_experiment(session, "odd", stages=("cart", "purchase"), target_stage="cart")
        experiment.metrics = {"purchase": experiment.metrics["purchase"]}  # no question at cart
        for i, variant in enumerate(("control", "treatment")):
            for n in range(3):
                expose(session, experiment, f"{variant}{n}", variant)
            variant_id = experiment.variants[i].id
            for stage, value in (("cart", 4), ("purchase", 5), ("purchase", 9), ("purchase", 0)):
                session.add(
                    OutcomeCount(
                        experiment_id=experiment.id,
                        stage=stage,
                        variant_id=variant_id,
                        day=date(2024, 5, 1),
                        kind="rating",
                        value=value,
                        customers=1,
                    )
                )
        session.flush()
        found = aggregation.experiment_stats(session, experiment)
        assert found.scale_of("cart") is None and found.scale_of("purchase") == Scale(1, 5)
        assert found.cells["cart"]["control"] == CellStats(3, 0, ())
        assert found.cells["purchase"]["treatment"] == CellStats(3, 0, (0, 0, 0, 0, 1))
