"""Events in journeys: ratings name their question, experiments asking different
questions at one stage never mix their ratings, every stored event counts in its
journeys' counters (by persona), and the counters agree with an independent
computation from the raw events and with the rebuild, also under concurrent batches."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import delete, func, select
from sqlalchemy import event as sa_event

from expplatform.cli import main
from expplatform.definitions import DEFAULT_STAGES
from expplatform.ingest import rebuild_journey_counters, rebuild_outcomes, record_events
from expplatform.ingest.catalog import catalog_cache
from expplatform.models import (
    Event,
    Experiment,
    Journey,
    JourneyCount,
    JourneyOutcome,
    Outcome,
    OutcomeCount,
    RatingQuestion,
    UnmatchedEventCount,
)
from tests.conftest import make_test_app
from tests.events_support import (
    T0,
    counts,
    expected_journey_counts,
    expose,
    iso,
    journey_counts,
    journey_snapshot,
    make_experiment,
    make_journey,
    quality,
    snapshot,
)
from tests.openapi_check import checked

URL = "/api/v1/events"
DAY = 24 * 3600


def at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


def conversion(event_id, customer, stage="purchase", seconds=60.0, **extra):
    return {
        "event_id": event_id,
        "customer_id": customer,
        "stage": stage,
        "type": "conversion",
        "timestamp": at(seconds),
        **extra,
    }


def rating(event_id, customer, value, metric=None, seconds=60.0, **extra):
    event = {"event_id": event_id, "customer_id": customer, "type": "rating", "value": value, "timestamp": at(seconds)}
    if metric is not None:
        event["metric"] = metric
    return {**event, **extra}


@pytest.fixture
def api(client_api):
    return checked(client_api)


# -- two experiments, two questions, one stage ---------------------------------------------------


@pytest.fixture
def two_questions(db):
    """The issue's case: checkout-page asks purchase-rating (1-5) at purchase of the
    default journey; checkout-nps, on the same journey, measures only purchase with
    purchase-rating-0-10. Customers c0..c5 are exposed to both."""
    with db.write() as session:
        page = make_experiment(session, "checkout-page", stages=DEFAULT_STAGES, target_stage="purchase")
        journey = page.journey
        assert journey.key == "default" and page.metrics["purchase"] == "purchase-rating"
        journey.questions.append(
            RatingQuestion(
                key="purchase-rating-0-10",
                stage="purchase",
                text="How likely are you to recommend us? (0-10)",
                scale_min=0,
                scale_max=10,
                position=len(journey.questions),
            )
        )
        nps = make_experiment(
            session,
            "checkout-nps",
            stages=("purchase",),
            journey=journey,
            metrics={"purchase": "purchase-rating-0-10"},
        )
        for i in range(6):
            expose(session, page, f"c{i}", "control" if i % 2 == 0 else "treatment")
            expose(session, nps, f"c{i}", "control" if i < 3 else "treatment")
        return page.id, nps.id


def test_two_experiments_asking_different_questions_at_one_stage_never_mix(api, db, two_questions):
    page_id, nps_id = two_questions
    page_ratings = [5, 1, 4, 2, 3, 5]  # c0..c5, 1-5
    nps_ratings = [0, 10, 7, 9, 6, 3]  # c0..c5, 0-10: 0, 10, 7, 9 and 6 are outside 1-5
    events = []
    for i in range(6):
        events.append(rating(f"p{i}", f"c{i}", page_ratings[i], "purchase-rating", seconds=100 + i))
        nps = rating(f"n{i}", f"c{i}", nps_ratings[i], "purchase-rating-0-10", seconds=100 + i)
        if i % 2:  # the older type name, with the stage: the same event
            nps.update(type="satisfaction", stage="purchase")
        events.append(nps)
    events.append(conversion("buy0", "c0"))
    # Naming no question at a stage with two: refused, whatever the value.
    events.append({"event_id": "amb", "customer_id": "c1", "stage": "purchase", "type": "satisfaction", "value": 3})
    response = api.post(URL, json={"events": events})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["accepted"], body["duplicates"]) == (13, 0)
    assert [(r["index"], r["error"]) for r in body["rejected"]] == [(13, "ambiguous_metric")]
    message = body["rejected"][0]["message"]
    assert "purchase-rating" in message and "purchase-rating-0-10" in message
    with db.sessionmaker() as session:
        assert counts(session, page_id) == {
            ("purchase", "control", "rating", 5): 1,  # c0
            ("purchase", "treatment", "rating", 1): 1,  # c1
            ("purchase", "control", "rating", 4): 1,  # c2
            ("purchase", "treatment", "rating", 2): 1,  # c3
            ("purchase", "control", "rating", 3): 1,  # c4
            ("purchase", "treatment", "rating", 5): 1,  # c5
            ("purchase", "control", "converted", 0): 1,  # c0
        }
        assert counts(session, nps_id) == {
            ("purchase", "control", "rating", 0): 1,  # c0
            ("purchase", "control", "rating", 10): 1,  # c1
            ("purchase", "control", "rating", 7): 1,  # c2
            ("purchase", "treatment", "rating", 9): 1,  # c3
            ("purchase", "treatment", "rating", 6): 1,  # c4
            ("purchase", "treatment", "rating", 3): 1,  # c5
            ("purchase", "control", "converted", 0): 1,  # c0
        }
        # Each rating counted once, in its own experiment only.
        assert {row[0]: row[1] for row in session.execute(select(Event.event_id, Event.attributed))} == {
            **{f"p{i}": 1 for i in range(6)},
            **{f"n{i}": 1 for i in range(6)},
            "buy0": 2,
        }
        assert {row[0]: row[1] for row in session.execute(select(Event.event_id, Event.metric))} == {
            **{f"p{i}": "purchase-rating" for i in range(6)},
            **{f"n{i}": "purchase-rating-0-10" for i in range(6)},
            "buy0": None,
        }
        journey = {(m, k, v): n for (_j, _s, m, _p, k, v), n in journey_counts(session).items()}
    expected = {("", "converted", 0): 1}
    for value in page_ratings:
        expected[("purchase-rating", "rating", value)] = expected.get(("purchase-rating", "rating", value), 0) + 1
    for value in nps_ratings:
        key = ("purchase-rating-0-10", "rating", value)
        expected[key] = expected.get(key, 0) + 1
    assert journey == expected


def test_a_rating_for_the_other_question_is_not_a_data_quality_problem(db, app, two_questions):
    """A QA customer of checkout-page answering the 0-10 question is neither counted
    nor held back by checkout-page: it is not its question."""
    page_id, nps_id = two_questions
    with db.write() as session:
        expose(session, session.get(Experiment, page_id), "qa", "treatment", forced=True)
    result = record_events(db, [rating("q", "qa", 8, "purchase-rating-0-10")], app.extensions["settings"])
    assert (result.accepted, result.rejected) == (1, ())
    with db.sessionmaker() as session:
        assert quality(session, page_id) == {}
        assert quality(session, nps_id) == {}
        assert counts(session, page_id) == counts(session, nps_id) == {}


# -- what the journeys know ------------------------------------------------------------------------


def test_unknown_stages_and_questions_are_rejected_by_index_and_the_rest_stored(api, db, two_questions):
    response = api.post(
        URL,
        json={
            "events": [
                conversion("ok1", "c0"),
                conversion("bad-stage", "c0", stage="checkout"),
                rating("bad-question", "c0", 4, "checkout-csat"),
                rating("ok2", "c1", 4, "purchase-rating"),
                rating("bad-stage-rating", "c1", 4, stage="nowhere"),
                rating("mismatch", "c1", 4, "purchase-rating", stage="retention"),
                rating("ok3", "c2", 4, stage="retention"),  # retention asks one question
            ]
        },
    )
    body = response.get_json()
    assert [(r["index"], r["error"]) for r in body["rejected"]] == [
        (1, "unknown_stage"),
        (2, "unknown_metric"),
        (4, "unknown_stage"),
        (5, "stage_mismatch"),
    ]
    assert body["accepted"] == 3
    with db.sessionmaker() as session:
        stored = {
            row[0]: row[1:] for row in session.execute(select(Event.event_id, Event.stage, Event.type, Event.metric))
        }
    assert stored == {
        "ok1": ("purchase", "conversion", None),
        "ok2": ("purchase", "satisfaction", "purchase-rating"),  # the stage from the question
        "ok3": ("retention", "satisfaction", "retention-rating"),  # the one question, resolved
    }


def test_a_stage_without_a_question_refuses_ratings_naming_only_it(api, db):
    with db.write() as session:
        make_journey(session, "onboarding", ["signup", "first-use"], [("first-use-csat", "first-use", 1, 5)])
        make_journey(session, "support", ["first-use", "ticket"])
    body = api.post(
        URL,
        json={
            "events": [
                rating("a", "c1", 4, stage="signup"),  # no question at all there
                rating("b", "c1", 4, stage="first-use"),  # one journey asks one, the other none
                rating("c", "c1", 4, "first-use-csat"),
                conversion("d", "c1", stage="first-use"),
            ]
        },
    ).get_json()
    assert [(r["index"], r["error"]) for r in body["rejected"]] == [(0, "no_question"), (1, "ambiguous_metric")]
    assert "first-use-csat" in body["rejected"][1]["message"]
    with db.sessionmaker() as session:
        assert {(j, s, m, k) for (j, s, m, _p, k, _v) in journey_counts(session)} == {
            ("onboarding", "first-use", "first-use-csat", "rating"),
            ("onboarding", "first-use", "", "converted"),
            ("support", "first-use", "", "converted"),  # a stage two journeys share
        }


def test_a_rating_naming_a_stage_shared_by_journeys_with_one_question_each(db, app):
    """Stored without a question (each journey has its own) and counted, in each
    journey and in each experiment, as that journey's question."""
    with db.write() as session:
        web = make_journey(session, "web", ["browse", "purchase"], [("web-purchase", "purchase", 1, 5)])
        store = make_journey(session, "store", ["purchase"], [("store-purchase", "purchase", 1, 10)])
        online = make_experiment(
            session, "online", stages=["purchase"], journey=web, metrics={"purchase": "web-purchase"}
        )
        offline = make_experiment(
            session, "offline", stages=["purchase"], journey=store, metrics={"purchase": "store-purchase"}
        )
        expose(session, online, "c1")
        expose(session, offline, "c1", "treatment")
        ids = online.id, offline.id
    settings = app.extensions["settings"]
    result = record_events(
        db, [rating("r1", "c1", 4, stage="purchase"), rating("r2", "c2", 7, stage="purchase")], settings
    )
    # 7 is outside web-purchase's 1-5: refused, since it would answer that question too.
    assert (result.accepted, [(r.index, r.error) for r in result.rejected]) == (1, [(1, "value_out_of_scale")])
    with db.sessionmaker() as session:
        assert session.scalar(select(Event.metric).where(Event.event_id == "r1")) is None
        assert counts(session, ids[0]) == {("purchase", "control", "rating", 4): 1}
        assert counts(session, ids[1]) == {("purchase", "treatment", "rating", 4): 1}
        assert {(j, m) for (j, _s, m, _p, _k, _v) in journey_counts(session)} == {
            ("web", "web-purchase"),
            ("store", "store-purchase"),
        }
    with db.write() as session:
        before = snapshot(session, ids[0]), snapshot(session, ids[1]), journey_snapshot(session)
        for experiment_id in ids:
            rebuild_outcomes(session, session.get(Experiment, experiment_id))
        rebuild_journey_counters(session)
    with db.sessionmaker() as session:
        assert (snapshot(session, ids[0]), snapshot(session, ids[1]), journey_snapshot(session)) == before


# -- journey counters against an independent computation --------------------------------------------


SHOP = {
    "stages": ["browse", "purchase", "support"],
    "questions": {"purchase-csat": "purchase", "support-csat": "support", "support-effort": "support"},
}
RETURNS = {"stages": ["purchase", "refund"], "questions": {"refund-csat": "refund"}}
SPEC = {"shop": SHOP, "returns": RETURNS}
# Who was exposed, when, with what attributes: (customer, experiment, seconds after T0, attributes).
EXPOSURES = [
    ("a", "shop-purchase", 0, {"segment": "loyal"}),
    ("b", "shop-purchase", 0, {"segment": "bargain-hunter"}),
    ("b", "shop-support", 10, {"segment": "loyal", "persona": "returner"}),  # the latest wins
    ("c", "shop-purchase", 0, {"segment": "tourist"}),  # not a declared persona
    ("e", "shop-purchase", 0, {"segment": "loyal"}),
    ("e", "shop-support", 10, {"country": "fr"}),  # the latest carrying the attribute wins
    ("g", "shop-purchase", 0, {"segment": 7}),  # not text
]
# d: no exposure at all. f: exposed only after the events reached us (below).


def _persona(journey: str, customer: str) -> str:
    """The rule, computed here from EXPOSURES alone."""
    attribute, declared = {"shop": ("segment", {"bargain-hunter", "loyal"}), "returns": ("persona", {"returner"})}[
        journey
    ]
    carrying = [e for e in EXPOSURES if e[0] == customer and attribute in e[3]]
    if not carrying:
        return ""
    value = max(carrying, key=lambda e: (e[2], e[1]))[3][attribute]
    return value if isinstance(value, str) and value in declared else ""


@pytest.fixture
def shop(db):
    with db.write() as session:
        shop = make_journey(
            session,
            "shop",
            SHOP["stages"],
            [
                ("purchase-csat", "purchase", 1, 5),
                ("support-csat", "support", 1, 5),
                ("support-effort", "support", 1, 7),
            ],
            personas=["bargain-hunter", "loyal"],
            persona_attribute="segment",
        )
        make_journey(session, "returns", RETURNS["stages"], [("refund-csat", "refund", 1, 5)], personas=["returner"])
        experiments = {
            "shop-purchase": make_experiment(
                session, "shop-purchase", stages=["purchase"], journey=shop, metrics={"purchase": "purchase-csat"}
            ),
            "shop-support": make_experiment(
                session, "shop-support", stages=["support"], journey=shop, metrics={"support": "support-csat"}
            ),
        }
        for customer, key, seconds, attributes in EXPOSURES:
            expose(
                session,
                experiments[key],
                customer,
                exposed_at=T0 + timedelta(seconds=seconds),
                attributes=attributes,
            )
        expose(
            session,
            experiments["shop-purchase"],
            "f",
            exposed_at=datetime.now(UTC) + timedelta(hours=1),
            attributes={"segment": "loyal"},
        )
        return {key: e.id for key, e in experiments.items()}


def _shop_batches() -> list[list[dict]]:
    """Batches over several days: conversions arriving out of order, ratings replaced
    on a later day, re-sent events, stage-only ratings where they resolve."""
    return [
        [
            conversion("a-buy-2", "a", seconds=2 * DAY),
            rating("a-csat-0", "a", 2, "purchase-csat", seconds=100),
            rating("b-support", "b", 4, "support-csat", seconds=200),
            rating("b-effort", "b", 6, "support-effort", seconds=210),
            conversion("c-browse", "c", stage="browse", seconds=300),
            conversion("d-buy", "d", seconds=400),
            rating("d-refund", "d", 3, stage="refund", seconds=500),  # refund asks one question
            conversion("f-buy", "f", seconds=600),
            rating("g-csat", "g", 1, "purchase-csat", seconds=700),
            conversion("e-refund", "e", stage="refund", seconds=800),
        ],
        [
            conversion("a-buy-1", "a", seconds=DAY),  # earlier: moves a's conversion day
            rating("a-csat-2", "a", 5, "purchase-csat", seconds=2 * DAY + 5),  # replaces day 0's 2
            rating("a-csat-old", "a", 3, "purchase-csat", seconds=50),  # older: ignored
            conversion("d-buy", "d", seconds=400),  # re-sent
            rating("b-support", "b", 4, "support-csat", seconds=200),  # re-sent
            rating("c-support", "c", 5, "support-csat", seconds=3 * DAY, stage="support"),
        ],
        [
            conversion("a-buy-0", "a", seconds=10),  # earlier again: day 0
            rating("a-csat-2", "a", 5, "purchase-csat", seconds=2 * DAY + 5),  # re-sent
            rating("b-support-2", "b", 1, "support-csat", seconds=4 * DAY),
            rating("f-csat", "f", 4, "purchase-csat", seconds=4 * DAY),
            conversion("e-buy", "e", seconds=4 * DAY),
        ],
    ]


def test_journey_counters_equal_an_independent_computation_from_the_raw_events(db, app, shop):
    settings = app.extensions["settings"]
    unique: dict[str, dict] = {}
    for batch in _shop_batches():
        result = record_events(db, batch, settings)
        assert result.rejected == ()
        fresh = [e for e in batch if e["event_id"] not in unique]
        assert (result.accepted, result.duplicates) == (len(fresh), len(batch) - len(fresh))
        unique.update({e["event_id"]: e for e in fresh})
    expected = expected_journey_counts(unique.values(), SPEC, _persona, by_day=True)
    day = [(T0 + timedelta(days=n)).date() for n in range(5)]
    # What the computation says, spelled out for a few customers:
    assert expected[("shop", "purchase", "", "loyal", day[0], "converted", 0)] == 1  # a, moved from day 2 to 0
    assert ("shop", "purchase", "", "loyal", day[2], "converted", 0) not in expected
    assert expected[("shop", "purchase", "purchase-csat", "loyal", day[2], "rating", 5)] == 1  # a, replaced
    assert ("shop", "purchase", "purchase-csat", "loyal", day[0], "rating", 2) not in expected
    assert expected[("shop", "support", "support-csat", "loyal", day[4], "rating", 1)] == 1  # b
    assert expected[("returns", "refund", "refund-csat", "", day[0], "rating", 3)] == 1  # d, no exposure
    assert expected[("shop", "support", "support-csat", "", day[3], "rating", 5)] == 1  # c, not a persona
    assert expected[("shop", "purchase", "purchase-csat", "", day[4], "rating", 4)] == 1  # f, exposed later
    assert expected[("shop", "purchase", "purchase-csat", "", day[0], "rating", 1)] == 1  # g, not text
    assert expected[("returns", "refund", "", "", day[0], "converted", 0)] == 1  # e has no 'persona'
    with db.sessionmaker() as session:
        assert journey_counts(session, by_day=True) == expected
    # Rebuilt from the raw events: the same rows and cells.
    with db.write() as session:
        incremental = journey_snapshot(session)
        rebuild_journey_counters(session)
    with db.sessionmaker() as session:
        assert journey_snapshot(session) == incremental


def test_the_persona_is_fixed_when_the_row_is_made(db, app, shop):
    """A later exposure with another persona changes the persona of rows made after
    it, not of the customer's existing rows; the rebuild agrees."""
    settings = app.extensions["settings"]
    assert record_events(db, [conversion("c1", "c", stage="browse")], settings).rejected == ()
    with db.write() as session:
        expose(
            session,
            session.get(Experiment, shop["shop-support"]),
            "c",
            exposed_at=datetime.now(UTC),  # after the first batch was received
            attributes={"segment": "bargain-hunter"},
        )
    assert (
        record_events(db, [conversion("c2", "c", stage="browse", seconds=30), conversion("c3", "c")], settings).rejected
        == ()
    )
    with db.sessionmaker() as session:
        personas = {
            (key, stage): persona
            for key, stage, persona in session.execute(
                select(Journey.key, JourneyOutcome.stage, JourneyOutcome.persona)
                .join(Journey, Journey.id == JourneyOutcome.journey_id)
                .where(JourneyOutcome.customer_id == "c")
            )
        }
    # Made before the new exposure: '' (tourist is no persona); after it: its persona.
    assert personas == {("shop", "browse"): "", ("shop", "purchase"): "bargain-hunter", ("returns", "purchase"): ""}
    with db.write() as session:
        incremental = journey_snapshot(session)
        rebuild_journey_counters(session)
    with db.sessionmaker() as session:
        assert journey_snapshot(session) == incremental


def _random_batches(rng: random.Random, batches: int, per_batch: int, prefix: str, slot: int = 0) -> list[list[dict]]:
    """Random events; no two at the same time (``slot`` apart for each generator), so
    that the latest rating is never a tie the independent computation cannot break."""
    customers = ["a", "b", "c", "d", "e", "f", "g", "h"]
    sent: list[dict] = []
    out = []
    for b in range(batches):
        batch: dict[str, dict] = {}
        for i in range(per_batch):
            if sent and rng.random() < 0.15:
                event = rng.choice(sent)
                batch[event["event_id"]] = event
                continue
            customer = rng.choice(customers)
            seconds = rng.choice([0, 100, 100, DAY, DAY + 7, 2 * DAY, 3 * DAY]) + rng.randint(0, 50)
            seconds += slot * 1e-3 + (b * per_batch + i) * 1e-6
            kind = rng.random()
            event_id = f"{prefix}{b}-{i}"
            if kind < 0.4:
                event = conversion(event_id, customer, rng.choice(["browse", "purchase", "support", "refund"]), seconds)
            elif kind < 0.8:
                question = rng.choice(["purchase-csat", "support-csat", "support-effort", "refund-csat"])
                top = 7 if question == "support-effort" else 5
                event = rating(event_id, customer, rng.randint(1, top), question, seconds)
            else:
                event = rating(event_id, customer, rng.randint(1, 5), stage="refund", seconds=seconds)
            batch[event_id] = event
            sent.append(event)
        out.append(list(batch.values()))
    return out


def _unmatched(session) -> dict[tuple, int]:
    return {(day, stage): n for day, stage, n in session.execute(select(UnmatchedEventCount.__table__))}


def test_rebuild_equals_incremental_for_random_workloads(db, app, shop, runner):
    settings = app.extensions["settings"]
    for batch in _random_batches(random.Random(7), batches=10, per_batch=40, prefix="r"):
        assert record_events(db, batch, settings).rejected == ()
    with db.write() as session:
        incremental = journey_snapshot(session)
        experiments = {key: snapshot(session, eid) for key, eid in shop.items()}
        unmatched = _unmatched(session)
        assert len(incremental[0]) > 30 and sum(unmatched.values()) > 0
        # Wipe the journey counters and one experiment's counters: the command restores them.
        for model in (JourneyOutcome, JourneyCount, Outcome, OutcomeCount, UnmatchedEventCount):
            session.execute(delete(model))
    result = runner.invoke(main, ["events", "rebuild"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "experiment shop-purchase:" in result.output and "journey shop:" in result.output
    assert "rebuilt 2 experiment(s) and 2 journey(s)" in result.output
    with db.sessionmaker() as session:
        assert journey_snapshot(session) == incremental
        assert {key: snapshot(session, eid) for key, eid in shop.items()} == experiments
        assert _unmatched(session) == unmatched
        rows = session.execute(
            select(Journey.key, func.count())
            .join(JourneyOutcome, JourneyOutcome.journey_id == Journey.id)
            .group_by(Journey.key)
        ).all()
    for key, n in rows:
        assert f"journey {key}: {n} journey outcome rows" in result.output


def test_concurrent_batches_keep_the_journey_counters_exact(live_server, db, client_key, shop):
    """Threads post overlapping batches (shared events re-sent by several, the same
    customers and rows everywhere) through real HTTP at once."""
    senders = 4
    rng = random.Random(11)
    shared = _random_batches(rng, batches=1, per_batch=60, prefix="shared")[0]
    own = [
        _random_batches(random.Random(100 + t), batches=3, per_batch=50, prefix=f"t{t}-", slot=t + 1)
        for t in range(senders)
    ]
    barrier = threading.Barrier(senders)
    errors: list[BaseException] = []
    accepted: list[int] = []

    def send(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            for batch in own[t]:
                body = {"events": list({e["event_id"]: e for e in [*batch, *shared]}.values())}
                response = requests.post(
                    f"{live_server}{URL}", json=body, headers={"Authorization": f"Bearer {client_key}"}, timeout=60
                )
                assert response.status_code == 200, response.text
                assert response.json()["rejected"] == []
                accepted.append(response.json()["accepted"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    unique = {e["event_id"]: e for batches in own for batch in batches for e in [*batch, *shared]}
    assert sum(accepted) == len(unique)
    expected = expected_journey_counts(unique.values(), SPEC, _persona, by_day=True)
    with db.write() as session:
        assert journey_counts(session, by_day=True) == expected
        incremental = journey_snapshot(session)
        rebuild_journey_counters(session)
    with db.sessionmaker() as session:
        assert journey_snapshot(session) == incremental


# -- the catalog cache ----------------------------------------------------------------------------------


def test_ingest_reads_the_journeys_once_until_the_definitions_version_moves(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, definitions_refresh_seconds=3600.0)
    db = app.extensions["db"]
    settings = app.extensions["settings"]
    try:
        with db.write() as session:
            journey = make_journey(session, "shop", ["purchase"], [("purchase-csat", "purchase", 1, 5)])
            journey_id = journey.id
        assert record_events(db, [rating("r1", "c1", 4, "purchase-csat")], settings).accepted == 1
        statements: list[str] = []

        def seen(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement)

        sa_event.listen(db.engine, "before_cursor_execute", seen)
        try:
            with db.write() as session:
                make_journey(session, "help", ["ticket"], [("ticket-csat", "ticket", 1, 5)])
            statements.clear()
            result = record_events(
                db, [rating("r2", "c1", 3, "purchase-csat"), rating("r3", "c1", 3, "ticket-csat")], settings
            )
            # Within the refresh interval: served from the cache, without reading the journeys.
            assert [(r.index, r.error) for r in result.rejected] == [(1, "unknown_metric")]
            journey_tables = (
                "journeys",
                "journey_stages",
                "journey_personas",
                "rating_questions",
                "definitions_version",
            )
            assert not [s for s in statements if any(f"FROM {t}" in s for t in journey_tables)]
            # After it, the moved version makes it reload.
            catalog_cache(db).clock = lambda: 10.0**9
            result = record_events(db, [rating("r3", "c1", 3, "ticket-csat")], settings)
            assert (result.accepted, result.rejected) == (1, ())
        finally:
            sa_event.remove(db.engine, "before_cursor_execute", seen)
        with db.sessionmaker() as session:
            assert journey_counts(session, journey_id)
    finally:
        db.engine.dispose()
