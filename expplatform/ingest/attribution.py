"""The second step of ingest: which experiments each valid event counts for, read
from the exposures as they are when the batch arrives.

An event counts for experiment E when all of these hold:

- the customer has an exposure to E that is not forced (QA customers never count);
- the exposure came before the event: ``exposed_at <= min(occurred_at + clock skew,
  received_at)`` (an event cannot have happened after it reached us, so a late-made
  exposure never captures an event with a clock running ahead);
- E measures the event's stage, and the event names E or no experiment;
- E had not stopped when the event occurred (once stopped, customers are no longer
  served the variants, so later outcomes say nothing about them).

Events that count nowhere are kept all the same and marked as data quality: per
experiment when an exposure exists but does not qualify (``before_exposure``,
``after_stop``, ``forced``) or when the event named an experiment that never exposed
the customer (``not_exposed``), and ``unmatched`` when no experiment measuring the
stage ever exposed the customer. Rules that need the database reject here
(``unknown_experiment``, ``stage_not_measured``, ``value_out_of_scale``).

This step only reads, before the write transaction: on SQLite, where one writer
works at a time, the write lock is then held for the writes alone. ``rebuild``
applies the same rules in SQL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from ..models import Experiment, QualityKind, utcnow
from ..rawsql import RawConnection
from .validation import EventIn, Rejection


@dataclass(frozen=True)
class _ExperimentInfo:
    id: int
    key: str
    stages: frozenset[str]
    scale_min: int
    scale_max: int
    stopped_at: datetime | None


@dataclass(frozen=True)
class ExposureInfo:
    """The exposure an event counts from: its variant, and the time that dates the
    outcome no earlier than it."""

    experiment_id: int
    variant_id: int
    exposed_at: datetime
    forced: bool


@dataclass
class Decision:
    """What one event does: the experiments it counts for (experiment id -> the
    exposure it follows), and data-quality marks for the others."""

    counted: dict[int, ExposureInfo] = field(default_factory=dict)
    quality: list[tuple[int, QualityKind]] = field(default_factory=list)
    unmatched: bool = False


class Attributed(NamedTuple):
    """A valid event, when it happened (``received_at`` if the client did not say),
    the latest exposure time that counts for it, and what it counts for. (A tuple:
    one is made per event, and a frozen dataclass costs several times as much.)"""

    event: EventIn
    occurred_at: datetime
    cutoff: datetime
    decision: Decision


@dataclass(frozen=True)
class Attribution:
    """A batch attributed and ready to store: the events that passed, and those the
    database-side rules rejected."""

    received_at: datetime
    events: list[Attributed]
    rejected: list[Rejection]


def attribute(session: Session, events: Sequence[EventIn], *, clock_skew_seconds: float) -> Attribution:
    """Attribute each event to the exposures as they are when the batch arrives, and
    reject those that break a rule needing the database (experiment, stage, scale).

    An exposure committed while this runs may be missed, as it would be by a batch
    that arrived a moment earlier; a client that sends events after its assign call
    returned never meets that (the exposure was committed before the event was sent)."""
    received_at = utcnow()
    skew = timedelta(seconds=clock_skew_seconds)
    exposures, experiments = _load_context(session, events)
    by_key = {info.key: info for info in experiments.values()}
    rejected: list[Rejection] = []
    attributed: list[Attributed] = []
    for event in events:
        occurred_at = event.occurred_at or received_at
        cutoff = min(occurred_at + skew, received_at)
        decision = _decide(
            event, occurred_at, cutoff, received_at, exposures.get(event.customer_id, []), experiments, by_key
        )
        if isinstance(decision, Rejection):
            rejected.append(decision)
        else:
            attributed.append(Attributed(event, occurred_at, cutoff, decision))
    return Attribution(received_at, attributed, rejected)


def _load_context(
    session: Session, events: Sequence[EventIn]
) -> tuple[dict[str, list[ExposureInfo]], dict[int, _ExperimentInfo]]:
    """The batch's customers' exposures (by customer), and the experiments they or
    the events name."""
    sql = RawConnection(session.connection())
    customers = sorted({e.customer_id for e in events})
    exposures: dict[str, list[ExposureInfo]] = defaultdict(list)
    experiment_ids: set[int] = set()
    rows = sql.rows(
        "SELECT customer_id, experiment_id, variant_id, exposed_at, forced FROM exposures "
        "WHERE customer_id IN ({rows})",
        [("customer_id", "text")],
        [(c,) for c in customers],
        fetch=True,
    )
    time_out = sql.dialect.time_out
    for customer_id, experiment_id, variant_id, exposed_at, forced in rows:
        at = cast(datetime, time_out(exposed_at))  # exposed_at is NOT NULL
        exposures[customer_id].append(ExposureInfo(experiment_id, variant_id, at, bool(forced)))
        experiment_ids.add(experiment_id)
    named = sorted({e.experiment for e in events if e.experiment is not None})
    condition: ColumnElement[bool] = Experiment.id.in_(sorted(experiment_ids))
    if named:
        condition = or_(condition, Experiment.key.in_(named))
    experiments = {
        row.id: _ExperimentInfo(row.id, row.key, frozenset(row.stages), row.scale_min, row.scale_max, row.stopped_at)
        for row in session.execute(
            select(
                Experiment.id,
                Experiment.key,
                Experiment.stages,
                Experiment.scale_min,
                Experiment.scale_max,
                Experiment.stopped_at,
            ).where(condition)
        )
    }
    return exposures, experiments


def _decide(
    event: EventIn,
    occurred_at: datetime,
    cutoff: datetime,
    received_at: datetime,
    exposures: list[ExposureInfo],
    experiments: dict[int, _ExperimentInfo],
    by_key: dict[str, _ExperimentInfo],
) -> Decision | Rejection:
    """The event's decision, or its rejection by a rule that needs the database. A
    rating outside the scale of any experiment it would count for rejects the whole
    event, so that it is never counted in one experiment and not another."""
    named = by_key.get(event.experiment) if event.experiment is not None else None
    if event.experiment is not None:
        if named is None:
            return Rejection(event.index, "unknown_experiment", f"no experiment has the key {event.experiment!r}")
        if event.stage not in named.stages:
            return Rejection(
                event.index, "stage_not_measured", f"experiment {named.key!r} does not measure stage {event.stage!r}"
            )
    decision = Decision()
    candidates = 0
    for exposure in exposures:
        experiment = experiments[exposure.experiment_id]
        if event.stage not in experiment.stages or (named is not None and experiment.id != named.id):
            continue
        if exposure.exposed_at > received_at:
            continue  # made after the event reached us: as if it did not exist yet
        candidates += 1
        if exposure.forced:
            decision.quality.append((experiment.id, "forced"))
        elif exposure.exposed_at > cutoff:
            decision.quality.append((experiment.id, "before_exposure"))
        elif experiment.stopped_at is not None and occurred_at > experiment.stopped_at:
            decision.quality.append((experiment.id, "after_stop"))
        else:
            if event.type == "satisfaction" and not experiment.scale_min <= event.value <= experiment.scale_max:  # type: ignore[operator]
                return Rejection(
                    event.index,
                    "value_out_of_scale",
                    f"rating {event.value} is outside the {experiment.scale_min}-{experiment.scale_max} scale "
                    f"of experiment {experiment.key!r} it counts for",
                )
            decision.counted[experiment.id] = exposure
    if candidates == 0:
        if named is not None:
            decision.quality.append((named.id, "not_exposed"))
        else:
            decision.unmatched = True
    return decision
