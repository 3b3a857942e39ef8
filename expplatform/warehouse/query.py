"""The attribution rules as SQL, once, for every database the statistics are
computed on: the built-in events (``ingest.rebuild`` recomputes the counters with
it) and a warehouse's (``refresh`` computes a warehouse experiment's statistics).

The rules are ingest's (``ingest.attribution``): an event counts for an experiment
when its customer has a non-forced exposure made no later than the event's cutoff
(``least(occurred_at + clock skew, received_at)``, fixed when the event arrived),
the experiment measures its stage (and, for a rating, the question it answers,
within that question's scale), it names the experiment or none, and it occurred
before the experiment stopped. Per customer and stage, the first conversion and the
latest rating (by event time, then by storage order) are the outcome; an outcome
is dated by its UTC day, never before the exposure's.

The statements take relations whose columns are named by role
(``mapping.EVENT_ROLES``; ``sequence`` orders ties, ``cutoff`` is the exposure
cutoff) so the same code reads the ``events`` table and a warehouse's table mapped
column by column. What differs between engines is in ``dialects``. Only portable
constructs are used, with ClickHouse's traps in mind: inner joins only (its outer
joins fill defaults, not NULLs), no ``CAST(NULL AS String)``, each relation
referenced once (its CTEs are inlined per reference), ``row_number()`` for the
tuple-wise first copy and latest rating (never per-column ``min``/``max``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, false, func, literal_column, null, or_, select, union_all
from sqlalchemy.sql import ColumnElement, FromClause, Select, Subquery, TableClause

from ..counters import not_before
from . import dialects
from .dialects import Name

RATING_KINDS = ("satisfaction", "rating")


def constant(value: str | int) -> ColumnElement[Any]:
    """A constant written into the SQL, not bound: some engines take no parameter
    where a constant may stand (DuckDB's GROUP BY), and the statement reads plainly."""
    if isinstance(value, int):
        return literal_column(str(int(value)))
    assert value.replace("_", "").isalnum() or value == "", value
    return literal_column(f"'{value}'")


@dataclass(frozen=True)
class Question:
    """The rating question an experiment measures at a stage. ``only_one``: the
    journey asks no other question there, so a rating naming none answers it."""

    key: str
    scale_min: int
    scale_max: int
    only_one: bool


@dataclass(frozen=True)
class Rules:
    """What decides which events count for one experiment."""

    experiment_key: str
    stages: tuple[str, ...]
    questions: Mapping[str, Question]  # measured stage -> its question
    stopped_at: datetime | None


@dataclass(frozen=True)
class Pruning:
    """Bounds that keep a warehouse scan proportional to the experiment, not to the
    history: no event occurring before ``started_at - skew`` can follow one of its
    exposures, and copies of one event share their event time (retries resend the
    same event), so the first copy of every event that can count is inside."""

    started_at: datetime
    skew_seconds: float


def _earliest(dialect: Name, occurred: Any, pruning: Pruning) -> ColumnElement[bool]:
    return occurred >= dialects.timestamp(dialect, pruning.started_at - timedelta(seconds=pruning.skew_seconds))


def role_events(
    dialect: Name,
    table: TableClause,
    columns: Mapping[str, str],
    *,
    skew_seconds: float,
    pruning: Pruning | None,
    received_before: datetime | None = None,
    event_ids: Select[Any] | None = None,
) -> Subquery:
    """A warehouse's events as one row per event (the first stored copy of each
    ``event_id``: earliest received, then lowest ``sequence``), columns named by role:
    as the warehouse held them at ``received_before`` (copies received later are not
    there yet), and only the events ``event_ids`` when given."""
    c = table.c
    mapped = {role: c[name] for role, name in columns.items()}
    occurred, received = mapped["occurred_at"], mapped["received_at"]
    cutoff: ColumnElement[Any] = (
        mapped["exposure_cutoff"]
        if "exposure_cutoff" in mapped
        else func.least(dialects.plus_seconds(dialect, occurred, skew_seconds), received)
    )
    sequence = mapped.get("sequence")
    rows = select(
        mapped["event_id"].label("event_id"),
        (sequence if sequence is not None else constant(0)).label("sequence"),
        mapped["customer_id"].label("customer_id"),
        mapped["stage"].label("stage"),
        mapped["kind"].label("kind"),
        (mapped["metric"] if "metric" in mapped else null()).label("metric"),
        (mapped["value"] if "value" in mapped else null()).label("value"),
        occurred.label("occurred_at"),
        received.label("received_at"),
        cutoff.label("cutoff"),
        (mapped["experiment"] if "experiment" in mapped else null()).label("experiment"),
    )
    if pruning is not None:
        rows = rows.where(_earliest(dialect, occurred, pruning))
    if received_before is not None:
        rows = rows.where(received < dialects.timestamp(dialect, received_before))
    if event_ids is not None:
        rows = rows.where(mapped["event_id"].in_(event_ids))
    copies = rows.subquery("copies")
    k = copies.c
    order = [k.received_at, k.sequence] if sequence is not None else [k.received_at, k.customer_id, k.stage]
    copy = func.row_number().over(partition_by=k.event_id, order_by=order)
    # A subset (an increment's events) is referenced once: splitting it would make
    # engines that inline a subquery per reference select it three times.
    if event_ids is not None or not dialects.windows_repeated_ids_only(dialect):
        ranked = select(copies, copy.label("copy")).subquery("ranked")
        return select(*(ranked.c[column.name] for column in k)).where(ranked.c.copy == 1).subquery("events")
    # Most events arrive once: only the ids stored more than once need the window
    # (ordering every copy of every event cost more than the rest of the statistics).
    repeated = select(k.event_id).group_by(k.event_id).having(func.count() > 1)
    once = select(copies).where(k.event_id.not_in(repeated))
    ranked = select(copies, copy.label("copy")).where(k.event_id.in_(repeated)).subquery("ranked")
    first = select(*(ranked.c[column.name] for column in k)).where(ranked.c.copy == 1)
    return union_all(once, first).subquery("events")


def touched_events(
    dialect: Name,
    table: TableClause,
    columns: Mapping[str, str],
    *,
    exposed: Select[Any],
    since: datetime,
    before: datetime,
    pruning: Pruning | None,
) -> tuple[Select[Any], Select[Any]]:
    """The customers ``exposed`` (to the experiment) with a copy of an event received
    in [since, before), and the ids of all their events: whose outcomes may have
    changed in that time (a copy under another customer of one of those events is
    among them, so the first copy is still told from the later ones)."""
    c = table.c
    customer, received = c[columns["customer_id"]], c[columns["received_at"]]
    touched = (
        select(customer)
        .distinct()
        .where(
            received >= dialects.timestamp(dialect, since),
            received < dialects.timestamp(dialect, before),
            customer.in_(exposed),
        )
    )
    if pruning is not None:
        touched = touched.where(_earliest(dialect, c[columns["occurred_at"]], pruning))
    ids = select(c[columns["event_id"]]).distinct().where(customer.in_(touched))
    if pruning is not None:
        ids = ids.where(_earliest(dialect, c[columns["occurred_at"]], pruning))
    return touched, ids


def role_exposures(table: TableClause, columns: Mapping[str, str], experiment_key: str) -> Subquery:
    """A warehouse's exposures to one experiment, one row per customer (the earliest:
    the first assignment), columns named by role."""
    c = table.c
    mapped = {role: c[name] for role, name in columns.items()}
    first = func.row_number().over(
        partition_by=mapped["customer_id"], order_by=[mapped["exposed_at"], mapped["variant"]]
    )
    forced = mapped.get("forced")
    rows = (
        select(
            mapped["customer_id"].label("customer_id"),
            mapped["variant"].label("variant"),
            mapped["exposed_at"].label("exposed_at"),
            (forced if forced is not None else false()).label("forced"),
            first.label("first"),
        )
        .where(mapped["experiment"] == experiment_key)
        .subquery("assignments")
    )
    return (
        select(rows.c.customer_id, rows.c.variant, rows.c.exposed_at, rows.c.forced)
        .where(rows.c.first == 1)
        .subquery("exposures")
    )


@dataclass(frozen=True)
class Attribution:
    """``candidates``: events of the experiment's stages and questions whose customer
    was exposed before they arrived (data quality looks at these); ``counted``: those
    that count."""

    candidates: Select[Any]
    counted: Select[Any]


def attribution(dialect: Name, events: FromClause, exposures: FromClause, rules: Rules) -> Attribution:
    e, x = events.c, exposures.c
    is_rating = e.kind.in_(RATING_KINDS)
    answers = [
        and_(
            e.stage == stage,
            or_(e.metric == q.key, e.metric.is_(None), e.metric == "") if q.only_one else e.metric == q.key,
        )
        for stage, q in rules.questions.items()
    ]
    within_scale = [
        and_(e.stage == stage, e.value.between(q.scale_min, q.scale_max)) for stage, q in rules.questions.items()
    ]
    candidates = (
        select(
            e.sequence,
            e.customer_id,
            e.stage,
            case((is_rating, constant("satisfaction")), else_=e.kind).label("kind"),
            e.value,
            e.occurred_at,
            e.cutoff,
            x.variant,
            x.exposed_at,
            x.forced,
        )
        .join(exposures, x.customer_id == e.customer_id)
        .where(
            e.stage.in_(rules.stages),
            or_(e.kind == "conversion", and_(is_rating, or_(false(), *answers))),
            or_(e.experiment.is_(None), e.experiment == "", e.experiment == rules.experiment_key),
            x.exposed_at <= e.received_at,
        )
    )
    counted = candidates.where(x.forced == false(), x.exposed_at <= e.cutoff)
    if rules.stopped_at is not None:
        counted = counted.where(e.occurred_at <= dialects.timestamp(dialect, rules.stopped_at))
    counted = counted.where(or_(e.kind == "conversion", or_(false(), *within_scale)))
    return Attribution(candidates, counted)


def outcome_rows(counted: Select[Any]) -> Subquery:
    """One row per customer x stage: the variant, the exposure time, the first
    conversion's time, and the latest rating with its time and storage order."""
    c = counted.subquery("counted")
    latest = func.row_number().over(
        partition_by=(c.c.customer_id, c.c.stage, c.c.kind),
        order_by=(c.c.occurred_at.desc(), c.c.sequence.desc()),
    )
    ranked = select(c, latest.label("latest")).subquery("ranked")
    r = ranked.c
    is_latest_rating = and_(r.kind == "satisfaction", r.latest == 1)
    return (
        select(
            r.customer_id,
            r.stage,
            r.variant,
            func.min(r.exposed_at).label("exposed_at"),
            func.min(case((r.kind == "conversion", r.occurred_at))).label("converted_at"),
            func.max(case((is_latest_rating, r.value))).label("rating"),
            func.max(case((is_latest_rating, r.occurred_at))).label("rated_at"),
            func.max(case((is_latest_rating, r.sequence))).label("rating_sequence"),
        )
        .group_by(r.customer_id, r.stage, r.variant)
        .subquery("outcomes")
    )


def outcome_cells(dialect: Name, outcomes: FromClause) -> list[Select[Any]]:
    """Customers per (kind, stage, variant, value, day) from outcome rows with columns
    stage, variant, exposed_at, converted_at, rating, rated_at: one statement for the
    converters, one for the ratings."""
    o = outcomes.c
    cells = []
    for kind, moment in (("converted", o.converted_at), ("rating", o.rated_at)):
        day = dialects.utc_day(dialect, not_before(moment, o.exposed_at))
        by = [o.stage, o.variant, day] if kind == "converted" else [o.stage, o.variant, o.rating, day]
        cells.append(
            select(
                constant(kind).label("kind"),
                o.stage,
                o.variant,
                (constant(0) if kind == "converted" else o.rating).label("value"),
                day.label("day"),
                func.count().label("n"),
            )
            .where(moment.is_not(None))
            .group_by(*by)
        )
    return cells


def exposure_cells(dialect: Name, exposures: FromClause, *, before: datetime | None = None) -> Select[Any]:
    """Exposed customers per variant and day (``kind = 'exposed'``; the stage is
    ''), of those exposed before ``before`` when given."""
    x = exposures.c
    day = dialects.utc_day(dialect, x.exposed_at)
    cells = (
        select(
            constant("exposed").label("kind"),
            constant("").label("stage"),
            x.variant,
            constant(0).label("value"),
            day.label("day"),
            func.count().label("n"),
        )
        .where(x.forced == false())
        .group_by(x.variant, day)
    )
    if before is not None:
        cells = cells.where(x.exposed_at < dialects.timestamp(dialect, before))
    return cells


def outcome_days(dialect: Name, outcomes: FromClause, *, customers: Select[Any] | None = None) -> Select[Any]:
    """Customers per (stage, variant, conversion day, rating, rating day) from outcome
    rows: one pass over them gives both the converters' and the ratings' cells (an
    engine that inlines a subquery per reference would otherwise compute the outcome
    rows once for each). NULL day: no conversion, or no rating."""
    o = outcomes.c
    converted_day = dialects.utc_day(dialect, not_before(o.converted_at, o.exposed_at)).label("converted_day")
    rated_day = dialects.utc_day(dialect, not_before(o.rated_at, o.exposed_at)).label("rated_day")
    days = select(o.stage, o.variant, converted_day, o.rating, rated_day, func.count().label("n")).group_by(
        o.stage, o.variant, converted_day, o.rating, rated_day
    )
    return days if customers is None else days.where(o.customer_id.in_(customers))


@dataclass(frozen=True)
class Statistics:
    """The two statements of an experiment's statistics: exposed customers per
    variant and day (``exposure_cells``), and the outcomes per stage, variant and
    days (``outcome_days``). Summed over days they are what the built-in counters
    hold."""

    exposures: Select[Any]
    outcomes: Select[Any]


def statistics(
    dialect: Name,
    events: FromClause,
    exposures: FromClause,
    rules: Rules,
    *,
    exposed_before: datetime | None = None,
    customers: Select[Any] | None = None,
) -> Statistics:
    """``exposed_before`` bounds the exposures counted (those the warehouse held at
    the refresh's watermark); ``customers`` restricts the outcomes to theirs."""
    outcomes = outcome_rows(attribution(dialect, events, exposures, rules).counted)
    return Statistics(
        exposure_cells(dialect, exposures, before=exposed_before),
        outcome_days(dialect, outcomes, customers=customers),
    )
