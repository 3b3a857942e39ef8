"""Outcome rows and counters recomputed from the raw events and exposures, in SQL,
by the same rules as ingest (``attribution`` and ``outcomes``).

Ingest maintains them incrementally; this is the independent recomputation that
proves them (tests and ``bench/ingest.py`` compare both) and repairs them after an
incident. It shares no code with the incremental path on purpose, except the
counters' calendar (``counters``), which both must agree on by definition.
"""

from __future__ import annotations

from sqlalchemy import and_, case, delete, func, insert, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from ..counters import not_before, utc_day
from ..models import Event, EventQualityCount, Experiment, Exposure, Outcome, OutcomeCount


def rebuild_outcomes(session: Session, experiment: Experiment) -> None:
    """Recompute the experiment's outcome rows, outcome counts and data-quality
    counts from the raw events and exposures, in SQL, by the same rules as ingest,
    in the caller's transaction."""
    for model in (OutcomeCount, EventQualityCount, Outcome):
        session.execute(delete(model).where(model.experiment_id == experiment.id))
    stages = list(experiment.stages)
    candidates = (
        select(
            Event.id,
            Event.customer_id,
            Event.stage,
            Event.type,
            Event.value,
            Event.occurred_at,
            Event.exposure_cutoff,
            Exposure.variant_id,
            Exposure.exposed_at,
            Exposure.forced,
        )
        .join(Exposure, and_(Exposure.customer_id == Event.customer_id, Exposure.experiment_id == experiment.id))
        .where(
            Event.stage.in_(stages),
            or_(Event.experiment_key.is_(None), Event.experiment_key == experiment.key),
            Exposure.exposed_at <= Event.received_at,
        )
    )
    counts = candidates.where(Exposure.forced.is_(False), Exposure.exposed_at <= Event.exposure_cutoff)
    if experiment.stopped_at is not None:
        counts = counts.where(Event.occurred_at <= experiment.stopped_at)
    counted = counts.where(
        or_(Event.type == "conversion", Event.value.between(experiment.scale_min, experiment.scale_max))
    ).subquery()
    latest = func.row_number().over(
        partition_by=(counted.c.customer_id, counted.c.stage, counted.c.type),
        order_by=(counted.c.occurred_at.desc(), counted.c.id.desc()),
    )
    ranked = select(counted, latest.label("rn")).subquery()
    is_latest_rating = and_(ranked.c.type == "satisfaction", ranked.c.rn == 1)
    per_row = select(
        literal(experiment.id).label("experiment_id"),
        ranked.c.customer_id,
        ranked.c.stage,
        ranked.c.variant_id,
        func.min(case((ranked.c.type == "conversion", ranked.c.occurred_at))).label("converted_at"),
        func.max(case((is_latest_rating, ranked.c.value))).label("rating"),
        func.max(case((is_latest_rating, ranked.c.occurred_at))).label("rated_at"),
        func.max(case((is_latest_rating, ranked.c.id))).label("rating_event_id"),
    ).group_by(ranked.c.customer_id, ranked.c.stage, ranked.c.variant_id)
    session.execute(
        insert(Outcome).from_select(
            [
                "experiment_id",
                "customer_id",
                "stage",
                "variant_id",
                "converted_at",
                "rating",
                "rated_at",
                "rating_event_id",
            ],
            per_row,
        )
    )
    exposure = and_(Exposure.experiment_id == Outcome.experiment_id, Exposure.customer_id == Outcome.customer_id)
    for kind, value_column, moment in (
        ("converted", literal(0), Outcome.converted_at),
        ("rating", Outcome.rating, Outcome.rated_at),
    ):
        day = utc_day(session, not_before(moment, Exposure.exposed_at))
        session.execute(
            insert(OutcomeCount).from_select(
                ["experiment_id", "stage", "variant_id", "day", "kind", "value", "customers"],
                select(
                    Outcome.experiment_id,
                    Outcome.stage,
                    Outcome.variant_id,
                    day,
                    literal(kind),
                    value_column,
                    func.count(),
                )
                .join(Exposure, exposure)
                .where(Outcome.experiment_id == experiment.id, moment.is_not(None))
                .group_by(Outcome.experiment_id, Outcome.stage, Outcome.variant_id, day, value_column),
            )
        )
    _rebuild_quality(session, experiment, candidates)


def _rebuild_quality(session: Session, experiment: Experiment, candidates: Select) -> None:
    c = candidates.subquery()
    reason = case(
        (c.c.forced.is_(True), literal("forced")),
        (c.c.exposed_at > c.c.exposure_cutoff, literal("before_exposure")),
        else_=literal("after_stop"),
    )
    held_back = or_(c.c.forced.is_(True), c.c.exposed_at > c.c.exposure_cutoff)
    if experiment.stopped_at is not None:
        held_back = or_(held_back, c.c.occurred_at > experiment.stopped_at)
    session.execute(
        insert(EventQualityCount).from_select(
            ["experiment_id", "stage", "kind", "events"],
            select(literal(experiment.id), c.c.stage, reason, func.count())
            .where(held_back)
            .group_by(c.c.stage, reason),
        )
    )
    exposed_then = (
        select(Exposure.id)
        .where(
            Exposure.experiment_id == experiment.id,
            Exposure.customer_id == Event.customer_id,
            Exposure.exposed_at <= Event.received_at,
        )
        .exists()
    )
    session.execute(
        insert(EventQualityCount).from_select(
            ["experiment_id", "stage", "kind", "events"],
            select(literal(experiment.id), Event.stage, literal("not_exposed"), func.count())
            .where(Event.experiment_key == experiment.key, ~exposed_then)
            .group_by(Event.stage),
        )
    )


def stored_outcomes(session: Session, experiment_id: int) -> list[tuple]:
    """Every outcome row of an experiment, in key order (for comparisons and exports)."""
    return [
        tuple(row)
        for row in session.execute(
            select(
                Outcome.customer_id,
                Outcome.stage,
                Outcome.variant_id,
                Outcome.converted_at,
                Outcome.rating,
                Outcome.rated_at,
                Outcome.rating_event_id,
            )
            .where(Outcome.experiment_id == experiment_id)
            .order_by(Outcome.customer_id, Outcome.stage)
        )
    ]
