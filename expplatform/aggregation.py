"""Stored outcomes -> ``analysis.types``: the only bridge between the database and
the analysis, which never sees an event or customer row.

Each report is one SQL statement (a UNION ALL of GROUP BYs) whose result has one row
per cell, so the Python that follows costs O(stages x variants x ratings [x segments
x days]), whatever the number of events:

- :func:`experiment_stats` reads the exposed count per variant (index-only over
  ``exposures``) and the per-day ``outcome_counts`` counters that ingest keeps in
  step with the outcome rows: its cost does not grow with events at all;
- :func:`daily_stats` reads the same counters by day, and exposures by day;
- :func:`segment_stats` groups the outcome rows (one per customer x stage) joined
  to their exposure, whose attributes hold the segment (for a warehouse experiment
  it reads the segments its last full recomputation computed there);
- :func:`data_quality` sums the ingest-time quality counters.

Forced (QA) exposures are never in a denominator, and their events never in outcomes.
A day is the counters' calendar (``counters``), the one ingest writes them by.

Each measured stage has at most one rating question (``Experiment.metrics``), whose
scale is the stage's: its histograms have one bin per rating of that scale, and a
stage without a question has none (conversion only). Ingest counts a rating for the
experiment only when it answers the stage's question, so the outcome rows hold the
latest rating to that question.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, and_, case, cast, false, func, literal, null, or_, select, text, true, union_all
from sqlalchemy.orm import Session

from analysis.types import CellStats, ExperimentStats, Scale

from .counters import utc_day
from .errors import MalformedRequest
from .models import (
    EventQualityCount,
    Experiment,
    Exposure,
    Outcome,
    OutcomeCount,
    UnmatchedEventCount,
    WarehouseStats,
    utcnow,
)

SEGMENT_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SEGMENTS = 100


@dataclass(frozen=True)
class StageQuestion:
    """The rating question an experiment measures at one stage: its key, its text and
    its scale (the stage's rating scale)."""

    key: str
    text: str
    scale: Scale

    @property
    def scale_text(self) -> str:
        """The scale as the reports write it: ``1\N{EN DASH}7``."""
        return f"{self.scale.min}\N{EN DASH}{self.scale.max}"

    @property
    def label(self) -> str:
        """The question and its scale as a report names the stage's ratings:
        ``How easy was checkout? (1\N{EN DASH}7)`` (a text that already ends with its
        scale, as implicit journeys' questions do, does not get it twice)."""
        text = self.text.rstrip()
        for written in (f"({self.scale.min}-{self.scale.max})", f"({self.scale_text})"):
            text = text.removesuffix(written).rstrip()
        return f"{text} ({self.scale_text})"


def stage_questions(experiment: Experiment) -> dict[str, StageQuestion | None]:
    """Per measured stage (in order), the question the experiment measures there, or
    None where it measures none (``Experiment.metrics`` names the journey's question)."""
    by_key = {q.key: q for q in experiment.journey.questions}
    found: dict[str, StageQuestion | None] = {}
    for stage in experiment.stages:
        question = by_key.get(experiment.metrics.get(stage, ""))
        found[stage] = (
            None
            if question is None
            else StageQuestion(question.key, question.text, Scale(question.scale_min, question.scale_max))
        )
    return found


DEFAULT_SCALE = Scale(1, 5)


def stats_scales(scales: Mapping[str, Scale | None]) -> tuple[Scale, dict[str, Scale | None]]:
    """``ExperimentStats``' ``scale`` and ``stage_scales`` for the stages' scales: the
    commonest scale (the first stage's on a tie) as ``scale``, and only the stages
    that differ from it in ``stage_scales``. An experiment whose questions share one
    scale has the statistics it had when the scale was the experiment's."""
    common = Counter(scale for scale in scales.values() if scale is not None).most_common(1)
    scale = common[0][0] if common else DEFAULT_SCALE
    return scale, {stage: s for stage, s in scales.items() if s != scale}


@dataclass(frozen=True)
class _Shape:
    """What an experiment's statistics look like, and how variant ids map to keys."""

    stages: tuple[str, ...]
    target_stage: str
    variants: tuple[str, ...]
    control: str
    weights: tuple[float, ...]
    scale: Scale
    stage_scales: Mapping[str, Scale | None]
    variant_keys: Mapping[int, str]

    @classmethod
    def of(cls, experiment: Experiment) -> _Shape:
        variants = sorted(experiment.variants, key=lambda v: v.position)
        control = next((v for v in variants if v.is_control), variants[0])
        total = sum(v.weight for v in variants)
        questions = stage_questions(experiment)
        scale, stage_scales = stats_scales({s: q.scale if q else None for s, q in questions.items()})
        return cls(
            stages=tuple(experiment.stages),
            target_stage=experiment.target_stage,
            variants=tuple(v.key for v in variants),
            control=control.key,
            weights=tuple(v.weight / total for v in variants),
            scale=scale,
            stage_scales=stage_scales,
            variant_keys={v.id: v.key for v in variants},
        )

    @property
    def variant_ids(self) -> dict[str, int]:
        return {key: variant_id for variant_id, key in self.variant_keys.items()}

    def scale_of(self, stage: str) -> Scale | None:
        return self.stage_scales.get(stage, self.scale)


class _Accumulator:
    """Per stage x variant counts as the rows of a report arrive; each stage's
    histograms sized to its own scale (empty without a rating question)."""

    def __init__(self, shape: _Shape) -> None:
        self.shape = shape
        self.exposed = {v: 0 for v in shape.variants}
        self.converted = {(s, v): 0 for s in shape.stages for v in shape.variants}
        # stage -> (lowest rating, highest rating) of its scale; absent: no question.
        self.bounds = {s: (scale.min, scale.max) for s in shape.stages if (scale := shape.scale_of(s)) is not None}
        self.ratings = {(s, v): [0] * (hi - lo + 1) for s, (lo, hi) in self.bounds.items() for v in shape.variants}

    # int(n): PostgreSQL sums BIGINT counters as NUMERIC, which arrives as Decimal.
    def add_exposed(self, variant_id: int, n: int) -> None:
        self.exposed[self.shape.variant_keys[variant_id]] += int(n)

    def add_converted(self, stage: str, variant_id: int, n: int) -> None:
        key = (stage, self.shape.variant_keys[variant_id])
        if key in self.converted:  # a stage dropped from a draft's definition leaves no cell
            self.converted[key] += int(n)

    def add_rating(self, stage: str, variant_id: int, rating: int, n: int) -> None:
        """A rating at a stage without a question (or out of its scale: the question
        changed since) is not the stage's rating, and is left out."""
        bounds = self.bounds.get(stage)
        if bounds is not None and bounds[0] <= rating <= bounds[1]:
            self.ratings[(stage, self.shape.variant_keys[variant_id])][rating - bounds[0]] += int(n)

    def stats(self) -> ExperimentStats:
        shape = self.shape
        cells = {
            stage: {
                v: CellStats(self.exposed[v], self.converted[(stage, v)], tuple(self.ratings.get((stage, v), ())))
                for v in shape.variants
            }
            for stage in shape.stages
        }
        return ExperimentStats(
            shape.stages,
            shape.target_stage,
            shape.variants,
            shape.control,
            shape.weights,
            shape.scale,
            cells,
            stage_scales=shape.stage_scales,
        )


def _not_forced():
    # "= false", not "IS false": PostgreSQL matches only the former to the index.
    return Exposure.forced == false()


def _warehouse_cells(session: Session, experiment: Experiment) -> list[list[Any]]:
    """The cells last computed in the experiment's warehouse (none yet: empty)."""
    stats = session.get(WarehouseStats, experiment.id)
    return list(stats.cells or ()) if stats is not None and stats.source_id == experiment.warehouse_source_id else []


def _add_cell(
    totals: _Accumulator, variant_ids: Mapping[str, int], kind: str, stage: str, variant: str, value: int, n: int
) -> None:
    variant_id = variant_ids.get(variant)
    if variant_id is None:  # a variant the definition no longer has
        return
    if kind == "exposed":
        totals.add_exposed(variant_id, n)
    elif kind == "converted":
        totals.add_converted(stage, variant_id, n)
    else:
        totals.add_rating(stage, variant_id, value, n)


def experiment_stats(session: Session, experiment: Experiment) -> ExperimentStats:
    """The sufficient statistics of the whole experiment, from one query over the
    covering exposure index and the outcome counters (for a warehouse experiment:
    from the cells last computed in its warehouse, ``warehouse.refresh``)."""
    shape = _Shape.of(experiment)
    if experiment.warehouse_source_id is not None:
        totals = _Accumulator(shape)
        ids = shape.variant_ids
        for kind, stage, variant, value, _day, n in _warehouse_cells(session, experiment):
            _add_cell(totals, ids, kind, stage, variant, value, n)
        return totals.stats()
    exposed = (
        select(
            literal("exposed").label("kind"),
            cast(null(), String).label("stage"),
            Exposure.variant_id,
            literal(0).label("value"),
            func.count().label("n"),
        )
        .where(Exposure.experiment_id == experiment.id, _not_forced())
        .group_by(Exposure.variant_id)
    )
    outcomes = (
        select(
            OutcomeCount.kind,
            OutcomeCount.stage,
            OutcomeCount.variant_id,
            OutcomeCount.value,
            func.sum(OutcomeCount.customers),
        )
        .where(OutcomeCount.experiment_id == experiment.id)
        .group_by(OutcomeCount.kind, OutcomeCount.stage, OutcomeCount.variant_id, OutcomeCount.value)
    )
    totals = _Accumulator(shape)
    for kind, stage, variant_id, value, n in session.execute(union_all(exposed, outcomes)):
        if kind == "exposed":
            totals.add_exposed(variant_id, n)
        elif kind == "converted":
            totals.add_converted(stage, variant_id, n)
        else:
            totals.add_rating(stage, variant_id, value, n)
    return totals.stats()


def _segment_value(session: Session, attribute: str):
    """The attribute as text on both databases (PostgreSQL's ``->>`` writes booleans
    as true/false; SQLite's json_extract would give 1/0, so it is spelled out)."""
    column = Exposure.attributes[attribute]
    if session.get_bind().dialect.name != "sqlite":
        return column.as_string()
    path = f'$."{attribute}"'
    kind = func.json_type(Exposure.attributes, path)
    return case(
        (kind == "true", literal("true")),
        (kind == "false", literal("false")),
        else_=cast(func.json_extract(Exposure.attributes, path), String),
    )


def segment_stats(session: Session, experiment: Experiment, attribute: str) -> dict[str | None, ExperimentStats]:
    """Statistics per value of one exposure attribute (given at assignment); customers
    without it are under None. The segments add up to :func:`experiment_stats`."""
    if not SEGMENT_ATTRIBUTE.match(attribute):
        raise MalformedRequest(fields={"segment": "must be an attribute name: letters, digits, '_' or '-' (1-64)"})
    if experiment.warehouse_source_id is not None:
        return _warehouse_segments(session, experiment, attribute)
    shape = _Shape.of(experiment)
    segment = _segment_value(session, attribute).label("segment")
    exposed = (
        select(
            segment,
            cast(null(), String).label("stage"),
            Exposure.variant_id,
            cast(null(), Integer).label("rating"),
            func.count().label("n"),
            literal(0).label("converted"),
        )
        .where(Exposure.experiment_id == experiment.id, _not_forced())
        .group_by(segment, Exposure.variant_id)
    )
    outcomes = (
        select(
            segment, Outcome.stage, Outcome.variant_id, Outcome.rating, func.count(), func.count(Outcome.converted_at)
        )
        .join(
            Exposure, and_(Exposure.experiment_id == Outcome.experiment_id, Exposure.customer_id == Outcome.customer_id)
        )
        .where(Outcome.experiment_id == experiment.id)
        .group_by(segment, Outcome.stage, Outcome.variant_id, Outcome.rating)
    )
    by_segment: dict[str | None, _Accumulator] = {}
    for value, stage, variant_id, rating, n, converted in session.execute(union_all(exposed, outcomes)):
        totals = by_segment.get(value)
        if totals is None:
            if len(by_segment) == MAX_SEGMENTS:
                raise _too_many_values()
            totals = by_segment[value] = _Accumulator(shape)
        if stage is None:
            totals.add_exposed(variant_id, n)
            continue
        totals.add_converted(stage, variant_id, converted)
        if rating is not None:
            totals.add_rating(stage, variant_id, rating, n)
    return {value: totals.stats() for value, totals in by_segment.items()}


def _too_many_values() -> MalformedRequest:
    return MalformedRequest(
        fields={"segment": f"has more than {MAX_SEGMENTS} distinct values; choose a coarser attribute"}
    )


def warehouse_segments(session: Session, experiment: Experiment) -> dict[str, Any] | None:
    """The segments computed at the last full recomputation in the experiment's
    warehouse (``warehouse.segments``), or None: none yet, or its source maps no
    attributes column."""
    stats = session.get(WarehouseStats, experiment.id)
    if stats is None or stats.source_id != experiment.warehouse_source_id or stats.segments is None:
        return None
    source = experiment.warehouse_source
    return stats.segments if source is not None and "attributes" in source.exposures_columns else None


def _warehouse_segments(session: Session, experiment: Experiment, attribute: str) -> dict[str | None, ExperimentStats]:
    """:func:`segment_stats` of a warehouse experiment, from its segments' cells as
    of the last full recomputation; a clear refusal when there are none to read."""
    source = experiment.warehouse_source
    assert source is not None
    if "attributes" not in source.exposures_columns:
        raise MalformedRequest(
            fields={
                "segment": f"this experiment's outcomes live in the warehouse {source.name}, whose exposures table "
                "has no attributes column mapped: map an attributes column (exposures_columns.attributes) "
                "to get segments"
            }
        )
    computed = warehouse_segments(session, experiment)
    if computed is None:
        raise MalformedRequest(
            fields={
                "segment": f"segments are computed in the warehouse {source.name} at a full recomputation, and none "
                "has run since its attributes were mapped: ask for a refresh"
            }
        )
    if computed.get("error"):
        raise MalformedRequest(
            fields={"segment": f"the last full recomputation could not compute segments: {computed['error']}"}
        )
    if attribute in computed.get("too_many", ()):
        raise _too_many_values()
    cells = computed["attributes"].get(attribute)
    if cells is None:
        known = ", ".join(sorted({*computed["attributes"], *computed.get("too_many", ())})) or "none"
        raise MalformedRequest(
            fields={
                "segment": "is not among the attributes of this experiment's exposures at the last full "
                f"recomputation in the warehouse (those: {known})"
            }
        )
    shape = _Shape.of(experiment)
    ids = shape.variant_ids
    by_segment: dict[str | None, _Accumulator] = {}
    for value, kind, stage, variant, rating, n in cells:
        totals = by_segment.get(value)
        if totals is None:
            totals = by_segment[value] = _Accumulator(shape)
        _add_cell(totals, ids, kind, stage, variant, rating, n)
    return {value: totals.stats() for value, totals in by_segment.items()}


def daily_stats(session: Session, experiment: Experiment) -> list[tuple[date, ExperimentStats]]:
    """Cumulative statistics at the end of each UTC day, from the first exposure to
    the last outcome (every day in between, for time plots). Customers count from the
    day of their exposure, converters from the day of their first conversion, and a
    rating from the day of the customer's latest rating (the histogram holds latest
    ratings, so an earlier day shows the latest rating given by then only if it was
    not revised later)."""
    shape = _Shape.of(experiment)
    if experiment.warehouse_source_id is not None:
        rows_by_day = _warehouse_days(session, experiment)
    else:
        rows_by_day = _builtin_days(session, experiment)
    if not rows_by_day:
        return []
    totals = _Accumulator(shape)
    ids = shape.variant_ids
    series: list[tuple[date, ExperimentStats]] = []
    day, last = min(rows_by_day), max(rows_by_day)
    while day <= last:
        for kind, stage, variant, value, n in rows_by_day.get(day, ()):
            _add_cell(totals, ids, kind, stage, variant, value, n)
        series.append((day, totals.stats()))
        day += timedelta(days=1)
    return series


def _warehouse_days(session: Session, experiment: Experiment) -> dict[date, list[tuple[Any, ...]]]:
    rows_by_day: dict[date, list[tuple[Any, ...]]] = {}
    for kind, stage, variant, value, day, n in _warehouse_cells(session, experiment):
        rows_by_day.setdefault(date.fromisoformat(day), []).append((kind, stage, variant, value, n))
    return rows_by_day


def _builtin_days(session: Session, experiment: Experiment) -> dict[date, list[tuple[Any, ...]]]:
    """Rows by day as (kind, stage, variant key, value, customers)."""
    keys = {v.id: v.key for v in experiment.variants}
    exposure_day = utc_day(session, Exposure.exposed_at).label("day")
    exposed = (
        select(
            exposure_day,
            cast(null(), String).label("stage"),
            Exposure.variant_id,
            literal("exposed").label("kind"),
            literal(0).label("value"),
            func.count().label("n"),
        )
        .where(Exposure.experiment_id == experiment.id, _not_forced())
        .group_by(exposure_day, Exposure.variant_id)
    )
    outcomes = select(
        OutcomeCount.day,
        OutcomeCount.stage,
        OutcomeCount.variant_id,
        OutcomeCount.kind,
        OutcomeCount.value,
        OutcomeCount.customers,
    ).where(OutcomeCount.experiment_id == experiment.id)
    rows_by_day: dict[date, list[tuple[Any, ...]]] = {}
    for day, stage, variant_id, kind, value, n in session.execute(union_all(exposed, outcomes)):
        day = date.fromisoformat(day) if isinstance(day, str) else day
        if variant_id in keys:
            rows_by_day.setdefault(day, []).append((kind, stage, keys[variant_id], value, n))
    return rows_by_day


# -- data quality ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageQuality:
    """Events at one stage of the experiment that are stored but not in the lift."""

    unmatched: int = 0  # no exposure to any experiment measuring the stage (days of this run)
    before_exposure: int = 0  # the customer was exposed only after the event
    after_stop: int = 0  # the event happened after the experiment stopped
    forced: int = 0  # from forced-variant (QA) customers
    not_exposed: int = 0  # named this experiment, whose exposures never included the customer

    @property
    def excluded(self) -> int:
        return self.unmatched + self.before_exposure + self.after_stop + self.forced + self.not_exposed


@dataclass(frozen=True)
class DataQuality:
    """How clean an experiment's data is: figures to show next to its report."""

    stages: Mapping[str, StageQuality]
    forced_customers: int  # QA customers with a forced variant, left out of every denominator
    mismatched_customers: int  # customers later computed into another variant than recorded
    mismatches: int  # how many times that happened in all


def data_quality(session: Session, experiment: Experiment, *, now: datetime | None = None) -> DataQuality:
    """Quality counters of one experiment. Unmatched events belong to no experiment:
    they are counted per UTC day and the experiment shows those of its stages on the
    days it ran (whole days, so a day shared with another run is counted in both)."""
    stages = list(experiment.stages)
    figures: dict[str, dict[str, int]] = {stage: {} for stage in stages}
    quality = select(
        EventQualityCount.stage, EventQualityCount.kind, EventQualityCount.events, literal(0).label("extra")
    ).where(EventQualityCount.experiment_id == experiment.id)
    # Forced customers, then customers with mismatches and how many (not per stage).
    # Both read only flagged exposures, through the partial index ix_exposures_flagged.
    flagged = or_(Exposure.forced == true(), Exposure.mismatches > 0)
    exposures = select(
        cast(null(), String),
        literal("exposures"),
        func.count().filter(Exposure.forced == true()),
        func.count().filter(Exposure.mismatches > 0),
    ).where(Exposure.experiment_id == experiment.id, flagged)
    mismatches = select(
        cast(null(), String), literal("mismatches"), func.coalesce(func.sum(Exposure.mismatches), 0), literal(0)
    ).where(Exposure.experiment_id == experiment.id, flagged, Exposure.mismatches > 0)
    parts = [quality, exposures, mismatches]
    if experiment.started_at is not None:
        first = experiment.started_at.date()
        last = (experiment.stopped_at or now or utcnow()).date()
        parts.append(
            select(UnmatchedEventCount.stage, literal("unmatched"), func.sum(UnmatchedEventCount.events), literal(0))
            .where(UnmatchedEventCount.stage.in_(stages), UnmatchedEventCount.day.between(first, last))
            .group_by(UnmatchedEventCount.stage)
        )
    totals = {"forced_customers": 0, "mismatched_customers": 0, "mismatches": 0}
    for stage, kind, n, extra in session.execute(union_all(*parts)):
        if kind == "exposures":
            totals["forced_customers"], totals["mismatched_customers"] = int(n), int(extra)
        elif kind == "mismatches":
            totals["mismatches"] = int(n)
        elif stage in figures:
            figures[stage][kind] = int(n)
    return DataQuality(stages={stage: StageQuality(**figures[stage]) for stage in stages}, **totals)


def explain_experiment_stats(session: Session, experiment: Experiment) -> list[str]:
    """The database's plan for the exposed-count part of :func:`experiment_stats`
    (the only part that reads more than a handful of rows), for tests and the bench."""
    statement = (
        select(Exposure.variant_id, func.count())
        .where(Exposure.experiment_id == experiment.id, _not_forced())
        .group_by(Exposure.variant_id)
    )
    compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if session.get_bind().dialect.name == "sqlite" else "EXPLAIN "
    return [" ".join(str(c) for c in row) for row in session.execute(text(prefix + str(compiled)))]
