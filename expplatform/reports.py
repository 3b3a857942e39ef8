"""Lift reports: aggregation -> analysis -> one ``Report`` that the page, the JSON
and CSV API and the command line all show.

Every number comes from ``analysis`` (the conjugate ``analyze`` for the live report,
``analysis.hierarchical`` through a job for the full model); this module only picks
the settings, gathers the data-quality warnings and arranges the results.

Speed, at a million customers:

- the whole-experiment statistics read an index and a few counters (tens of ms), and
  the analysis of a given data version is kept (it is deterministic for a seed), so a
  report whose data did not move costs one statistics query;
- the daily series (it groups every exposure by day: about a second) and the segment
  breakdowns (they group every outcome row: seconds) run in one background thread per
  worker and are reused while new data arrives
  for up to ``report_refresh_seconds`` (then recomputed in the background while the
  old one is shown). The request that starts a first computation waits for it at
  most ``report_wait_seconds`` (enough for a small experiment); otherwise, and for
  the requests that come while it runs, the report says it is being computed. The series' point for today
  is always analysed from the live statistics, so the latest figures are never stale.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import Any, Generic, TypeVar

from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from analysis import FAST_DRAWS, analyze
from analysis.types import (
    ArmSummary,
    CellStats,
    Comparison,
    DecisionRule,
    ExperimentResult,
    ExperimentStats,
    Prior,
)

from . import plots
from .aggregation import SEGMENT_ATTRIBUTE, DataQuality, daily_stats, data_quality, experiment_stats, segment_stats
from .db import Database, get_db
from .errors import DomainError, MalformedRequest
from .experiment_settings import experiment_settings
from .job_records import recent_jobs
from .models import AnalysisJob, Experiment, Exposure, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")

SEED = 0  # reports are reproducible: the same data and settings give the same numbers
METRICS = ("conversion", "mean_rating", "top_box", "nps")
METRIC_LABELS = {"conversion": "conversion", "mean_rating": "mean rating", "top_box": "top-box share", "nps": "NPS"}
CREDIBLE_LEVELS = (0.5, 0.999)
ATTRIBUTE_SAMPLE = 1000


# -- options and settings -----------------------------------------------------------------


@dataclass(frozen=True)
class ReportOptions:
    """What a caller may ask of a report (query string, CLI flags), validated here."""

    segment: str | None = None
    credible_level: float | None = None
    full_model: bool = True
    series: bool = True

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> ReportOptions:
        errors: dict[str, str] = {}
        segment = (args.get("segment") or "").strip() or None
        if segment is not None and not SEGMENT_ATTRIBUTE.match(segment):
            errors["segment"] = "must be an attribute name: letters, digits, '_' or '-' (1-64)"
        level = None
        raw_level = args.get("credible_level")
        if raw_level not in (None, ""):
            try:
                level = float(raw_level)
            except (TypeError, ValueError):
                level = math.nan
            if not CREDIBLE_LEVELS[0] <= level <= CREDIBLE_LEVELS[1]:
                errors["credible_level"] = f"must be a number from {CREDIBLE_LEVELS[0]} to {CREDIBLE_LEVELS[1]}"
        full_model = _flag(args.get("full_model"), default=True, name="full_model", errors=errors)
        if errors:
            raise MalformedRequest(fields=errors)
        return cls(segment=segment, credible_level=level, full_model=full_model)


def _flag(raw: Any, *, default: bool, name: str, errors: dict[str, str]) -> bool:
    if raw in (None, ""):
        return default
    if isinstance(raw, bool):
        return raw
    lowered = str(raw).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    errors[name] = "must be true or false"
    return default


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportWarning:
    code: str
    message: str


@dataclass(frozen=True)
class SeriesPoint:
    """The target stage's conversion of one treatment, cumulative to the end of ``day``."""

    day: date
    variant: str
    exposed: int
    control_exposed: int
    relative_lift: Any  # analysis Estimate or None
    p_better: float | None


@dataclass(frozen=True)
class Pending:
    """A slow part of the report (series, segments): its value, or why it is missing,
    and the data version it was computed from."""

    status: str  # "ready", "computing" or "failed"
    value: Any = None
    computed_at: datetime | None = None
    version: Hashable = None


@dataclass(frozen=True)
class SegmentResult:
    value: str | None
    stats: ExperimentStats
    result: ExperimentResult

    @property
    def exposed(self) -> int:
        return sum(self.stats.cells[self.stats.stages[0]][v].exposed for v in self.stats.variants)


@dataclass(frozen=True)
class Report:
    experiment: Experiment
    generated_at: datetime
    options: ReportOptions
    prior: Prior
    rule: DecisionRule
    stats: ExperimentStats
    result: ExperimentResult
    quality: DataQuality
    warnings: tuple[ReportWarning, ...]
    attributes: tuple[str, ...]
    series: Pending | None
    segments: Pending | None
    job: AnalysisJob | None
    colors: Mapping[str, str] = field(default_factory=dict)

    @property
    def treatments(self) -> tuple[str, ...]:
        return tuple(v for v in self.stats.variants if v != self.stats.control)

    @property
    def exposed_total(self) -> int:
        return sum(self.stats.cells[self.stats.stages[0]][v].exposed for v in self.stats.variants)

    @property
    def query(self) -> dict[str, str]:
        """The options as query arguments, for links to the other forms of this report."""
        query = {}
        if self.options.segment:
            query["segment"] = self.options.segment
        if self.options.credible_level is not None:
            query["credible_level"] = f"{self.options.credible_level:g}"
        return query


def build_report(
    session: Session,
    experiment: Experiment,
    options: ReportOptions,
    *,
    now: datetime | None = None,
    wait: float | None = -1.0,
) -> Report:
    """The report of ``experiment`` (inside an app context: it uses the app's caches).

    ``wait`` bounds the wait for a first computation of the slow parts: the
    ``report_wait_seconds`` setting by default, None to wait as long as it takes."""
    database, cache = get_db(), _cache()
    wait = database.settings.report_wait_seconds if wait == -1.0 else wait
    now = now or utcnow()
    prior, rule = experiment_settings(experiment, options.credible_level)
    stats = experiment_stats(session, experiment)
    quality = data_quality(session, experiment, now=now)
    version = _data_version(experiment, stats)
    result = cache.results.get(
        (experiment.id, version, prior, rule), lambda: analyze(stats, prior=prior, rule=rule, seed=SEED)
    )
    series = None
    if options.series:
        series = cache.slow.get(
            ("series", experiment.id, prior, rule), version, lambda: _series(database, experiment.id, prior, rule), wait
        )
        series = _with_live_point(series, version, stats, prior, rule, now)
    segments = None
    if options.segment:
        segments = cache.slow.get(
            ("segments", experiment.id, options.segment, prior, rule),
            version,
            lambda: _segments(database, experiment.id, options.segment, prior, rule),
            wait,
        )
    job = None
    if options.full_model:
        latest = recent_jobs(database, session, experiment, limit=1, now=now)
        job = latest[0] if latest else None
    return Report(
        experiment=experiment,
        generated_at=now,
        options=options,
        prior=prior,
        rule=rule,
        stats=stats,
        result=result,
        quality=quality,
        warnings=tuple(collect_warnings(stats, quality, result, rule)),
        attributes=recorded_attributes(session, experiment),
        series=series,
        segments=segments,
        job=job,
        colors=plots.variant_colors(stats.variants, stats.control),
    )


def _data_version(experiment: Experiment, stats: ExperimentStats) -> Hashable:
    """Identifies the data a result was computed from: the definition's last change
    and every count (any new exposure, conversion or rating moves one)."""
    counts = tuple(
        (cell.exposed, cell.converted, cell.ratings) for s in stats.stages for cell in stats.cells[s].values()
    )
    return (experiment.updated_at, counts)


def recorded_attributes(session: Session, experiment: Experiment) -> tuple[str, ...]:
    """Attribute names given at assignment, from up to 1,000 of the experiment's
    exposures (read through the (experiment, customer) index; names are normally the
    same for every customer of one client app)."""
    rows = session.scalars(
        select(Exposure.attributes)
        .where(Exposure.experiment_id == experiment.id)
        .order_by(Exposure.customer_id)
        .limit(ATTRIBUTE_SAMPLE)
    )
    names = {name for attributes in rows if isinstance(attributes, dict) for name in attributes}
    return tuple(sorted(name for name in names if SEGMENT_ATTRIBUTE.match(name)))


# -- warnings ---------------------------------------------------------------------------------


def collect_warnings(
    stats: ExperimentStats, quality: DataQuality, result: ExperimentResult, rule: DecisionRule
) -> list[ReportWarning]:
    """Everything that should make an analyst doubt or wait, most serious first."""
    warnings: list[ReportWarning] = []
    if result.sample_ratio.flagged:
        note = next((n for n in result.notes if n.code == "sample_ratio_mismatch"), None)
        warnings.append(ReportWarning("sample_ratio_mismatch", note.message if note else "Sample-ratio mismatch."))
    if quality.mismatched_customers:
        warnings.append(
            ReportWarning(
                "multiple_exposures",
                f"{quality.mismatched_customers:,} customers would since have been assigned another variant than the one "
                f"recorded ({quality.mismatches:,} times in all); they are served and counted in their first variant. "
                "Weights or salts may have been edited in the database.",
            )
        )
    unmatched = sum(q.unmatched + q.not_exposed for q in quality.stages.values())
    if unmatched:
        per_stage = _per_stage(quality, lambda q: q.unmatched + q.not_exposed)
        warnings.append(
            ReportWarning(
                "unmatched_events",
                f"{unmatched:,} events at this experiment's stages matched no exposure ({per_stage}): clients may send "
                "events for customers they never assigned, or with other customer ids.",
            )
        )
    before = sum(q.before_exposure for q in quality.stages.values())
    if before:
        warnings.append(
            ReportWarning(
                "events_before_exposure",
                f"{before:,} events happened before the customer's exposure ({_per_stage(quality, lambda q: q.before_exposure)}) "
                "and are not counted: check that clients assign before they show the journey step.",
            )
        )
    after = sum(q.after_stop for q in quality.stages.values())
    if after:
        warnings.append(
            ReportWarning(
                "events_after_stop", f"{after:,} events arrived after the experiment stopped and are not counted."
            )
        )
    if quality.forced_customers:
        forced_events = sum(q.forced for q in quality.stages.values())
        warnings.append(
            ReportWarning(
                "forced_customers_excluded",
                f"{quality.forced_customers:,} forced (QA) customers and their {forced_events:,} events are excluded "
                "from the analysis.",
            )
        )
    exposed = {v: stats.cells[stats.target_stage][v].exposed for v in stats.variants}
    short = [v for v, n in exposed.items() if n < rule.min_exposed]
    if short:
        warnings.append(
            ReportWarning(
                "not_enough_data",
                "Not enough data yet: "
                + ", ".join(f"{v} has {exposed[v]:,}" for v in short)
                + f" exposed customers; no decision is made below {rule.min_exposed:,} per variant.",
            )
        )
    return warnings


def _per_stage(quality: DataQuality, count: Callable[[Any], int]) -> str:
    return ", ".join(f"{stage}: {count(q):,}" for stage, q in quality.stages.items() if count(q))


# -- daily series and segments (slow, computed in the background) -------------------------------


def _target_only(stats: ExperimentStats) -> ExperimentStats:
    """The statistics of the target stage alone: the series shows only its conversion,
    and the analysis of one stage costs a fifth of five."""
    target = stats.target_stage
    return ExperimentStats(
        (target,), target, stats.variants, stats.control, stats.weights, stats.scale, {target: stats.cells[target]}
    )


def _series_points(day: date, stats: ExperimentStats, prior: Prior, rule: DecisionRule) -> list[SeriesPoint]:
    # FAST_DRAWS without the P(better) top-up: the mode the analysis offers for series
    # points; P(better) of conversion is exact whatever the draws.
    result = analyze(_target_only(stats), prior=prior, rule=rule, seed=SEED, draws=FAST_DRAWS, max_p_better_error=None)
    conversion = result.stage(stats.target_stage).metric("conversion")
    cells = stats.cells[stats.target_stage]
    return [
        SeriesPoint(
            day, c.treatment, cells[c.treatment].exposed, cells[stats.control].exposed, c.relative_lift, c.p_better
        )
        for c in conversion.comparisons
    ]


def _series(database: Database, experiment_id: int, prior: Prior, rule: DecisionRule) -> tuple[SeriesPoint, ...]:
    with database.sessionmaker() as session:
        experiment = session.get(Experiment, experiment_id)
        days = daily_stats(session, experiment) if experiment is not None else []
    return tuple(point for day, stats in days for point in _series_points(day, stats, prior, rule))


def _with_live_point(series: Pending, version, stats, prior, rule, now: datetime) -> Pending:
    """Today's point from the live statistics when the series is older than the data."""
    if series.status != "ready" or series.version == version:
        return series
    today = now.date()
    kept = tuple(p for p in series.value if p.day < today)
    if not any(stats.cells[stats.target_stage][v].exposed for v in stats.variants):
        return series
    return replace(series, value=kept + tuple(_series_points(today, stats, prior, rule)))


def _segments(
    database: Database, experiment_id: int, attribute: str, prior: Prior, rule: DecisionRule
) -> tuple[SegmentResult, ...]:
    with database.sessionmaker() as session:
        experiment = session.get(Experiment, experiment_id)
        by_value = segment_stats(session, experiment, attribute) if experiment is not None else {}
    segments = [
        SegmentResult(value, stats, analyze(stats, prior=prior, rule=rule, seed=SEED))
        for value, stats in by_value.items()
    ]
    return tuple(sorted(segments, key=lambda s: (-s.exposed, s.value is None, str(s.value))))


# -- caches ----------------------------------------------------------------------------------------


class _Lru(Generic[T]):
    """Small per-worker memo of deterministic computations."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


@dataclass
class _Entry:
    version: Hashable
    value: Any
    computed_at: datetime
    started: float  # monotonic time of the computation's start


class _Slow:
    """Seconds-long report parts, computed one at a time in a background thread and
    reused while they are younger than ``refresh`` (see the module docstring)."""

    def __init__(self, refresh: float, size: int = 64) -> None:
        self._refresh, self._size = refresh, size
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._running: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def get(self, key: Hashable, version: Hashable, compute: Callable[[], Any], wait: float | None) -> Pending:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.version == version or time.monotonic() - entry.started < self._refresh):
                return _ready(entry)
            future = self._running.get(key)
            started_here = future is None
            if started_here:
                future = self._submit(key, version, compute)
        if entry is not None:
            return _ready(entry)  # stale while the new one is computed
        if not started_here:
            return Pending("computing")  # the request that started it did the waiting
        try:
            future.result(timeout=wait)
        except FutureTimeout:
            return Pending("computing")
        except DomainError:
            raise  # the caller's mistake (e.g. an attribute with too many values): say so
        except Exception:
            return Pending("failed")
        with self._lock:
            return _ready(self._entries[key])

    def _submit(self, key: Hashable, version: Hashable, compute: Callable[[], Any]) -> Future:
        if self._executor is None or self._pid != os.getpid():  # not inherited across fork
            self._executor, self._pid = ThreadPoolExecutor(1, thread_name_prefix="expplatform-report"), os.getpid()
            self._running = {}
        started = time.monotonic()

        def run() -> None:
            try:
                value = compute()
            except DomainError:
                raise
            except Exception:
                log.exception("report part %r failed", key[:2])
                raise
            finally:
                with self._lock:
                    self._running.pop(key, None)
            with self._lock:
                self._entries[key] = _Entry(version, value, utcnow(), started)
                self._entries.move_to_end(key)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)

        future = self._executor.submit(run)
        self._running[key] = future
        return future

    def wait_idle(self, timeout: float) -> bool:
        """For tests: True once nothing is being computed."""
        with self._lock:
            running = list(self._running.values())
        for future in running:
            try:
                future.result(timeout=timeout)
            except FutureTimeout:
                return False
            except Exception:
                pass
        return True


def _ready(entry: _Entry) -> Pending:
    return Pending("ready", entry.value, entry.computed_at, entry.version)


class ReportCache:
    def __init__(self, settings) -> None:
        self.results: _Lru[ExperimentResult] = _Lru(64)
        self.plots: _Lru[dict[str, str]] = _Lru(32)
        self.slow = _Slow(settings.report_refresh_seconds)


def _cache() -> ReportCache:
    return current_app.extensions["report_cache"]


def init_app(app: Flask) -> None:
    app.extensions["report_cache"] = ReportCache(app.extensions["settings"])


# -- views of the report: rows, the lift map, plots, JSON, CSV -----------------------------------


@dataclass(frozen=True)
class MetricRow:
    """One stage x variant x metric: the CSV line and the terminal table's row."""

    segment: str | None
    stage: str
    variant: str
    is_control: bool
    metric: str
    exposed: int
    count: int  # converters (conversion) or customers who rated (satisfaction metrics)
    observed: float | None
    posterior_mean: float | None
    posterior_low: float | None
    posterior_high: float | None
    relative_lift: float | None
    relative_lift_low: float | None
    relative_lift_high: float | None
    absolute_difference: float | None
    absolute_difference_low: float | None
    absolute_difference_high: float | None
    p_better: float | None
    p_best: float | None
    expected_loss: float | None
    expected_loss_relative: float | None
    decision: str | None
    status: str


CSV_COLUMNS = tuple(f for f in MetricRow.__dataclass_fields__)


def metric_rows(stats: ExperimentStats, result: ExperimentResult, segment: str | None = None) -> list[MetricRow]:
    rows = []
    for stage_result in result.stages:
        for metric in stage_result.metrics:
            for arm in metric.arms:
                cell = stats.cells[stage_result.stage][arm.variant]
                is_control = arm.variant == result.control
                comparison = None if is_control else metric.comparison(arm.variant)
                rows.append(
                    _row(segment, stage_result.stage, metric.metric, metric.status, arm, comparison, cell, is_control)
                )
    return rows


def _row(
    segment,
    stage: str,
    metric: str,
    status: str,
    arm: ArmSummary,
    comparison: Comparison | None,
    cell: CellStats,
    is_control: bool,
) -> MetricRow:
    posterior = arm.posterior
    lift = comparison.relative_lift if comparison else None
    diff = comparison.absolute_difference if comparison else None
    return MetricRow(
        segment=segment,
        stage=stage,
        variant=arm.variant,
        is_control=is_control,
        metric=metric,
        exposed=cell.exposed,
        count=cell.converted if metric == "conversion" else sum(cell.ratings),
        observed=arm.observed,
        posterior_mean=posterior.mean if posterior else None,
        posterior_low=posterior.low if posterior else None,
        posterior_high=posterior.high if posterior else None,
        relative_lift=lift.mean if lift else None,
        relative_lift_low=lift.low if lift else None,
        relative_lift_high=lift.high if lift else None,
        absolute_difference=diff.mean if diff else None,
        absolute_difference_low=diff.low if diff else None,
        absolute_difference_high=diff.high if diff else None,
        p_better=comparison.p_better if comparison else None,
        p_best=arm.p_best,
        expected_loss=comparison.expected_loss if comparison else arm.expected_loss,
        expected_loss_relative=comparison.expected_loss_relative if comparison else arm.expected_loss_relative,
        decision=comparison.decision if comparison else None,
        status=comparison.status if comparison else status,
    )


def report_rows(report: Report) -> list[MetricRow]:
    """The whole experiment's rows, then each segment's when a segment was asked for."""
    rows = metric_rows(report.stats, report.result)
    if report.segments is not None and report.segments.status == "ready":
        for segment in report.segments.value:
            label = "(not recorded)" if segment.value is None else segment.value
            rows += metric_rows(segment.stats, segment.result, f"{report.options.segment}={label}")
    return rows


def to_csv(rows: Sequence[MetricRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else _csv_safe(value) for value in asdict(row).values()])
    return buffer.getvalue()


def _csv_safe(value: Any) -> Any:
    """Floats at full precision (repr round-trips), booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value


@dataclass(frozen=True)
class LiftCell:
    """A variant at a stage on the lift map."""

    variant: str
    color: str
    is_control: bool
    exposed: int
    conversion: ArmSummary
    mean_rating: ArmSummary
    top_box: ArmSummary
    lift: Comparison | None  # conversion
    rating_lift: Comparison | None  # mean rating
    evidence: str


@dataclass(frozen=True)
class LiftStage:
    stage: str
    is_target: bool
    # A stage before the tested step: the variants cannot have changed it yet, so its
    # numbers are a balance check (they should agree), not a result to act on.
    before_target: bool
    cells: tuple[LiftCell, ...]


def evidence(comparison: Comparison | None, rule: DecisionRule) -> str:
    """How strongly the data says better or worse, for the map's colours: the rule's
    own thresholds for 'strong', and P(better) beyond 0.75 / below 0.25 for 'leaning'."""
    if comparison is None or comparison.p_better is None or comparison.decision in (None, "not_enough_data"):
        return "none"
    p = comparison.p_better
    if p >= rule.ship_probability:
        return "strong-better"
    if p <= rule.harm_probability:
        return "strong-worse"
    if p >= 0.75:
        return "better"
    if p <= 0.25:
        return "worse"
    return "unclear"


def lift_map(
    stats: ExperimentStats, result: ExperimentResult, rule: DecisionRule, colors: Mapping[str, str]
) -> list[LiftStage]:
    stages = []
    target_index = stats.stages.index(result.target_stage)
    for stage_result in result.stages:
        conversion = stage_result.metric("conversion")
        rating = stage_result.metric("mean_rating")
        top_box = stage_result.metric("top_box")
        cells = []
        for variant in stats.variants:
            is_control = variant == result.control
            lift = None if is_control else conversion.comparison(variant)
            cells.append(
                LiftCell(
                    variant=variant,
                    color=colors.get(variant, plots.CONTROL_COLOR),
                    is_control=is_control,
                    exposed=stats.cells[stage_result.stage][variant].exposed,
                    conversion=conversion.arm(variant),
                    mean_rating=rating.arm(variant),
                    top_box=top_box.arm(variant),
                    lift=lift,
                    rating_lift=None if is_control else rating.comparison(variant),
                    evidence=evidence(lift, rule),
                )
            )
        stages.append(
            LiftStage(
                stage_result.stage,
                stage_result.stage == result.target_stage,
                stats.stages.index(stage_result.stage) < target_index,
                tuple(cells),
            )
        )
    return stages


def render_plots(report: Report) -> dict[str, str]:
    """The page's SVG plots, kept per data version (rendering costs ~0.2 s)."""
    series = report.series.value if report.series is not None and report.series.status == "ready" else ()
    key = (
        report.experiment.id,
        _data_version(report.experiment, report.stats),
        report.prior,
        report.rule,
        tuple(series),
    )
    return _cache().plots.get(key, lambda: _draw(report, series))


def _draw(report: Report, series: Sequence[SeriesPoint]) -> dict[str, str]:
    result, stats, colors = report.result, report.stats, report.colors
    rows = []
    for stage_result in result.stages:
        for metric in ("conversion", "mean_rating"):
            for c in stage_result.metric(metric).comparisons:
                if c.relative_lift is not None and c.relative_lift.mean is not None:
                    rows.append(
                        plots.LiftRow(
                            stage_result.stage,
                            METRIC_LABELS[metric],
                            c.treatment,
                            c.relative_lift.mean,
                            c.relative_lift.low,
                            c.relative_lift.high,
                        )
                    )
    target = result.stage(result.target_stage).metric("conversion")
    curves = [
        plots.BetaCurve(arm.variant, *arm.conjugate_params[:2])
        for arm in target.arms
        if arm.conjugate_params is not None and stats.cells[result.target_stage][arm.variant].exposed
    ]
    shares = {
        v: [
            stats.cells[s][v].converted / stats.cells[s][v].exposed if stats.cells[s][v].exposed else 0.0
            for s in stats.stages
        ]
        for v in stats.variants
    }
    drawn = {
        "forest": plots.forest(rows, colors, level=report.rule.credible_level),
        "densities": plots.densities(curves, colors, stage=result.target_stage),
        "funnel": plots.funnel(stats.stages, shares, colors),
    }
    if series:
        points = [plots.DayPoint(p.day, p.variant, *_estimate(p.relative_lift), p.p_better) for p in series]
        drawn["over_time"] = plots.over_time(
            points,
            colors,
            stage=result.target_stage,
            level=report.rule.credible_level,
            ship_probability=report.rule.ship_probability,
            harm_probability=report.rule.harm_probability,
        )
    return drawn


def _estimate(estimate: Any) -> tuple[float | None, float | None, float | None]:
    if estimate is None:
        return None, None, None
    return estimate.mean, estimate.low, estimate.high


def job_dict(job: AnalysisJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.id,
        "status": job.status,
        "requested_by": job.requested_by,
        "params": job.params,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "heartbeat_at": _iso(job.heartbeat_at),
        "error": job.error,
        "snapshot": job.snapshot,
        "result": job.result,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready values (documented as ``Report`` in the API)."""
    experiment = report.experiment
    series = report.series
    segments = report.segments
    return {
        "experiment": {
            "key": experiment.key,
            "name": experiment.name,
            "status": experiment.status,
            "stages": list(report.stats.stages),
            "target_stage": report.stats.target_stage,
            "control": report.stats.control,
            "variants": [
                {"key": v.key, "weight": v.weight, "control": v.key == report.stats.control}
                for v in sorted(experiment.variants, key=lambda v: v.position)
            ],
            "started_at": _iso(experiment.started_at),
            "stopped_at": _iso(experiment.stopped_at),
        },
        "generated_at": _iso(report.generated_at),
        "settings": {"prior": asdict(report.prior), "decision": asdict(report.rule), "seed": SEED},
        "warnings": [asdict(w) for w in report.warnings],
        "data_quality": {
            "forced_customers": report.quality.forced_customers,
            "mismatched_customers": report.quality.mismatched_customers,
            "mismatches": report.quality.mismatches,
            "stages": {stage: asdict(q) for stage, q in report.quality.stages.items()},
        },
        "exposed": {v: report.stats.cells[report.stats.stages[0]][v].exposed for v in report.stats.variants},
        "result": report.result.to_dict(),
        "time_series": None
        if series is None
        else {
            "status": series.status,
            "stage": report.stats.target_stage,
            "metric": "conversion",
            "computed_at": _iso(series.computed_at),
            "points": [
                {
                    "day": p.day.isoformat(),
                    "variant": p.variant,
                    "exposed": p.exposed,
                    "control_exposed": p.control_exposed,
                    "relative_lift": p.relative_lift.to_dict() if p.relative_lift is not None else None,
                    "p_better": p.p_better,
                }
                for p in (series.value or ())
            ],
        },
        "segments": None
        if segments is None
        else {
            "attribute": report.options.segment,
            "status": segments.status,
            "computed_at": _iso(segments.computed_at),
            "values": [
                {"value": s.value, "exposed": s.exposed, "result": s.result.to_dict()} for s in (segments.value or ())
            ],
        },
        "recorded_attributes": list(report.attributes),
        "full_model": job_dict(report.job) if report.options.full_model else None,
    }


@dataclass(frozen=True)
class FullModelRow:
    """One stage x metric x treatment, conjugate beside the full model."""

    stage: str
    metric: str
    treatment: str
    conjugate_lift: Any  # Estimate
    conjugate_p_better: float | None
    full_lift: dict[str, Any] | None
    full_p_better: float | None


@dataclass(frozen=True)
class FullModelView:
    job: AnalysisJob
    rows: tuple[FullModelRow, ...]
    diagnostics: dict[str, Any] | None
    recommendation: dict[str, Any] | None
    snapshot: dict[str, Any] | None
    exposed_now: dict[str, int]


def full_model_view(report: Report) -> FullModelView | None:
    """The latest fit next to the live conjugate results (the fit's result is stored
    as the JSON of the same result type, so it is read here as a mapping)."""
    job = report.job
    if job is None:
        return None
    rows: list[FullModelRow] = []
    fitted = job.result if job.status == "finished" and isinstance(job.result, dict) else None
    comparisons: dict[tuple[str, str, str], dict[str, Any]] = {}
    for stage in (fitted or {}).get("stages", []):
        for metric in stage.get("metrics", []):
            for c in metric.get("comparisons", []):
                comparisons[(stage.get("stage"), metric.get("metric"), c.get("treatment"))] = c
    if fitted is not None:
        for stage_result in report.result.stages:
            for metric in ("conversion", "mean_rating"):
                for c in stage_result.metric(metric).comparisons:
                    full = comparisons.get((stage_result.stage, metric, c.treatment), {})
                    rows.append(
                        FullModelRow(
                            stage_result.stage,
                            metric,
                            c.treatment,
                            c.relative_lift,
                            c.p_better,
                            full.get("relative_lift"),
                            full.get("p_better"),
                        )
                    )
    stages = report.stats.stages
    return FullModelView(
        job=job,
        rows=tuple(rows),
        diagnostics=(fitted or {}).get("diagnostics"),
        recommendation=(fitted or {}).get("recommendation"),
        snapshot=job.snapshot,
        exposed_now={v: report.stats.cells[stages[0]][v].exposed for v in report.stats.variants},
    )


def format_table(report: Report) -> str:
    """The report for a terminal: the recommendation and warnings, then one block per
    stage with a line per variant."""
    result, stats = report.result, report.stats
    e = report.experiment
    level = f"{report.rule.credible_level:.0%}"
    lines = [
        f"{e.name} ({e.key}, {e.status}) - testing {stats.target_stage}; {report.exposed_total:,} customers exposed",
        "",
        f"Recommendation: {result.recommendation.summary}",
        *(f"  - {reason}" for reason in result.recommendation.reasons),
    ]
    if report.warnings:
        lines += ["", "Warnings:", *(f"  ! {w.message}" for w in report.warnings)]
    header = ("variant", "exposed", "conv", f"lift [{level}]", "P(better)", "exp.loss", "rating", "top-box", "decision")
    widths = (max(8, *(len(v) for v in stats.variants)), 9, 7, 27, 9, 8, 6, 7, 15)
    for stage in lift_map(stats, result, report.rule, report.colors):
        marker = (
            "  <- under test"
            if stage.is_target
            else "  (before the tested step: a balance check)"
            if stage.before_target
            else ""
        )
        lines += ["", f"{stage.stage}{marker}"]
        lines.append(
            "  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
        )
        for cell in stage.cells:
            lift = cell.lift
            values = (
                cell.variant + (" (control)" if cell.is_control and cell.variant != "control" else ""),
                f"{cell.exposed:,}",
                _pct(cell.conversion.observed),
                "" if lift is None else _lift_text(lift.relative_lift),
                "" if lift is None else _prob(lift.p_better),
                "" if lift is None else _pct(lift.expected_loss_relative, 2),
                "-" if cell.mean_rating.observed is None else f"{cell.mean_rating.observed:.2f}",
                _pct(cell.top_box.observed, 0),
                "" if lift is None or lift.decision is None or stage.before_target else lift.decision.replace("_", " "),
            )
            lines.append(
                "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))
            )
    if report.segments is not None and report.segments.status == "ready":
        lines += ["", f"By {report.options.segment}:"]
        for segment in report.segments.value:
            label = "(not recorded)" if segment.value is None else segment.value
            target = segment.result.stage(stats.target_stage).metric("conversion")
            lifts = ", ".join(
                f"{c.treatment} {_lift_text(c.relative_lift)} P(better) {_prob(c.p_better)}" for c in target.comparisons
            )
            lines.append(f"  {label}: {segment.exposed:,} exposed; {stats.target_stage} conversion {lifts}")
            lines.append(f"    {segment.result.recommendation.summary}")
    job = report.job
    if job is not None:
        lines += ["", f"Full model: fit #{job.id} {job.status}" + (f" - {job.error}" if job.error else "")]
        view = full_model_view(report)
        if view is not None and view.rows:
            diagnostics = view.diagnostics or {}
            lines.append(
                f"  diagnostics {'passed' if diagnostics.get('passed') else 'FAILED'}: "
                f"max R-hat {diagnostics.get('r_hat_max')}, {diagnostics.get('divergences')} divergences"
            )
            for row in view.rows:
                if row.metric == "conversion":
                    lines.append(
                        f"  {row.stage:<14} {row.treatment:<10} conjugate {_lift_text(row.conjugate_lift):<28} "
                        f"full model {_lift_text(row.full_lift)}"
                    )
    return "\n".join(lines) + "\n"


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _prob(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _lift_text(estimate: Any) -> str:
    if isinstance(estimate, dict):
        mean, low, high = estimate.get("mean"), estimate.get("low"), estimate.get("high")
    elif estimate is not None:
        mean, low, high = estimate.mean, estimate.low, estimate.high
    else:
        return "-"
    if mean is None:
        return "-"
    interval = "" if low is None or high is None else f" [{_signed(low)}, {_signed(high)}]"
    return f"{_signed(mean)}{interval}"


def _signed(value: float) -> str:
    return f"{round(value * 100, 1) + 0.0:+.1f}%"  # never "-0.0%"
