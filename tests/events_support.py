"""Seeding helpers shared by the event and aggregation tests: journeys, experiments,
variants and exposures written with the ORM (exposures are the assignment service's
to make; these tests only need them to exist), and readers of what ingest keeps."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from expplatform import journeys
from expplatform.ingest import stored_journey_counters, stored_outcomes
from expplatform.models import (
    EventQualityCount,
    Experiment,
    Exposure,
    Journey,
    JourneyCount,
    JourneyPersona,
    JourneyStage,
    OutcomeCount,
    RatingQuestion,
    Variant,
)
from expplatform.versioning import bump_version

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_experiment(
    session,
    key: str = "checkout",
    *,
    stages: Iterable[str] = ("consideration", "purchase", "retention"),
    target_stage: str | None = None,
    variants: Iterable[str] = ("control", "treatment"),
    scale: tuple[int, int] = (1, 5),
    status: str = "running",
    started_at: datetime = T0 - timedelta(days=1),
    stopped_at: datetime | None = None,
    journey: Journey | None = None,
    metrics: dict[str, str] | None = None,
) -> Experiment:
    """An experiment on ``stages`` of ``journey`` measuring ``metrics``, or (no
    journey) on the implicit journey of its stage list, with that journey's question
    of ``scale`` at each stage (made where missing). Bumps the definitions version,
    as every experiment change does, so caches see the new journey and questions."""
    stages = list(stages)
    fields: dict[str, Any] = (
        journeys.implicit_fields(session, stages, scale)
        if journey is None
        else {"journey": journey, "metrics": dict(metrics or {})}
    )
    experiment = Experiment(
        key=key,
        name=key.title(),
        stages=stages,
        target_stage=target_stage or stages[0],
        salt=key,
        **fields,
        status=status,
        started_at=started_at,
        stopped_at=stopped_at,
    )
    for position, variant in enumerate(variants):
        experiment.variants.append(Variant(key=variant, weight=1.0, position=position, is_control=position == 0))
    session.add(experiment)
    bump_version(session)
    session.flush()
    return experiment


def make_journey(
    session,
    key: str,
    stages: Iterable[str],
    questions: Iterable[tuple[str, str, int, int]] = (),
    *,
    personas: Iterable[str] = (),
    persona_attribute: str = "persona",
) -> Journey:
    """A journey with ``questions`` as (key, stage, min, max); bumps the definitions
    version, as every journey change must."""
    journey = Journey(
        key=key,
        name=key.title(),
        persona_attribute=persona_attribute,
        stages=[JourneyStage(key=s, name=s.title(), position=i) for i, s in enumerate(stages)],
        personas=[JourneyPersona(key=p, name=p.title(), position=i) for i, p in enumerate(personas)],
        questions=[
            RatingQuestion(key=q, stage=s, text=f"{q}?", scale_min=lo, scale_max=hi, position=i)
            for i, (q, s, lo, hi) in enumerate(questions)
        ],
    )
    session.add(journey)
    bump_version(session)
    session.flush()
    return journey


def expose(
    session,
    experiment: Experiment,
    customer_id: str,
    variant: str = "control",
    *,
    exposed_at: datetime = T0,
    forced: bool = False,
    attributes: dict[str, Any] | None = None,
    mismatches: int = 0,
) -> Exposure:
    variant_id = next(v.id for v in experiment.variants if v.key == variant)
    exposure = Exposure(
        experiment_id=experiment.id,
        variant_id=variant_id,
        customer_id=customer_id,
        exposed_at=exposed_at,
        forced=forced,
        attributes=attributes or {},
        mismatches=mismatches,
    )
    session.add(exposure)
    session.flush()
    return exposure


def counts(session, experiment_id: int) -> dict[tuple, int]:
    """Non-zero outcome counters summed over days, as {(stage, variant key, kind,
    value): customers}."""
    rows = session.execute(
        select(OutcomeCount.stage, Variant.key, OutcomeCount.kind, OutcomeCount.value, func.sum(OutcomeCount.customers))
        .join(Variant, Variant.id == OutcomeCount.variant_id)
        .where(OutcomeCount.experiment_id == experiment_id)
        .group_by(OutcomeCount.stage, Variant.key, OutcomeCount.kind, OutcomeCount.value)
    )
    return {(s, v, k, val): n for s, v, k, val, n in rows if n}


def daily_counts(session, experiment_id: int) -> dict[tuple, int]:
    """Non-zero outcome counters as {(stage, variant key, day, kind, value): customers}."""
    rows = session.execute(
        select(
            OutcomeCount.stage,
            Variant.key,
            OutcomeCount.day,
            OutcomeCount.kind,
            OutcomeCount.value,
            OutcomeCount.customers,
        )
        .join(Variant, Variant.id == OutcomeCount.variant_id)
        .where(OutcomeCount.experiment_id == experiment_id)
    )
    return {(s, v, d, k, val): n for s, v, d, k, val, n in rows if n}


def quality(session, experiment_id: int) -> dict[tuple, int]:
    rows = session.execute(
        select(EventQualityCount.stage, EventQualityCount.kind, EventQualityCount.events).where(
            EventQualityCount.experiment_id == experiment_id
        )
    )
    return {(s, k): n for s, k, n in rows if n}


def journey_counts(session, journey_id: int | None = None, *, by_day: bool = False) -> dict[tuple, int]:
    """Non-zero journey counters as {(journey key, stage, metric, persona, [day,]
    kind, value): customers}, summed over days unless ``by_day``."""
    day = (JourneyCount.day,) if by_day else ()
    query = (
        select(
            Journey.key,
            JourneyCount.stage,
            JourneyCount.metric,
            JourneyCount.persona,
            *day,
            JourneyCount.kind,
            JourneyCount.value,
            func.sum(JourneyCount.customers),
        )
        .join(Journey, Journey.id == JourneyCount.journey_id)
        .group_by(
            Journey.key,
            JourneyCount.stage,
            JourneyCount.metric,
            JourneyCount.persona,
            *day,
            JourneyCount.kind,
            JourneyCount.value,
        )
    )
    if journey_id is not None:
        query = query.where(JourneyCount.journey_id == journey_id)
    return {tuple(row[:-1]): row[-1] for row in session.execute(query) if row[-1]}


def journey_snapshot(session) -> tuple[list, list]:
    """Everything ingest maintains for the journeys, to compare with a rebuild."""
    return stored_journey_counters(session)


def snapshot(session, experiment_id: int) -> tuple[list, dict, dict]:
    """Everything ingest maintains for one experiment, to compare with a rebuild."""
    return (
        stored_outcomes(session, experiment_id),
        daily_counts(session, experiment_id),
        quality(session, experiment_id),
    )


def expected_journey_counts(
    events: Iterable[dict[str, Any]],
    journeys_spec: dict[str, dict[str, Any]],
    persona_of: Any,
    *,
    by_day: bool = False,
) -> dict[tuple, int]:
    """The journey counters computed independently from stored wire events (dicts
    with ``timestamp``, each event once, no two ratings of a customer to one question
    at the same time): per journey, customer and stage the first conversion, and per
    question the latest rating. ``journeys_spec``: journey key -> {"stages": [...],
    "questions": {question key: stage}}; ``persona_of(journey key, customer)``.
    A rating naming no question answers, in each journey with its stage, that
    journey's one question there."""
    first: dict[tuple, str] = {}
    latest: dict[tuple, tuple[str, int]] = {}
    for event in events:
        customer, stage, when = event["customer_id"], event.get("stage"), event["timestamp"]
        if event["type"] == "conversion":
            for journey, spec in journeys_spec.items():
                if stage in spec["stages"]:
                    key = (journey, customer, stage, "")
                    first[key] = min(first.get(key, when), when, key=_instant)
            continue
        if event.get("metric"):
            answered = [
                (j, event["metric"]) for j, spec in journeys_spec.items() if event["metric"] in spec["questions"]
            ]
        else:
            answered = []
            for journey, spec in journeys_spec.items():
                if stage in spec["stages"]:
                    (only,) = [q for q, s in spec["questions"].items() if s == stage]
                    answered.append((journey, only))
        for journey, question in answered:
            key = (journey, customer, journeys_spec[journey]["questions"][question], question)
            if key not in latest or _instant(when) > _instant(latest[key][0]):
                latest[key] = (when, event["value"])
    expected: dict[tuple, int] = {}

    def add(journey: str, customer: str, stage: str, metric: str, when: str, kind: str, value: int) -> None:
        day = (_instant(when).date(),) if by_day else ()
        cell = (journey, stage, metric, persona_of(journey, customer), *day, kind, value)
        expected[cell] = expected.get(cell, 0) + 1

    for (journey, customer, stage, metric), when in first.items():
        add(journey, customer, stage, metric, when, "converted", 0)
    for (journey, customer, stage, metric), (when, value) in latest.items():
        add(journey, customer, stage, metric, when, "rating", value)
    return expected


def _instant(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp).astimezone(UTC)


def ev(event_id, customer_id, stage="purchase", type="conversion", seconds=60.0, **extra):
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "stage": stage,
        "type": type,
        "timestamp": iso(at(seconds)),
        **extra,
    }


def rate(event_id, customer_id, value, seconds=60.0, stage="purchase", **extra):
    return ev(event_id, customer_id, stage, "satisfaction", seconds, value=value, **extra)


# The questions asked at each stage: checkout's journey (consideration, purchase,
# retention) and onboarding's (awareness, purchase) each ask one per stage.
QUESTIONS = {
    "awareness": ["awareness-rating"],
    "consideration": ["consideration-rating"],
    "purchase": ["purchase-rating", "purchase-rating-1-5"],
    "retention": ["retention-rating"],
}


def random_workload(rng: random.Random, customers: list[str], batches: int, per_batch: int) -> list[list[dict]]:
    """Batches around checkout's exposures (T0, T0 + 20 s) and onboarding's stop (T0 +
    2000 s), on later days and out of order, with re-sent events, ratings naming their
    question (with or without the stage) and events naming an experiment."""
    stages = ["awareness", "consideration", "purchase", "retention"]
    sent: list[dict] = []
    out = []
    for b in range(batches):
        batch = []
        for i in range(per_batch):
            if sent and rng.random() < 0.1:
                batch.append(rng.choice(sent))  # a re-sent event
                continue
            customer = rng.choice(customers)
            # Around the exposure and the stop, and on later days (out of order).
            seconds = rng.choice([-30, -6, -5, -4, 0, 10, 10, 500, 1500, 2500, 90_000, 180_000])
            kind = rng.random()
            stage = rng.choice(stages)
            if kind < 0.5:
                event = ev(f"b{b}e{i}", customer, stage, seconds=seconds)
            elif kind < 0.75:
                event = rate(f"b{b}e{i}", customer, rng.randint(1, 5), seconds=seconds, stage=stage)
            else:  # naming the question: checkout's, or onboarding's, at the stage
                question = rng.choice(QUESTIONS[stage])
                event = rate(f"b{b}e{i}", customer, rng.randint(1, 5), seconds=seconds, stage=stage, metric=question)
                event["type"] = rng.choice(["rating", "satisfaction"])
                if rng.random() < 0.5:
                    del event["stage"]
            if rng.random() < 0.1 and "metric" not in event:
                event["experiment"] = rng.choice(["checkout", "onboarding"])
                if event["experiment"] == "onboarding" and event["stage"] not in ("awareness", "purchase"):
                    event["stage"] = "purchase"
                if event["experiment"] == "checkout" and event["stage"] == "awareness":
                    event["stage"] = "purchase"
            batch.append(event)
            sent.append(event)
        out.append(list({e["event_id"]: e for e in batch}.values()))
    return out
