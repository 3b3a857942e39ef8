"""Seeding helpers shared by the event and aggregation tests: experiments, variants
and exposures written with the ORM (exposures are the assignment service's to make;
these tests only need them to exist)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from expplatform import journeys
from expplatform.ingest import stored_outcomes
from expplatform.models import EventQualityCount, Experiment, Exposure, OutcomeCount, Variant

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
) -> Experiment:
    stages = list(stages)
    experiment = Experiment(
        key=key,
        name=key.title(),
        stages=stages,
        target_stage=target_stage or stages[0],
        salt=key,
        **journeys.implicit_fields(session, stages, scale),
        status=status,
        started_at=started_at,
        stopped_at=stopped_at,
    )
    for position, variant in enumerate(variants):
        experiment.variants.append(Variant(key=variant, weight=1.0, position=position, is_control=position == 0))
    session.add(experiment)
    session.flush()
    return experiment


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


def snapshot(session, experiment_id: int) -> tuple[list, dict, dict]:
    """Everything ingest maintains for one experiment, to compare with a rebuild."""
    return (
        stored_outcomes(session, experiment_id),
        daily_counts(session, experiment_id),
        quality(session, experiment_id),
    )
