"""Every attribution rule, and the rebuild from raw events agreeing with the outcome
rows and counters maintained at ingest."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import select

from expplatform.ingest import rebuild_journey_counters, rebuild_outcomes, record_events
from expplatform.models import Event, Experiment, Outcome, UnmatchedEventCount, utcnow
from tests.conftest import make_test_app
from tests.events_support import (
    T0,
    at,
    counts,
    daily_counts,
    ev,
    expose,
    iso,
    journey_counts,
    journey_snapshot,
    make_experiment,
    make_journey,
    quality,
    random_workload,
    rate,
    snapshot,
)


@pytest.fixture
def send(app, db):
    settings = app.extensions["settings"]

    def _send(*events):
        result = record_events(db, list(events), settings)
        assert result.rejected == (), result.rejected
        return result

    return _send


def outcome(db, experiment_id, customer_id, stage="purchase"):
    with db.sessionmaker() as session:
        return session.get(Outcome, (experiment_id, customer_id, stage))


def attributed(db, event_id):
    with db.sessionmaker() as session:
        return session.scalar(select(Event.attributed).where(Event.event_id == event_id))


@pytest.fixture
def exp(db):
    """checkout measures consideration/purchase/retention; alice is in control, bob in
    treatment, qa is a forced (QA) customer; all exposed at T0."""
    with db.write() as session:
        experiment = make_experiment(session)
        expose(session, experiment, "alice", "control")
        expose(session, experiment, "bob", "treatment")
        expose(session, experiment, "qa", "treatment", forced=True)
        return experiment.id


def test_an_event_counts_for_the_variant_the_customer_was_exposed_to(db, send, exp):
    send(ev("a1", "alice"), ev("b1", "bob", stage="retention"))
    with db.sessionmaker() as session:
        assert counts(session, exp) == {
            ("purchase", "control", "converted", 0): 1,
            ("retention", "treatment", "converted", 0): 1,
        }
    assert attributed(db, "a1") == 1


def test_a_customer_converts_once_at_the_earliest_conversion(db, send, exp):
    send(ev("a1", "alice", seconds=300), ev("a2", "alice", seconds=200))
    send(ev("a3", "alice", seconds=100))  # arrives last, happened first
    send(ev("a4", "alice", seconds=400))
    row = outcome(db, exp, "alice")
    assert row.converted_at == at(100)
    with db.sessionmaker() as session:
        assert counts(session, exp) == {("purchase", "control", "converted", 0): 1}


def test_satisfaction_is_the_latest_rating_by_event_time(db, send, exp):
    send(rate("r1", "alice", 2, seconds=100))
    send(rate("r2", "alice", 5, seconds=300))
    send(rate("r3", "alice", 1, seconds=200))  # arrives late: older than r2, ignored
    row = outcome(db, exp, "alice")
    assert (row.rating, row.rated_at) == (5, at(300))
    with db.sessionmaker() as session:
        assert counts(session, exp) == {("purchase", "control", "rating", 5): 1}
    send(rate("r4", "alice", 3, seconds=400))
    with db.sessionmaker() as session:
        assert counts(session, exp) == {("purchase", "control", "rating", 3): 1}


def test_ratings_at_the_same_time_resolve_to_the_one_stored_last(db, send, exp):
    send(rate("y", "alice", 4, seconds=100), rate("x", "alice", 2, seconds=100))
    assert outcome(db, exp, "alice").rating == 4  # one request: the greater event_id
    send(rate("a", "alice", 1, seconds=100))
    assert outcome(db, exp, "alice").rating == 1  # a later request
    # Without timestamps every event of a request happens when it arrives.
    send(
        *[
            {"event_id": f"n{v}", "customer_id": "bob", "stage": "purchase", "type": "satisfaction", "value": v}
            for v in (5, 2, 3)
        ]
    )
    assert outcome(db, exp, "bob").rating == 5


def test_counters_are_dated_and_move_when_an_earlier_outcome_arrives_late(db, send, exp):
    day = timedelta(days=1).total_seconds()
    send(ev("c3", "alice", seconds=2 * day), rate("r3", "alice", 2, seconds=2 * day))
    send(ev("c2", "alice", seconds=day), rate("r2", "alice", 5, seconds=day))  # earlier conversion, older rating
    send(rate("r4", "alice", 4, seconds=3 * day))
    d = [(T0 + timedelta(days=n)).date() for n in range(4)]
    with db.sessionmaker() as session:
        assert daily_counts(session, exp) == {
            ("purchase", "control", d[1], "converted", 0): 1,
            ("purchase", "control", d[3], "rating", 4): 1,
        }
        # An outcome a moment before the exposure (within the skew) is dated at the exposure.
        with db.write() as write:
            expose(write, write.get(Experiment, exp), "late", exposed_at=T0 + timedelta(seconds=day - 60 * 60 * 12 + 2))
    send(ev("l1", "late", seconds=day - 60 * 60 * 12 - 1))  # 23:59:59 the day before
    with db.sessionmaker() as session:
        dated = daily_counts(session, exp)
    assert dated[("purchase", "control", d[1], "converted", 0)] == 2
    assert ("purchase", "control", d[0], "converted", 0) not in dated


def test_an_event_before_the_exposure_does_not_count_beyond_the_clock_skew(db, send, exp):
    send(ev("early", "alice", seconds=-6), ev("skewed", "bob", seconds=-4))
    assert outcome(db, exp, "alice") is None
    assert outcome(db, exp, "bob").converted_at == at(-4)  # within the 5 s tolerance
    with db.sessionmaker() as session:
        assert quality(session, exp) == {("purchase", "before_exposure"): 1}
    assert attributed(db, "early") == 0


def test_the_clock_skew_tolerance_is_a_setting(database_url, tmp_path, exp):
    strict = make_test_app(database_url, tmp_path, clock_skew_seconds=0.0)
    db = strict.extensions["db"]
    record_events(db, [ev("skewed", "bob", seconds=-1), ev("ok", "alice", seconds=0)], strict.extensions["settings"])
    assert outcome(db, exp, "bob") is None
    assert outcome(db, exp, "alice").converted_at == T0  # exposed at exactly that moment
    db.engine.dispose()


def test_an_exposure_made_after_the_event_arrived_never_captures_it(db, send, exp):
    """A clock running ahead sends an event "from the future"; the customer is exposed
    later, before that time: the event still did not follow the exposure."""
    now = utcnow()
    future = iso(now + timedelta(hours=2))
    send({"event_id": "ahead", "customer_id": "carol", "stage": "purchase", "type": "conversion", "timestamp": future})
    with db.write() as session:
        expose(session, session.get(Experiment, exp), "carol", exposed_at=now + timedelta(hours=1))
    with db.write() as session:
        rebuild_outcomes(session, session.get(Experiment, exp))
    assert outcome(db, exp, "carol") is None
    with db.sessionmaker() as session:
        assert session.scalar(select(UnmatchedEventCount.events).where(UnmatchedEventCount.stage == "purchase")) == 1


def test_only_experiments_measuring_the_stage_count_the_event(db, send, exp):
    with db.write() as session:
        onboarding = make_experiment(session, "onboarding", stages=("awareness", "purchase"))
        expose(session, onboarding, "alice", "treatment")
        onboarding_id = onboarding.id
    send(ev("aw", "alice", stage="awareness"), ev("pu", "alice", stage="purchase"))
    assert attributed(db, "aw") == 1 and attributed(db, "pu") == 2
    assert outcome(db, exp, "alice", "awareness") is None
    assert outcome(db, onboarding_id, "alice", "awareness").converted_at == at(60)
    assert outcome(db, exp, "alice").variant_id != outcome(db, onboarding_id, "alice").variant_id


def test_naming_an_experiment_restricts_attribution_to_it(db, send, exp):
    with db.write() as session:
        other = make_experiment(session, "other", stages=("purchase",))
        expose(session, other, "alice", "treatment")
        other_id = other.id
    send(ev("named", "alice", experiment="other"), ev("stranger", "dave", experiment="checkout"))
    assert outcome(db, exp, "alice") is None
    assert outcome(db, other_id, "alice").converted_at == at(60)
    with db.sessionmaker() as session:
        assert quality(session, exp) == {("purchase", "not_exposed"): 1}
        assert session.scalar(select(UnmatchedEventCount.events)) is None  # not_exposed is not also unmatched


def test_forced_customers_never_count(db, send, exp):
    send(ev("q1", "qa"), rate("q2", "qa", 5))
    assert outcome(db, exp, "qa") is None
    with db.sessionmaker() as session:
        assert counts(session, exp) == {}
        assert quality(session, exp) == {("purchase", "forced"): 2}


def test_a_stopped_experiment_counts_late_arrivals_of_earlier_events_only(db, send, exp):
    with db.write() as session:
        experiment = session.get(Experiment, exp)
        experiment.status, experiment.stopped_at = "stopped", at(1000)
    send(ev("before", "alice", seconds=999), ev("after", "bob", seconds=1001))
    assert outcome(db, exp, "alice").converted_at == at(999)
    assert outcome(db, exp, "bob") is None
    with db.sessionmaker() as session:
        assert quality(session, exp) == {("purchase", "after_stop"): 1}


def test_a_paused_experiment_still_counts_its_exposed_customers(db, send, exp):
    with db.write() as session:
        session.get(Experiment, exp).status = "paused"
    send(ev("p", "alice"))
    assert outcome(db, exp, "alice") is not None


def test_events_matching_no_exposure_are_stored_and_counted_per_stage_and_day(db, send, exp):
    """Also at a stage of a journey that no experiment measures: the event is journey
    data, stored and counted in the journey counters."""
    with db.write() as session:
        make_journey(session, "support", ["some-other-stage"])
    send(
        ev("u1", "nobody"),
        ev("u2", "nobody", stage="retention"),
        ev("u3", "nobody2"),
        ev("u4", "nobody", stage="some-other-stage"),
    )
    with db.sessionmaker() as session:
        assert session.scalar(select(Event.attributed).where(Event.event_id == "u1")) == 0
        rows = {(r.stage, r.day): r.events for r in session.scalars(select(UnmatchedEventCount))}
        journeys = {(j, stage, kind): n for (j, stage, _m, _p, kind, _v), n in journey_counts(session).items()}
    today = utcnow().date()
    assert rows == {("purchase", today): 2, ("retention", today): 1, ("some-other-stage", today): 1}
    checkout_journey = next(j for j, _s, _k in journeys if j != "support")
    assert journeys == {
        (checkout_journey, "purchase", "converted"): 2,
        (checkout_journey, "retention", "converted"): 1,
        ("support", "some-other-stage", "converted"): 1,
    }


def test_ratings_are_judged_against_their_question_whoever_rates(db, app, exp):
    """The question's scale holds for every rating, counted or not: a QA customer's
    or a stranger's 9 on a 1-5 question is refused, a 5 stored."""
    result = record_events(
        db, [rate("q", "qa", 9), rate("s", "stranger", 9), rate("ok", "qa", 5)], app.extensions["settings"]
    )
    assert (result.accepted, [(r.index, r.error) for r in result.rejected]) == (
        1,
        [(0, "value_out_of_scale"), (1, "value_out_of_scale")],
    )


# -- rebuild ---------------------------------------------------------------------------------


def test_rebuild_from_raw_events_equals_the_incrementally_kept_outcomes(db, app, exp):
    rng = random.Random(20240501)
    customers = [f"k{i}" for i in range(40)]
    with db.write() as session:
        checkout = session.get(Experiment, exp)
        onboarding = make_experiment(
            session, "onboarding", stages=("awareness", "purchase"), stopped_at=at(2000), status="stopped"
        )
        for i, customer in enumerate(customers):
            if i % 5 != 4:
                expose(
                    session,
                    checkout,
                    customer,
                    rng.choice(["control", "treatment"]),
                    exposed_at=at(rng.choice([0, 0, 20])),
                    forced=i % 13 == 0,
                )
            if i % 3 == 0:
                expose(session, onboarding, customer, rng.choice(["control", "treatment"]))
        onboarding_id = onboarding.id
    settings = app.extensions["settings"]
    accepted = 0
    for batch in random_workload(rng, [*customers, "ghost1", "ghost2"], batches=12, per_batch=40):
        result = record_events(db, batch, settings)
        assert result.rejected == ()
        accepted += result.accepted
    with db.write() as session:
        incremental = {eid: snapshot(session, eid) for eid in (exp, onboarding_id)}
        journeys = journey_snapshot(session)
        assert all(incremental[eid][0] for eid in incremental)  # the workload did produce outcomes
        assert {kind for (_stage, kind) in incremental[exp][2]} >= {"before_exposure", "forced"}
        assert {kind for (_stage, kind) in incremental[onboarding_id][2]} >= {"after_stop"}
        # Both journeys' rows, conversions and each question's ratings.
        assert {(row[0], row[3]) for row in journeys[0]} == {
            (checkout.journey_id, ""),
            (checkout.journey_id, "consideration-rating"),
            (checkout.journey_id, "purchase-rating"),
            (checkout.journey_id, "retention-rating"),
            (onboarding.journey_id, ""),
            (onboarding.journey_id, "awareness-rating"),
            (onboarding.journey_id, "purchase-rating-1-5"),
        }
        for eid in (exp, onboarding_id):
            rebuild_outcomes(session, session.get(Experiment, eid))
        rebuild_journey_counters(session)
    with db.sessionmaker() as session:
        for eid in (exp, onboarding_id):
            assert snapshot(session, eid) == incremental[eid]
        assert journey_snapshot(session) == journeys
    assert accepted > 300
