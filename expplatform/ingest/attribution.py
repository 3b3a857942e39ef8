"""The second step of ingest: what each valid event is and counts for, from the
journeys' catalog (``catalog``) and a read of the exposures as they are when the
batch arrives.

First the event is resolved against the journeys: a stage no journey has is
``unknown_stage``, a question none asks ``unknown_metric``, a stage that is not the
named question's ``stage_mismatch``, a rating naming only a stage without one
question there ``ambiguous_metric`` (or ``no_question``), and a rating outside its
question's scale ``value_out_of_scale`` (the question's scale, never an
experiment's: every experiment measuring the question shares it).

An event then counts for experiment E when all of these hold:

- the customer has an exposure to E that is not forced (QA customers never count);
- the exposure came before the event: ``exposed_at <= min(occurred_at + clock skew,
  received_at)`` (an event cannot have happened after it reached us, so a late-made
  exposure never captures an event with a clock running ahead);
- E measures the event's stage and, for a rating, measures there the question the
  rating answers (``E.metrics[stage]``); and the event names E or no experiment;
- E had not stopped when the event occurred (once stopped, customers are no longer
  served the variants, so later outcomes say nothing about them).

So two experiments asking different questions at one stage never count, nor reject,
each other's ratings. Events that count nowhere are kept all the same and marked as
data quality: per experiment when an exposure exists but does not qualify
(``before_exposure``, ``after_stop``, ``forced``) or when the event named an
experiment that never exposed the customer (``not_exposed``), and ``unmatched`` when
no experiment measuring the stage ever exposed the customer (such events still count
in the journey counters: they are journey data, not a problem). An event naming an
experiment is rejected when that experiment does not exist (``unknown_experiment``),
does not measure the stage (``stage_not_measured``) or, for a rating, does not
measure its question there (``metric_not_measured``).

Every stored event also moves the journey counters of the journeys it belongs to,
by persona: the journey's persona attribute as the customer's latest exposure that
carries it (made before the batch arrived) says, '' when none does or the value is
not one of the journey's personas.

This step only reads, before the write transaction: on SQLite, where one writer
works at a time, the write lock is then held for the writes alone. ``rebuild``
applies the same rules in SQL.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from ..models import Experiment, QualityKind, utcnow
from ..rawsql import RawConnection
from .catalog import JourneyCatalog, JourneyInfo, Refusal, Target
from .validation import EventIn, Rejection


@dataclass(frozen=True)
class _ExperimentInfo:
    id: int
    key: str
    journey_id: int
    stages: frozenset[str]
    metrics: dict[str, str]  # stage -> the question measured there
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
    the latest exposure time that counts for it, what it counts for, what it is
    (its stage and stored ``metric``), and the journey counter rows it moves
    ((journey id, question or '', persona)). (A tuple: one is made per event, and a
    frozen dataclass costs several times as much.)"""

    event: EventIn
    occurred_at: datetime
    cutoff: datetime
    decision: Decision
    stage: str
    metric: str | None
    journeys: tuple[tuple[int, str, str], ...]


@dataclass(frozen=True)
class Attribution:
    """A batch attributed and ready to store: the events that passed, and those the
    database-side rules rejected."""

    received_at: datetime
    events: list[Attributed]
    rejected: list[Rejection]


class _Exposures(NamedTuple):
    """One customer's exposures, and the raw attributes of each (read for personas)."""

    exposures: list[ExposureInfo]
    attributes: list[Any]


def attribute(
    session: Session, events: Sequence[EventIn], catalog: JourneyCatalog, *, clock_skew_seconds: float
) -> Attribution:
    """Resolve each event against the journeys, attribute it to the exposures as they
    are when the batch arrives, and reject those that break a rule needing the
    database (journeys, experiments, scales).

    An exposure committed while this runs may be missed, as it would be by a batch
    that arrived a moment earlier; a client that sends events after its assign call
    returned never meets that (the exposure was committed before the event was sent)."""
    received_at = utcnow()
    skew = timedelta(seconds=clock_skew_seconds)
    rejected: list[Rejection] = []
    resolved: list[tuple[EventIn, Target]] = []
    for event in events:
        target = _resolve(event, catalog)
        if isinstance(target, Rejection):
            rejected.append(target)
        else:
            resolved.append((event, target))
    exposures, experiments = _load_context(session, [e for e, _t in resolved], attributes=catalog.has_personas)
    by_key = {info.key: info for info in experiments.values()}
    personas = _Personas(catalog, exposures, received_at)
    attributed: list[Attributed] = []
    no_exposures = _Exposures([], [])
    for event, target in resolved:
        occurred_at = event.occurred_at or received_at
        cutoff = min(occurred_at + skew, received_at)
        customer = exposures.get(event.customer_id, no_exposures)
        decision = _decide(event, target, occurred_at, cutoff, received_at, customer.exposures, experiments, by_key)
        if isinstance(decision, Rejection):
            rejected.append(decision)
            continue
        rows = tuple((j, metric, personas.of(event.customer_id, j)) for j, metric in target.journeys)
        attributed.append(Attributed(event, occurred_at, cutoff, decision, target.stage, target.metric, rows))
    return Attribution(received_at, attributed, sorted(rejected, key=lambda r: r.index))


def _resolve(event: EventIn, catalog: JourneyCatalog) -> Target | Rejection:
    """The event against the journeys: what it is stored as and moves, or why not."""
    target: Target | Refusal | None
    if event.type == "conversion":
        target = catalog.conversions.get(cast(str, event.stage))  # validation: conversions name a stage
    elif event.metric is not None:
        target = catalog.by_question.get(event.metric)
        if target is None:
            return Rejection(event.index, "unknown_metric", f"no rating question has the key {event.metric!r}")
        if event.stage is not None and event.stage != target.stage:
            return Rejection(
                event.index,
                "stage_mismatch",
                f"question {event.metric!r} is asked at stage {target.stage!r}, not {event.stage!r}",
            )
    else:
        target = catalog.stage_ratings.get(cast(str, event.stage))  # validation: or a stage
        if isinstance(target, Refusal):
            return Rejection(event.index, target.error, target.message)
    if target is None:
        return Rejection(event.index, "unknown_stage", f"no journey has the stage {event.stage!r}")
    value = event.value
    for question in target.questions:
        if not question.scale_min <= cast(int, value) <= question.scale_max:  # validation: ratings have a value
            return Rejection(
                event.index,
                "value_out_of_scale",
                f"rating {value} is outside the {question.scale_min}-{question.scale_max} scale "
                f"of question {question.key!r}",
            )
    return target


def _load_context(
    session: Session, events: Sequence[EventIn], *, attributes: bool
) -> tuple[dict[str, _Exposures], dict[int, _ExperimentInfo]]:
    """The batch's customers' exposures (by customer; with their attributes, as
    stored text, when some journey has personas), and the experiments they or the
    events name."""
    sql = RawConnection(session.connection())
    customers = sorted({e.customer_id for e in events})
    exposures: dict[str, _Exposures] = defaultdict(lambda: _Exposures([], []))
    experiment_ids: set[int] = set()
    attributes_column = ("attributes::text" if sql.dialect.postgres else "attributes") if attributes else "NULL"
    rows = sql.rows(
        f"SELECT customer_id, experiment_id, variant_id, exposed_at, forced, {attributes_column} FROM exposures "
        "WHERE customer_id IN ({rows})",
        [("customer_id", "text")],
        [(c,) for c in customers],
        fetch=True,
    )
    time_out = sql.dialect.time_out
    for customer_id, experiment_id, variant_id, exposed_at, forced, raw_attributes in rows:
        at = cast(datetime, time_out(exposed_at))  # exposed_at is NOT NULL
        found = exposures[customer_id]
        found.exposures.append(ExposureInfo(experiment_id, variant_id, at, bool(forced)))
        found.attributes.append(raw_attributes)
        experiment_ids.add(experiment_id)
    named = sorted({e.experiment for e in events if e.experiment is not None})
    condition: ColumnElement[bool] = Experiment.id.in_(sorted(experiment_ids))
    if named:
        condition = or_(condition, Experiment.key.in_(named))
    experiments = {
        row.id: _ExperimentInfo(
            row.id, row.key, row.journey_id, frozenset(row.stages), dict(row.metrics or {}), row.stopped_at
        )
        for row in session.execute(
            select(
                Experiment.id,
                Experiment.key,
                Experiment.journey_id,
                Experiment.stages,
                Experiment.metrics,
                Experiment.stopped_at,
            ).where(condition)
        )
    }
    return exposures, experiments


class _Personas:
    """Each customer's persona in each journey, worked out once per batch: the value
    of the journey's persona attribute in the latest exposure (by time, then
    experiment id) made before the batch arrived that carries the attribute; '' when
    none does, or the value is not one of the journey's personas."""

    def __init__(self, catalog: JourneyCatalog, exposures: dict[str, _Exposures], received_at: datetime) -> None:
        self.journeys = catalog.journeys
        self.exposures = exposures
        self.received_at = received_at
        self.known: dict[tuple[str, int], str] = {}
        self.ordered: dict[str, list[dict[str, Any]]] = {}

    def of(self, customer_id: str, journey_id: int) -> str:
        journey = self.journeys[journey_id]
        if not journey.personas:
            return ""
        key = (customer_id, journey_id)
        found = self.known.get(key)
        if found is None:
            found = self.known[key] = self._find(customer_id, journey)
        return found

    def _find(self, customer_id: str, journey: JourneyInfo) -> str:
        for attributes in self._latest_first(customer_id):
            if journey.persona_attribute in attributes:
                value = attributes[journey.persona_attribute]
                return value if isinstance(value, str) and value in journey.personas else ""
        return ""

    def _latest_first(self, customer_id: str) -> list[dict[str, Any]]:
        ordered = self.ordered.get(customer_id)
        if ordered is None:
            found = self.exposures.get(customer_id)
            pairs = [] if found is None else list(zip(found.exposures, found.attributes, strict=True))
            pairs = [p for p in pairs if p[0].exposed_at <= self.received_at]
            pairs.sort(key=lambda p: (p[0].exposed_at, p[0].experiment_id), reverse=True)
            ordered = self.ordered[customer_id] = [_attributes(raw) for _e, raw in pairs]
        return ordered


def _attributes(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    parsed = json.loads(raw)
    return parsed if isinstance(parsed, dict) else {}


def _measures(experiment: _ExperimentInfo, stage: str, target: Target) -> bool:
    """Whether the experiment measures, at the stage, the question a rating answers."""
    asked = target.asks.get(experiment.journey_id)
    return asked is not None and experiment.metrics.get(stage) == asked


def _decide(
    event: EventIn,
    target: Target,
    occurred_at: datetime,
    cutoff: datetime,
    received_at: datetime,
    exposures: list[ExposureInfo],
    experiments: dict[int, _ExperimentInfo],
    by_key: dict[str, _ExperimentInfo],
) -> Decision | Rejection:
    """The event's decision, or its rejection by a rule on the experiment it names."""
    stage = target.stage
    rating = event.type == "satisfaction"
    named = by_key.get(event.experiment) if event.experiment is not None else None
    if event.experiment is not None:
        if named is None:
            return Rejection(event.index, "unknown_experiment", f"no experiment has the key {event.experiment!r}")
        if stage not in named.stages:
            return Rejection(
                event.index, "stage_not_measured", f"experiment {named.key!r} does not measure stage {stage!r}"
            )
        if rating and not _measures(named, stage, target):
            measured = named.metrics.get(stage)
            return Rejection(
                event.index,
                "metric_not_measured",
                f"experiment {named.key!r} measures "
                + (f"question {measured!r}" if measured else "no rating question")
                + f" at stage {stage!r}",
            )
    decision = Decision()
    measuring = 0
    for exposure in exposures:
        experiment = experiments[exposure.experiment_id]
        if stage not in experiment.stages or (named is not None and experiment.id != named.id):
            continue
        if exposure.exposed_at > received_at:
            continue  # made after the event reached us: as if it did not exist yet
        measuring += 1
        if rating and not _measures(experiment, stage, target):
            continue  # another question than the one this experiment measures here
        if exposure.forced:
            decision.quality.append((experiment.id, "forced"))
        elif exposure.exposed_at > cutoff:
            decision.quality.append((experiment.id, "before_exposure"))
        elif experiment.stopped_at is not None and occurred_at > experiment.stopped_at:
            decision.quality.append((experiment.id, "after_stop"))
        else:
            decision.counted[experiment.id] = exposure
    if measuring == 0:
        if named is not None:
            decision.quality.append((named.id, "not_exposed"))
        else:
            decision.unmatched = True
    return decision
