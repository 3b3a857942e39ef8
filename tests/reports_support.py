"""A seeded journey experiment for the report tests: exposures written with the ORM
over three days, outcomes sent through the events service, and the counts the
seeding meant to produce, to check the report against."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from analysis import analyze
from expplatform.ingest import record_events
from expplatform.models import Experiment, Variant, utcnow

from .events_support import expose, iso, make_experiment

WAIT = 60

START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
STAGES = ("browse", "cart", "purchase")
# Conversion probability per stage (cumulative funnel) and rating weights per variant.
FUNNEL = {"control": (0.7, 0.35, 0.10), "bold": (0.7, 0.40, 0.18), "plain": (0.7, 0.34, 0.09)}
RATINGS = {"control": (1, 1, 2, 3, 3), "bold": (1, 1, 1, 3, 4), "plain": (2, 2, 2, 2, 2)}


@dataclass
class Seeded:
    experiment_id: int
    key: str
    exposed: dict[str, int] = field(default_factory=dict)
    converted: dict[tuple[str, str], int] = field(default_factory=dict)
    rated: dict[tuple[str, str], list[int]] = field(default_factory=dict)


def seed_journey(
    app,
    db,
    *,
    key: str = "checkout",
    customers: int = 900,
    seed: int = 7,
    days: int = 3,
    variants=("control", "bold", "plain"),
    **experiment,
) -> Seeded:
    """``customers`` exposed evenly over ``days`` days, each converting down the funnel
    of their variant and rating the last stage they reached."""
    rng = np.random.default_rng(seed)
    with db.write() as session:
        made = make_experiment(
            session,
            key,
            stages=STAGES,
            target_stage="cart",
            variants=variants,
            started_at=START - timedelta(hours=1),
            **experiment,
        )
        seeded = Seeded(made.id, key)
        events = []
        for i in range(customers):
            variant = variants[i % len(variants)]
            at = START + timedelta(days=(i * days) // customers, minutes=i % 500)
            expose(
                session,
                made,
                f"u{i}",
                variant,
                exposed_at=at,
                attributes={
                    "platform": ("ios", "android", "web")[(i // 3) % 3],
                    "persona": "new" if i % 2 else "loyal",
                },
            )
            seeded.exposed[variant] = seeded.exposed.get(variant, 0) + 1
            reached = None
            for stage, p in zip(STAGES, FUNNEL[variant], strict=True):
                if rng.random() >= p / (FUNNEL[variant][STAGES.index(stage) - 1] if stage != STAGES[0] else 1):
                    break
                events.append(
                    {
                        "event_id": f"{key}-{i}-{stage}",
                        "customer_id": f"u{i}",
                        "stage": stage,
                        "type": "conversion",
                        "timestamp": iso(at + timedelta(minutes=5)),
                    }
                )
                seeded.converted[(stage, variant)] = seeded.converted.get((stage, variant), 0) + 1
                reached = stage
            if reached is not None:
                weights = np.array(RATINGS[variant], float)
                rating = int(rng.choice(5, p=weights / weights.sum())) + 1
                events.append(
                    {
                        "event_id": f"{key}-{i}-rating",
                        "customer_id": f"u{i}",
                        "stage": reached,
                        "type": "satisfaction",
                        "value": rating,
                        "timestamp": iso(at + timedelta(minutes=6)),
                    }
                )
                seeded.rated.setdefault((reached, variant), []).append(rating)
    settings = app.extensions["settings"]
    for start in range(0, len(events), settings.max_batch_events):
        result = record_events(db, events[start : start + settings.max_batch_events], settings)
        assert not result.rejected, result.rejected[:3]
    return seeded


def fake_fit(stats, params, *, prior, rule, progress):
    result = analyze(stats, prior=prior, rule=rule, seed=5).to_dict()
    return {
        **result,
        "method": "hierarchical",
        "diagnostics": {
            "r_hat_max": 1.002,
            "ess_bulk_min": 900.0,
            "ess_tail_min": 800.0,
            "divergences": 0,
            "draws": params.draws,
            "chains": params.chains,
            "sampler": "fake",
            "passed": True,
        },
    }


JOURNEY = ("awareness", "browse", "cart", "purchase")


def seed_counts(
    app,
    db,
    key: str,
    counts: dict[str, tuple[int, dict[str, int]]],
    *,
    stages=JOURNEY,
    target="cart",
    ratings: dict[str, dict[str, list[int]]] | None = None,
    attributes=None,
    started=None,
    status="running",
):
    """``counts[variant] = (exposed, {stage: converters})``: the first customers of a
    variant convert at each stage; ``ratings[variant][stage]`` are the ratings of its
    first customers there. A stage missing from both gets no event at all."""
    started = started or utcnow() - timedelta(days=2)
    events = []
    with db.write() as session:
        experiment = make_experiment(
            session, key, stages=stages, target_stage=target, variants=tuple(counts), started_at=started, status=status
        )
        for variant, (exposed, converters) in counts.items():
            for i in range(exposed):
                customer = f"{variant}-{i}"
                at = started + timedelta(hours=1, seconds=i)
                attrs = attributes(variant, i) if attributes else {"platform": ("ios", "web")[i % 2]}
                expose(session, experiment, customer, variant, exposed_at=at, attributes=attrs)
                for stage in stages:
                    if i < converters.get(stage, 0):
                        events.append(event_of(key, customer, stage, at, "conversion"))
                    values = (ratings or {}).get(variant, {}).get(stage, [])
                    if i < len(values):
                        events.append(event_of(key, customer, stage, at, "satisfaction", values[i]))
    settings = app.extensions["settings"]
    for start in range(0, len(events), settings.max_batch_events):
        result = record_events(db, events[start : start + settings.max_batch_events], settings)
        assert not result.rejected, result.rejected[:3]


def event_of(key, customer, stage, at, kind, value=None):
    event = {
        "event_id": f"{key}-{customer}-{stage}-{kind}",
        "customer_id": customer,
        "stage": stage,
        "type": kind,
        "timestamp": iso(at + timedelta(minutes=5)),
    }
    if value is not None:
        event["value"] = value
    return event


# -- an experiment whose stages ask different questions, or none -------------------------------

# A journey whose stages ask different rating questions: none at browse, a 1-5 CSAT at
# purchase, a 1-7 effort score at retention, a 0-10 recommendation (NPS) at advocacy.
# The experiment measures browse, purchase, retention and advocacy, with the purchase
# and advocacy questions only: at retention it measures conversion alone, although
# the journey asks a question there (ratings to it are no rating of the experiment).
QUESTION_STAGES = ("browse", "purchase", "retention", "advocacy")
QUESTIONS = {  # key: (stage, text, scale min, scale max)
    "checkout-csat": ("purchase", "How easy was checkout?", 1, 5),
    "retention-effort": ("retention", "How much effort was it to keep using us?", 1, 7),
    "recommend-nps": ("advocacy", "How likely are you to recommend us to a friend?", 0, 10),
}
MEASURED = {"purchase": "checkout-csat", "advocacy": "recommend-nps"}
MIXED_START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


@dataclass
class SeededQuestions(Seeded):
    # Ratings sent to the journey's questions that the experiment does not measure.
    unmeasured: dict[tuple[str, str], list[int]] = field(default_factory=dict)


def _mixed_outcomes(i: int, j: int) -> list[tuple[str, bool, str | None, int | None]]:
    """Customer ``i`` of the ``j``-th variant: per stage (stage, converted, question,
    rating). The treatment converts more at purchase and rates higher; every customer
    pattern is a formula, so the test knows each count exactly."""
    outcomes: list[tuple[str, bool, str | None, int | None]] = [("browse", i % 10 < 7, None, None)]
    outcomes.append(("purchase", i % 10 < 3 + j, "checkout-csat", 1 + (i // 3 + 2 * j) % 5 if i % 3 == 0 else None))
    outcomes.append(("retention", i % 10 < 2, "retention-effort", 1 + i % 7 if i % 4 == 0 else None))
    outcomes.append(("advocacy", i % 10 == 0, "recommend-nps", (i // 2 * 3 + 2 * j) % 11 if i % 2 == 0 else None))
    return outcomes


def seed_questions(
    app, db, *, via: str, client_api=None, key: str = "mixed", customers: int = 150, variants=("control", "treatment")
) -> SeededQuestions:
    """The mixed-question journey and experiment, ``customers`` exposed per variant
    (attribute ``platform`` ios/web), and their outcomes: sent as events through the
    events API (``via='events'``: ratings name their question, as client apps send
    them), or written as the outcome rows and counters ingest keeps (``via='rows'``:
    ratings to unmeasured questions never reach those)."""
    from expplatform.models import Journey, JourneyStage, Outcome, OutcomeCount, RatingQuestion

    with db.write() as session:
        journey = Journey(
            key=f"{key}-journey",
            name="Shop journey",
            stages=[JourneyStage(key=s, name=s.title(), position=n) for n, s in enumerate(QUESTION_STAGES)],
            questions=[
                RatingQuestion(key=q, stage=stage, text=text, scale_min=lo, scale_max=hi, position=n)
                for n, (q, (stage, text, lo, hi)) in enumerate(QUESTIONS.items())
            ],
        )
        session.add(journey)
        session.flush()
        experiment = Experiment(
            key=key,
            name="Mixed questions",
            journey=journey,
            stages=list(QUESTION_STAGES),
            metrics=dict(MEASURED),
            target_stage="purchase",
            salt=key,
            status="running",
            started_at=MIXED_START - timedelta(hours=1),
        )
        for position, variant in enumerate(variants):
            experiment.variants.append(Variant(key=variant, weight=1.0, position=position, is_control=position == 0))
        session.add(experiment)
        session.flush()
        seeded = SeededQuestions(experiment.id, key)
        variant_ids = {v.key: v.id for v in experiment.variants}
        events: list[dict] = []
        counters: Counter = Counter()
        for j, variant in enumerate(variants):
            for i in range(customers):
                customer = f"{variant}-{i}"
                exposed_at = MIXED_START + timedelta(seconds=i)
                at = exposed_at + timedelta(minutes=5)
                expose(
                    session,
                    experiment,
                    customer,
                    variant,
                    exposed_at=exposed_at,
                    attributes={"platform": ("ios", "web")[i % 2]},
                )
                seeded.exposed[variant] = seeded.exposed.get(variant, 0) + 1
                for stage, converted, question, rating in _mixed_outcomes(i, j):
                    measured = question is not None and MEASURED.get(stage) == question
                    if converted:
                        seeded.converted[(stage, variant)] = seeded.converted.get((stage, variant), 0) + 1
                        events.append(event_of(key, customer, stage, exposed_at, "conversion"))
                    if rating is not None:
                        book = seeded.rated if measured else seeded.unmeasured
                        book.setdefault((stage, variant), []).append(rating)
                        events.append(
                            {**event_of(key, customer, stage, exposed_at, "rating", rating), "metric": question}
                        )
                    counted = rating if measured else None
                    if via == "rows" and (converted or counted is not None):
                        session.add(
                            Outcome(
                                experiment_id=experiment.id,
                                customer_id=customer,
                                stage=stage,
                                variant_id=variant_ids[variant],
                                converted_at=at if converted else None,
                                rating=counted,
                                rated_at=at if counted is not None else None,
                            )
                        )
                        if converted:
                            counters[(stage, variant_ids[variant], at.date(), "converted", 0)] += 1
                        if counted is not None:
                            counters[(stage, variant_ids[variant], at.date(), "rating", counted)] += 1
        for (stage, variant_id, day, kind, value), n in counters.items():
            session.add(
                OutcomeCount(
                    experiment_id=experiment.id,
                    stage=stage,
                    variant_id=variant_id,
                    day=day,
                    kind=kind,
                    value=value,
                    customers=n,
                )
            )
    if via == "events":
        assert client_api is not None, "the events API needs a client key"
        batch = app.extensions["settings"].max_batch_events
        for start in range(0, len(events), batch):
            response = client_api.post("/api/v1/events", json={"events": events[start : start + batch]})
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json()["rejected"] == [], response.get_json()["rejected"][:3]
    else:
        assert via == "rows", via
    return seeded
