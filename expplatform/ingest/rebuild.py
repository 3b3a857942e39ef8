"""Outcome rows and counters recomputed from the raw events and exposures, in SQL,
by the same rules as ingest (``attribution`` and ``outcomes``): each experiment's
(:func:`rebuild_outcomes`), the journeys' (:func:`rebuild_journey_counters`), the
unmatched events' (:func:`rebuild_unmatched_counts`), or all of them at once
(:func:`rebuild_everything`, ``expplatform events rebuild``).

Ingest maintains them incrementally; this is the independent recomputation that
proves them (tests and ``bench/ingest.py`` compare both) and repairs them after an
incident. It shares no code with the incremental path on purpose, except the
counters' calendar (``counters``), which both must agree on by definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, delete, exists, false, func, insert, literal, or_, select, text
from sqlalchemy.orm import Session, aliased, selectinload
from sqlalchemy.sql import Select, Subquery

from ..counters import utc_day
from ..models import (
    Event,
    EventQualityCount,
    Experiment,
    Exposure,
    Journey,
    JourneyCount,
    JourneyOutcome,
    Outcome,
    OutcomeCount,
    RatingQuestion,
    UnmatchedEventCount,
)
from ..warehouse import query


def experiment_rules(session: Session, experiment: Experiment) -> query.Rules:
    """The experiment's attribution rules: its stages, and at each measured stage its
    question, with the question's scale and whether the journey asks only it there."""
    stages = tuple(experiment.stages)
    metrics = {stage: key for stage, key in (experiment.metrics or {}).items() if stage in stages}
    asked = {
        q.key: q
        for q in session.scalars(select(RatingQuestion).where(RatingQuestion.key.in_(sorted(set(metrics.values())))))
    }
    per_stage = dict(
        session.execute(
            select(RatingQuestion.stage, func.count())
            .where(RatingQuestion.journey_id == experiment.journey_id)
            .group_by(RatingQuestion.stage)
        ).all()
    )
    questions = {
        stage: query.Question(key, asked[key].scale_min, asked[key].scale_max, per_stage.get(stage) == 1)
        for stage, key in metrics.items()
        if key in asked
    }
    return query.Rules(experiment.key, stages, questions, experiment.stopped_at)


def builtin_events() -> Subquery:
    """The stored events, columns named by role (one row per event already: ingest
    keeps the first copy of each event id)."""
    return select(
        Event.id.label("sequence"),
        Event.customer_id,
        Event.stage,
        Event.type.label("kind"),
        Event.metric,
        Event.value,
        Event.occurred_at,
        Event.received_at,
        Event.exposure_cutoff.label("cutoff"),
        Event.experiment_key.label("experiment"),
    ).subquery("events")


def builtin_exposures(experiment_id: int) -> Subquery:
    """The experiment's exposures, columns named by role (variant: its id)."""
    return (
        select(Exposure.customer_id, Exposure.variant_id.label("variant"), Exposure.exposed_at, Exposure.forced)
        .where(Exposure.experiment_id == experiment_id)
        .subquery("exposures")
    )


def rebuild_outcomes(session: Session, experiment: Experiment) -> None:
    """Recompute the experiment's outcome rows, outcome counts and data-quality
    counts from the raw events and exposures, in SQL, by the rules of
    ``warehouse.query`` (the statements a warehouse experiment's statistics use),
    in the caller's transaction."""
    for model in (OutcomeCount, EventQualityCount, Outcome):
        session.execute(delete(model).where(model.experiment_id == experiment.id))
    dialect = session.get_bind().dialect.name
    found = query.attribution(
        dialect, builtin_events(), builtin_exposures(experiment.id), experiment_rules(session, experiment)
    )
    rows = query.outcome_rows(dialect, found.counted)
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
            select(
                literal(experiment.id),
                rows.c.customer_id,
                rows.c.stage,
                rows.c.variant,
                rows.c.converted_at,
                rows.c.rating,
                rows.c.rated_at,
                rows.c.rating_sequence,
            ),
        )
    )
    stored = (
        select(
            Outcome.stage,
            Outcome.variant_id.label("variant"),
            Exposure.exposed_at,
            Outcome.converted_at,
            Outcome.rating,
            Outcome.rated_at,
        )
        .join(
            Exposure, and_(Exposure.experiment_id == Outcome.experiment_id, Exposure.customer_id == Outcome.customer_id)
        )
        .where(Outcome.experiment_id == experiment.id)
        .subquery("stored")
    )
    for cells in query.outcome_cells(dialect, stored):
        cell = cells.subquery("cells")
        session.execute(
            insert(OutcomeCount).from_select(
                ["experiment_id", "stage", "variant_id", "day", "kind", "value", "customers"],
                select(
                    literal(experiment.id),
                    cell.c.stage,
                    cell.c.variant,
                    cell.c.day,
                    cell.c.kind,
                    cell.c.value,
                    cell.c.n,
                ),
            )
        )
    _rebuild_quality(session, experiment, found.candidates)


def _rebuild_quality(session: Session, experiment: Experiment, candidates: Select) -> None:
    c = candidates.subquery()
    reason = case(
        (c.c.forced.is_(True), literal("forced")),
        (c.c.exposed_at > c.c.cutoff, literal("before_exposure")),
        else_=literal("after_stop"),
    )
    held_back = or_(c.c.forced.is_(True), c.c.exposed_at > c.c.cutoff)
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


def rebuild_journey_counters(session: Session) -> None:
    """Recompute every journey's ``journey_outcomes`` rows and ``journey_counts`` from
    the raw events and exposures, in SQL, by the same rules as ingest, in the
    caller's transaction. Every stored event counts, whatever experiment it does: a
    conversion for each journey with its stage; a rating for the journey asking its
    question (one naming no question: for each journey with the stage, that
    journey's one question there, if it asks exactly one), within the question's
    scale. The persona of a row is the one its customer's exposures gave when the
    row was made: the latest made before the first of its events was received."""
    session.execute(delete(JourneyCount))
    session.execute(delete(JourneyOutcome))
    journeys = session.scalars(
        select(Journey).options(
            selectinload(Journey.stages), selectinload(Journey.personas), selectinload(Journey.questions)
        )
    ).all()
    for journey in journeys:
        _rebuild_journey_outcomes(session, journey)
    for kind, value_column, moment in (
        ("converted", literal(0), JourneyOutcome.converted_at),
        ("rating", JourneyOutcome.rating, JourneyOutcome.rated_at),
    ):
        day = utc_day(session, moment)
        cell = (JourneyOutcome.journey_id, JourneyOutcome.stage, JourneyOutcome.metric, JourneyOutcome.persona)
        session.execute(
            insert(JourneyCount).from_select(
                ["journey_id", "stage", "metric", "persona", "day", "kind", "value", "customers"],
                select(*cell, day, literal(kind), value_column, func.count())
                .where(moment.is_not(None))
                .group_by(*cell, day, value_column),
            )
        )


def _rebuild_journey_outcomes(session: Session, journey: Journey) -> None:
    stages = [stage.key for stage in journey.stages]
    if not stages:
        return
    asked: dict[str, list[RatingQuestion]] = {}
    for question in journey.questions:
        asked.setdefault(question.stage, []).append(question)
    single = {stage: found[0] for stage, found in asked.items() if len(found) == 1 and stage in stages}
    answers = [
        and_(Event.metric == q.key, Event.stage == q.stage, Event.value.between(q.scale_min, q.scale_max))
        for q in journey.questions
    ] + [
        and_(Event.metric.is_(None), Event.stage == stage, Event.value.between(q.scale_min, q.scale_max))
        for stage, q in single.items()
    ]
    metric = case(
        (Event.type == "conversion", literal("")),
        (Event.metric.is_not(None), Event.metric),
        *[(Event.stage == stage, literal(q.key)) for stage, q in single.items()],
    )
    events = (
        select(
            Event.id,
            Event.customer_id,
            Event.stage,
            Event.type,
            Event.value,
            Event.occurred_at,
            Event.received_at,
            metric.label("metric"),
        )
        .where(
            or_(
                and_(Event.type == "conversion", Event.stage.in_(stages)),
                and_(Event.type == "satisfaction", or_(false(), *answers)),
            )
        )
        .subquery()
    )
    latest = func.row_number().over(
        partition_by=(events.c.customer_id, events.c.stage, events.c.metric, events.c.type),
        order_by=(events.c.occurred_at.desc(), events.c.id.desc()),
    )
    ranked = select(events, latest.label("rn")).subquery()
    is_latest_rating = and_(ranked.c.type == "satisfaction", ranked.c.rn == 1)
    rows = (
        select(
            ranked.c.customer_id,
            ranked.c.stage,
            ranked.c.metric,
            func.min(case((ranked.c.type == "conversion", ranked.c.occurred_at))).label("converted_at"),
            func.max(case((is_latest_rating, ranked.c.value))).label("rating"),
            func.max(case((is_latest_rating, ranked.c.occurred_at))).label("rated_at"),
            func.max(case((is_latest_rating, ranked.c.id))).label("rating_event_id"),
            func.min(ranked.c.received_at).label("first_received"),
        )
        .group_by(ranked.c.customer_id, ranked.c.stage, ranked.c.metric)
        .subquery()
    )
    persona = _persona(session, journey, rows.c.customer_id, rows.c.first_received)
    session.execute(
        insert(JourneyOutcome).from_select(
            [
                "journey_id",
                "customer_id",
                "stage",
                "metric",
                "persona",
                "converted_at",
                "rating",
                "rated_at",
                "rating_event_id",
            ],
            select(
                literal(journey.id),
                rows.c.customer_id,
                rows.c.stage,
                rows.c.metric,
                persona,
                rows.c.converted_at,
                rows.c.rating,
                rows.c.rated_at,
                rows.c.rating_event_id,
            ),
        )
    )


def _persona(session: Session, journey: Journey, customer_id: Any, made_at: Any) -> Any:
    """SQL for a customer's persona in the journey as of ``made_at``: the value of the
    journey's persona attribute in the latest exposure made by then that carries it
    (by time, then experiment id), if it is text and one of the journey's personas;
    else ''."""
    personas = sorted(p.key for p in journey.personas)
    if not personas:
        return literal("")
    name = journey.persona_attribute
    exposure = aliased(Exposure)
    if session.get_bind().dialect.name == "sqlite":
        pairs = func.json_each(exposure.attributes).table_valued("key", "value", "type").alias("pairs")
        value: Any = select(case((pairs.c.type == "text", pairs.c.value))).where(pairs.c.key == name).scalar_subquery()
        carries: Any = select(pairs.c.key).where(pairs.c.key == name).exists()
    else:
        found = exposure.attributes.op("->")(literal(name))
        value = case((func.json_typeof(found) == "string", exposure.attributes.op("->>")(literal(name))))
        carries = found.is_not(None)
    latest = (
        select(value)
        .where(exposure.customer_id == customer_id, exposure.exposed_at <= made_at, carries)
        .order_by(exposure.exposed_at.desc(), exposure.experiment_id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return case((latest.in_(personas), latest), else_=literal(""))


def rebuild_unmatched_counts(session: Session) -> None:
    """Per UTC day received and stage, the events that named no experiment and whose
    customer no experiment measuring the stage had exposed by the time the event
    arrived (``attribution.decide``'s ``unmatched``; at a stage no experiment measures,
    every such event)."""
    session.execute(delete(UnmatchedEventCount))
    measuring: dict[str, list[int]] = {}
    for experiment_id, stages in session.execute(select(Experiment.id, Experiment.stages)):
        for stage in stages:
            measuring.setdefault(stage, []).append(experiment_id)

    def exposed_by(experiment_ids: list[int]) -> Any:
        return exists().where(
            Exposure.customer_id == Event.customer_id,
            Exposure.experiment_id.in_(experiment_ids),
            Exposure.exposed_at <= Event.received_at,
        )

    unmatched = or_(
        Event.stage.not_in(list(measuring)),
        *(and_(Event.stage == stage, ~exposed_by(ids)) for stage, ids in measuring.items()),
    )
    day = utc_day(session, Event.received_at)
    session.execute(
        insert(UnmatchedEventCount).from_select(
            ["day", "stage", "events"],
            select(day, Event.stage, func.count())
            .where(Event.experiment_key.is_(None), unmatched)
            .group_by(day, Event.stage),
        )
    )


@dataclass(frozen=True)
class RebuildSummary:
    """What :func:`rebuild_everything` made."""

    experiments: dict[str, tuple[int, int]]  # key -> (outcome rows, customers counted in outcome_counts)
    journeys: dict[str, tuple[int, int]]  # key -> (journey outcome rows, customers counted in journey_counts)


def rebuild_everything(session: Session) -> RebuildSummary:
    """Every experiment's outcomes and counters and every journey's counters, rebuilt
    from the stored events in the caller's transaction. On PostgreSQL the events
    table is locked against writes first (ingest waits, or answers 503 and its
    clients retry), so that no batch lands between the rebuild's reads; SQLite's
    write transaction already excludes every other writer."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL statement_timeout = 0"))
        session.execute(text("SET LOCAL lock_timeout = '60s'"))
        session.execute(text("LOCK TABLE events IN SHARE MODE"))
    experiments = session.scalars(select(Experiment).order_by(Experiment.key)).all()
    for experiment in experiments:
        rebuild_outcomes(session, experiment)
    rebuild_journey_counters(session)
    rebuild_unmatched_counts(session)
    outcome_rows = dict(
        session.execute(select(Outcome.experiment_id, func.count()).group_by(Outcome.experiment_id)).all()
    )
    outcome_customers = dict(
        session.execute(
            select(OutcomeCount.experiment_id, func.sum(OutcomeCount.customers)).group_by(OutcomeCount.experiment_id)
        ).all()
    )
    journey_rows = dict(
        session.execute(select(JourneyOutcome.journey_id, func.count()).group_by(JourneyOutcome.journey_id)).all()
    )
    journey_customers = dict(
        session.execute(
            select(JourneyCount.journey_id, func.sum(JourneyCount.customers)).group_by(JourneyCount.journey_id)
        ).all()
    )
    journeys = session.execute(select(Journey.id, Journey.key).order_by(Journey.key)).all()
    return RebuildSummary(
        {e.key: (outcome_rows.get(e.id, 0), int(outcome_customers.get(e.id) or 0)) for e in experiments},
        {key: (journey_rows.get(j, 0), int(journey_customers.get(j) or 0)) for j, key in journeys},
    )


def stored_journey_counters(session: Session) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every journey outcome row and non-zero journey counter, in key order (for
    comparisons)."""
    rows = session.execute(
        select(
            JourneyOutcome.journey_id,
            JourneyOutcome.customer_id,
            JourneyOutcome.stage,
            JourneyOutcome.metric,
            JourneyOutcome.persona,
            JourneyOutcome.converted_at,
            JourneyOutcome.rating,
            JourneyOutcome.rated_at,
            JourneyOutcome.rating_event_id,
        ).order_by(JourneyOutcome.journey_id, JourneyOutcome.customer_id, JourneyOutcome.stage, JourneyOutcome.metric)
    )
    cells = session.execute(
        select(
            JourneyCount.journey_id,
            JourneyCount.stage,
            JourneyCount.metric,
            JourneyCount.persona,
            JourneyCount.day,
            JourneyCount.kind,
            JourneyCount.value,
            JourneyCount.customers,
        )
        .where(JourneyCount.customers != 0)
        .order_by(
            JourneyCount.journey_id,
            JourneyCount.stage,
            JourneyCount.metric,
            JourneyCount.persona,
            JourneyCount.day,
            JourneyCount.kind,
            JourneyCount.value,
        )
    )
    return [tuple(r) for r in rows.all()], [tuple(c) for c in cells.all()]
