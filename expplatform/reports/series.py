"""The report's slow parts: the target stage's conversion day by day, and the whole
analysis per value of one exposure attribute.

Both group every exposure or outcome row (about a second, or seconds, at a million
customers), so ``build`` has them computed in the background
(``background.SlowParts``), each in a session of its own. The series' point for
today is redone from the live statistics, so that the latest figures are never stale.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace
from datetime import date, datetime

from analysis import FAST_DRAWS, analyze
from analysis.types import DecisionRule, Estimate, ExperimentResult, ExperimentStats, Prior

from ..aggregation import daily_stats, segment_stats
from ..db import Database
from ..models import Experiment
from .background import Pending
from .options import SEED


@dataclass(frozen=True)
class SeriesPoint:
    """The target stage's conversion of one treatment, cumulative to the end of ``day``."""

    day: date
    variant: str
    exposed: int
    control_exposed: int
    relative_lift: Estimate | None
    p_better: float | None


@dataclass(frozen=True)
class SegmentResult:
    """The analysis of the customers with one value of the attribute (None: not recorded)."""

    value: str | None
    stats: ExperimentStats
    result: ExperimentResult

    @property
    def exposed(self) -> int:
        return sum(self.stats.cells[self.stats.stages[0]][v].exposed for v in self.stats.variants)


def target_only(stats: ExperimentStats) -> ExperimentStats:
    """The statistics of the target stage alone: the series shows only its conversion,
    and the analysis of one stage costs a fifth of five."""
    target = stats.target_stage
    return ExperimentStats(
        (target,),
        target,
        stats.variants,
        stats.control,
        stats.weights,
        stats.scale,
        {target: stats.cells[target]},
        stage_scales={target: stats.stage_scales[target]} if target in stats.stage_scales else {},
    )


def series_points(day: date, stats: ExperimentStats, prior: Prior, rule: DecisionRule) -> list[SeriesPoint]:
    """The points of ``day`` (one per treatment) from the statistics up to its end."""
    # FAST_DRAWS without the P(better) top-up: the mode the analysis offers for series
    # points; P(better) of conversion is exact whatever the draws.
    result = analyze(target_only(stats), prior=prior, rule=rule, seed=SEED, draws=FAST_DRAWS, max_p_better_error=None)
    conversion = result.stage(stats.target_stage).metric("conversion")
    cells = stats.cells[stats.target_stage]
    return [
        SeriesPoint(
            day, c.treatment, cells[c.treatment].exposed, cells[stats.control].exposed, c.relative_lift, c.p_better
        )
        for c in conversion.comparisons
    ]


def daily_series(database: Database, experiment_id: int, prior: Prior, rule: DecisionRule) -> tuple[SeriesPoint, ...]:
    """Every day's points (run in the background, hence a session of its own)."""
    with database.sessionmaker() as session:
        experiment = session.get(Experiment, experiment_id)
        days = daily_stats(session, experiment) if experiment is not None else []
    return tuple(point for day, stats in days for point in series_points(day, stats, prior, rule))


def with_live_point(
    series: Pending, version: Hashable, stats: ExperimentStats, prior: Prior, rule: DecisionRule, now: datetime
) -> Pending:
    """Today's point from the live statistics when the series is older than the data."""
    if series.status != "ready" or series.version == version:
        return series
    today = now.date()
    kept = tuple(p for p in series.value if p.day < today)
    if not any(stats.cells[stats.target_stage][v].exposed for v in stats.variants):
        return series
    return replace(series, value=kept + tuple(series_points(today, stats, prior, rule)))


def segment_results(
    database: Database, experiment_id: int, attribute: str, prior: Prior, rule: DecisionRule
) -> tuple[SegmentResult, ...]:
    """The analysis per value of ``attribute``, most exposed first (run in the
    background, hence a session of its own)."""
    with database.sessionmaker() as session:
        experiment = session.get(Experiment, experiment_id)
        by_value = segment_stats(session, experiment, attribute) if experiment is not None else {}
    segments = [
        SegmentResult(value, stats, analyze(stats, prior=prior, rule=rule, seed=SEED))
        for value, stats in by_value.items()
    ]
    return tuple(sorted(segments, key=lambda s: (-s.exposed, s.value is None, str(s.value))))
