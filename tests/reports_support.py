"""A seeded journey experiment for the report tests: exposures written with the ORM
over three days, outcomes sent through the events service, and the counts the
seeding meant to produce, to check the report against."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from analysis import analyze
from expplatform.ingest import record_events
from expplatform.models import utcnow

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
