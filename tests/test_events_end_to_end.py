"""Exact counts end to end: a few thousand simulated customers are assigned (with a
persona attribute) and send known events concurrently through the real HTTP API
(assign, then batched events with re-sent duplicates, ratings naming their question
or only their stage); the experiment's counters and the journey's counters then
equal exactly what was sent, and a rebuild from the raw events reproduces them.

(The counters are what a report sums; ``aggregation`` is tested on them in
``test_aggregation``.)"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import func, select

from expplatform import journeys
from expplatform.ingest import rebuild_journey_counters, rebuild_outcomes
from expplatform.models import Experiment, Exposure, JourneyPersona, Variant
from expplatform.versioning import bump_version
from tests.events_support import (
    counts,
    expected_journey_counts,
    iso,
    journey_counts,
    journey_snapshot,
    quality,
    snapshot,
)

STAGES = ("consideration", "purchase", "retention")
VARIANTS = ("control", "treatment")
CUSTOMERS = 2000
THREADS = 8
FORCED = {"qa-0": "treatment", "qa-1": "control"}
# Personas the journey declares, and what customers' assign calls say: a declared
# persona, an undeclared value, or nothing (then the journey counts them under '').
PERSONAS = ("bargain-hunter", "loyal")
SENT_PERSONAS = (*PERSONAS, "tourist", None)
# Events happen this long after the test starts: after every assignment however slow
# the machine (an event more than the clock skew before its exposure would rightly not
# count), and well within the 24 h a timestamp may lead its arrival.
LEAD = timedelta(hours=1)


def _seed(db) -> tuple[int, str]:
    with db.write() as session:
        fields = journeys.implicit_fields(session, STAGES)
        journey = fields["journey"]
        journey.personas = [JourneyPersona(key=p, name=p, position=i) for i, p in enumerate(PERSONAS)]
        experiment = Experiment(
            key="journey",
            name="Journey",
            stages=list(STAGES),
            target_stage="purchase",
            salt="journey",
            status="running",
            traffic=0.8,
            **fields,
            forced_variants=dict(FORCED),
            started_at=datetime.now(UTC),
        )
        experiment.variants = [
            Variant(key=v, weight=0.5, position=i, is_control=i == 0) for i, v in enumerate(VARIANTS)
        ]
        session.add(experiment)
        bump_version(session)
        session.flush()
        return experiment.id, journey.key


def _plan(rng: random.Random, customer: str, start: datetime) -> list[dict]:
    """Known events for one customer: conversions (sometimes repeated) and ratings at
    distinct times, all after the assignment."""
    events = []
    for s, stage in enumerate(STAGES):
        for k in range(rng.choice([0, 0, 1, 1, 2])):
            events.append(
                {
                    "customer_id": customer,
                    "stage": stage,
                    "type": "conversion",
                    "timestamp": iso(start + LEAD + timedelta(seconds=10 * s + k)),
                }
            )
        for k in range(rng.choice([0, 1, 1, 2, 3])):
            rating = {
                "customer_id": customer,
                "type": "satisfaction",
                "stage": stage,
                "value": rng.randint(1, 5),
                "timestamp": iso(start + LEAD + timedelta(seconds=40 + 10 * s + k)),
            }
            if rng.random() < 0.5:  # the new form: naming the question, the stage left out
                rating.update(type="rating", metric=f"{stage}-rating")
                del rating["stage"]
            events.append(rating)
    rng.shuffle(events)  # arrival order is not event order
    for n, event in enumerate(events):
        event["event_id"] = f"{customer}-{n}"
    return events


def test_counters_equal_exactly_what_was_sent(live_server, db, client_key):
    experiment_id, journey_key = _seed(db)
    start = datetime.now(UTC)
    rng = random.Random(4)
    customers = [f"u{i}" for i in range(CUSTOMERS)] + list(FORCED)
    plans = {c: _plan(rng, c, start) for c in customers}
    personas = {c: rng.choice(SENT_PERSONAS) for c in customers}
    headers = {"Authorization": f"Bearer {client_key}"}
    assigned: dict[str, dict] = {}
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def simulate(mine: list[str], seed: int) -> None:
        local = random.Random(seed)
        http = requests.Session()
        pending: list[dict] = []
        sent: list[dict] = []

        def flush() -> None:
            resend = local.sample(sent, k=min(len(sent), len(pending) // 10))  # re-sent: duplicates
            response = http.post(
                f"{live_server}/api/v1/events", json={"events": pending + resend}, headers=headers, timeout=120
            )
            body = response.json()
            if response.status_code != 200 or body["rejected"] or body["accepted"] != len(pending):
                failures.append(f"events: {response.status_code} {body}")
            sent.extend(pending)
            pending.clear()

        barrier.wait(timeout=60)
        for customer in mine:
            attributes = {"persona": personas[customer]} if personas[customer] else {}
            response = http.post(
                f"{live_server}/api/v1/assign",
                json={"customer_id": customer, "experiments": ["journey"], "attributes": attributes},
                headers=headers,
                timeout=60,
            )
            if response.status_code != 200:
                failures.append(f"assign: {response.status_code} {response.text[:200]}")
                continue
            with lock:
                assigned[customer] = response.json()["assignments"][0]
            pending.extend(plans[customer])
            if len(pending) >= 200:
                flush()
        if pending:
            flush()

    threads = [threading.Thread(target=simulate, args=(customers[t::THREADS], t)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(assigned) == len(customers)

    # What the counters must be, from what was sent and what assignment answered.
    exposed = {v: 0 for v in VARIANTS}
    expected: dict[tuple, int] = defaultdict(int)
    forced_events: dict[str, int] = defaultdict(int)
    for customer, answer in assigned.items():
        if customer in FORCED:
            assert answer["variant"] == FORCED[customer] and answer.get("forced") is True
            for event in plans[customer]:
                forced_events[event.get("stage") or event["metric"].removesuffix("-rating")] += 1
            continue
        if not answer["enrolled"]:
            continue
        variant = answer["variant"]
        exposed[variant] += 1
        for stage in STAGES:
            events = [
                e for e in plans[customer] if e.get("stage", e.get("metric", "").removesuffix("-rating")) == stage
            ]
            if any(e["type"] == "conversion" for e in events):
                expected[(stage, variant, "converted", 0)] += 1
            rated = [e for e in events if e["type"] != "conversion"]
            if rated:
                latest = max(rated, key=lambda e: e["timestamp"])
                expected[(stage, variant, "rating", latest["value"])] += 1
    assert 0 < sum(exposed.values()) < CUSTOMERS  # traffic 0.8: some customers were left out
    assert min(exposed.values()) > 0  # weights 0.5 each: both variants have customers
    # Every customer counts in the journey, exposed or not, with the persona their
    # exposure carried (none for those not enrolled: no exposure was made).
    spec = {journey_key: {"stages": STAGES, "questions": {f"{s}-rating": s for s in STAGES}}}

    def persona_of(_journey: str, customer: str) -> str:
        has_exposure = customer in FORCED or assigned[customer]["enrolled"]
        sent = personas[customer] if has_exposure else None
        return sent if sent in PERSONAS else ""

    sent_events = [e for c in customers for e in plans[c]]
    expected_journey = expected_journey_counts(sent_events, spec, persona_of, by_day=True)
    assert {cell[3] for cell in expected_journey} == {"", *PERSONAS}
    with db.write() as session:
        experiment = session.get(Experiment, experiment_id)
        exposures = session.execute(
            select(Variant.key, func.count())
            .join(Exposure, Exposure.variant_id == Variant.id)
            .where(Exposure.experiment_id == experiment_id, Exposure.forced.is_(False))
            .group_by(Variant.key)
        )
        assert {v: n for v, n in exposures} == exposed
        assert counts(session, experiment_id) == expected
        assert journey_counts(session, by_day=True) == expected_journey
        assert quality(session, experiment_id) == {(s, "forced"): n for s, n in forced_events.items()}
        incremental, journey_state = snapshot(session, experiment_id), journey_snapshot(session)
        rebuild_outcomes(session, experiment)
        rebuild_journey_counters(session)
        assert snapshot(session, experiment_id) == incremental
        assert journey_snapshot(session) == journey_state
