"""Building a report: aggregation -> analysis -> one ``Report`` that the page, the
JSON and CSV API and the command line all show.

Every number comes from ``analysis`` (the conjugate ``analyze`` for the live report,
``analysis.hierarchical`` through a job for the full model); this module only picks
the settings, reads the statistics, and asks the caches for what is already known:
the whole-experiment statistics read an index and a few counters (tens of ms) on
every request, their analysis is kept per data version, and the slow parts come
from ``background`` (see there for how fresh they are).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from analysis import analyze
from analysis.types import DecisionRule, ExperimentResult, ExperimentStats, Prior

from .. import plots
from ..aggregation import (
    SEGMENT_ATTRIBUTE,
    DataQuality,
    StageQuestion,
    data_quality,
    experiment_stats,
    stage_questions,
    warehouse_segments,
)
from ..db import get_db
from ..experiment_settings import experiment_settings
from ..job_records import recent_jobs
from ..models import AnalysisJob, Experiment, Exposure, utcnow
from ..warehouse.freshness import Freshness, freshness
from .background import Pending, report_cache
from .latest import latest_calls
from .options import SEED, ReportOptions
from .series import daily_series, segment_results, with_live_point
from .warnings import ReportWarning, collect_warnings

ATTRIBUTE_SAMPLE = 1000


@dataclass(frozen=True)
class Report:
    """Everything every form of the report shows, computed once per request."""

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
    # Per measured stage, the rating question measured there (None: conversion only).
    questions: Mapping[str, StageQuestion | None] = field(default_factory=dict)
    # Where the statistics were computed, for an experiment whose outcomes live in a
    # warehouse (None: the built-in counters, always current).
    warehouse: Freshness | None = None

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
    database, cache = get_db(), report_cache()
    wait = database.settings.report_wait_seconds if wait == -1.0 else wait
    now = now or utcnow()
    prior, rule = experiment_settings(experiment, options.credible_level)
    stats = experiment_stats(session, experiment)
    quality = data_quality(session, experiment, now=now)
    version = data_version(experiment, stats)
    result = live_result(experiment, stats, prior, rule, now, own_settings=options.credible_level is None)
    series = None
    if options.series:
        series = cache.slow.get(
            ("series", experiment.id, prior, rule),
            version,
            lambda: daily_series(database, experiment.id, prior, rule),
            wait,
        )
        series = with_live_point(series, version, stats, prior, rule, now)
    segments = None
    if options.segment:
        attribute = options.segment
        segments = cache.slow.get(
            ("segments", experiment.id, attribute, prior, rule),
            version,
            lambda: segment_results(database, experiment.id, attribute, prior, rule),
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
        questions=stage_questions(experiment),
        warehouse=freshness(session, experiment),
    )


def live_result(
    experiment: Experiment,
    stats: ExperimentStats,
    prior: Prior,
    rule: DecisionRule,
    now: datetime,
    *,
    own_settings: bool = True,
) -> ExperimentResult:
    """The conjugate analysis of ``stats``, kept per data version; at the experiment's
    own settings its recommendation is also remembered for the lists (``latest``)."""
    key = (experiment.id, data_version(experiment, stats), prior, rule)
    result = report_cache().results.get(key, lambda: analyze(stats, prior=prior, rule=rule, seed=SEED))
    if own_settings:
        latest_calls().remember(experiment.id, stats, result.recommendation, now)
    return result


def data_version(experiment: Experiment, stats: ExperimentStats) -> Hashable:
    """Identifies the data a result was computed from: the definition's last change,
    each stage's rating scale (a question is edited in its journey, not the experiment)
    and every count (any new exposure, conversion or rating moves one)."""
    counts = tuple(
        (cell.exposed, cell.converted, cell.ratings) for s in stats.stages for cell in stats.cells[s].values()
    )
    return (experiment.updated_at, tuple(stats.scale_of(s) for s in stats.stages), counts)


def recorded_attributes(session: Session, experiment: Experiment) -> tuple[str, ...]:
    """Attribute names given at assignment, from up to 1,000 of the experiment's
    exposures, whichever its (experiment, variant) index gives first: names are
    normally the same for every customer of one client app. (Ordered by customer, the
    first 1,000 took SQLite a sort of every exposure: 290 of a warm JSON report's 375 ms
    at 1M exposures.) For a warehouse experiment: those its last full recomputation
    found there (``aggregation.warehouse_segments``)."""
    if experiment.warehouse_source_id is not None:
        computed = warehouse_segments(session, experiment)
        if computed is None:
            return ()
        return tuple(sorted({*computed.get("attributes", {}), *computed.get("too_many", ())}))
    rows = session.scalars(
        select(Exposure.attributes).where(Exposure.experiment_id == experiment.id).limit(ATTRIBUTE_SAMPLE)
    )
    names = {name for attributes in rows if isinstance(attributes, dict) for name in attributes}
    return tuple(sorted(name for name in names if SEGMENT_ATTRIBUTE.match(name)))
