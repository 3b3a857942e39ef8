"""Exact counts end to end: a few thousand simulated customers are assigned and send
known events concurrently through the real HTTP API (assign, then batched events with
re-sent duplicates); the aggregated statistics then equal exactly what was sent."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import requests

from analysis.types import CellStats, ExperimentStats, Scale
from expplatform import aggregation, journeys
from expplatform.ingest import rebuild_outcomes
from expplatform.models import Experiment, Variant
from expplatform.versioning import bump_version
from tests.events_support import iso, quality, snapshot

STAGES = ("consideration", "purchase", "retention")
VARIANTS = ("control", "treatment")
CUSTOMERS = 2000
THREADS = 8
FORCED = {"qa-0": "treatment", "qa-1": "control"}
# Events happen this long after the test starts: after every assignment however slow
# the machine (an event more than the clock skew before its exposure would rightly not
# count), and well within the 24 h a timestamp may lead its arrival.
LEAD = timedelta(hours=1)


def _seed(db) -> int:
    with db.write() as session:
        experiment = Experiment(
            key="journey",
            name="Journey",
            stages=list(STAGES),
            target_stage="purchase",
            salt="journey",
            status="running",
            traffic=0.8,
            **journeys.implicit_fields(session, STAGES),
            forced_variants=dict(FORCED),
            started_at=datetime.now(UTC),
        )
        experiment.variants = [
            Variant(key=v, weight=1.0, position=i, is_control=i == 0) for i, v in enumerate(VARIANTS)
        ]
        session.add(experiment)
        bump_version(session)
        session.flush()
        return experiment.id


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
            events.append(
                {
                    "customer_id": customer,
                    "stage": stage,
                    "type": "satisfaction",
                    "value": rng.randint(1, 5),
                    "timestamp": iso(start + LEAD + timedelta(seconds=40 + 10 * s + k)),
                }
            )
    rng.shuffle(events)  # arrival order is not event order
    for n, event in enumerate(events):
        event["event_id"] = f"{customer}-{n}"
    return events


def test_aggregates_equal_exactly_what_was_sent(live_server, db, client_key):
    experiment_id = _seed(db)
    start = datetime.now(UTC)
    rng = random.Random(4)
    customers = [f"u{i}" for i in range(CUSTOMERS)] + list(FORCED)
    plans = {c: _plan(rng, c, start) for c in customers}
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
            response = http.post(
                f"{live_server}/api/v1/assign",
                json={"customer_id": customer, "experiments": ["journey"]},
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

    # What the statistics must be, from what was sent and what assignment answered.
    exposed = {v: 0 for v in VARIANTS}
    converted: dict[tuple[str, str], int] = defaultdict(int)
    ratings: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 5)
    forced_events: dict[str, int] = defaultdict(int)
    for customer, answer in assigned.items():
        if customer in FORCED:
            assert answer["variant"] == FORCED[customer] and answer.get("forced") is True
            for event in plans[customer]:
                forced_events[event["stage"]] += 1
            continue
        if not answer["enrolled"]:
            continue
        variant = answer["variant"]
        exposed[variant] += 1
        for stage in STAGES:
            events = [e for e in plans[customer] if e["stage"] == stage]
            if any(e["type"] == "conversion" for e in events):
                converted[(stage, variant)] += 1
            rated = [e for e in events if e["type"] == "satisfaction"]
            if rated:
                latest = max(rated, key=lambda e: e["timestamp"])
                ratings[(stage, variant)][latest["value"] - 1] += 1
    assert 0 < sum(exposed.values()) < CUSTOMERS  # traffic 0.8: some customers were left out
    expected = ExperimentStats(
        STAGES,
        "purchase",
        VARIANTS,
        "control",
        (0.5, 0.5),
        Scale(1, 5),
        {s: {v: CellStats(exposed[v], converted[(s, v)], tuple(ratings[(s, v)])) for v in VARIANTS} for s in STAGES},
    )
    with db.write() as session:
        experiment = session.get(Experiment, experiment_id)
        assert aggregation.experiment_stats(session, experiment) == expected
        assert aggregation.daily_stats(session, experiment)[-1][1] == expected
        assert quality(session, experiment_id) == {(s, "forced"): n for s, n in forced_events.items()}
        incremental = snapshot(session, experiment_id)
        rebuild_outcomes(session, experiment)
        assert snapshot(session, experiment_id) == incremental
