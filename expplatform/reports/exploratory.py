"""A segment breakdown is exploratory: it never makes its own call.

Per treatment and deciding metric at the stage under test (conversion, and the mean
rating when that stage has a rating question), each segment is compared with all the
other segments together by ``analysis.segment_differences`` (anytime-
valid, the budget split over the number of segments looked at): a segment is
*flagged* when its effect differs from the rest's. There is no 'ship' per segment;
a flag is a hypothesis to test next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from analysis import SegmentDifference, segment_differences

from .build import Report

ALPHA = 0.05
NOT_RECORDED = "(not recorded)"
DeciderMetric = Literal["conversion", "mean_rating"]


@dataclass(frozen=True)
class SegmentFlag:
    """One segment x treatment x metric against the rest of the segments."""

    segment: str
    treatment: str
    metric: str
    difference: SegmentDifference


@dataclass(frozen=True)
class Exploration:
    """The breakdown's multiplicity-adjusted comparisons of each segment with the rest."""

    attribute: str
    stage: str
    looked_at: int
    alpha: float
    flags: tuple[SegmentFlag, ...]

    def flag(self, segment: str, treatment: str, metric: str = "conversion") -> SegmentFlag | None:
        return next((f for f in self.flags if (f.segment, f.treatment, f.metric) == (segment, treatment, metric)), None)

    @property
    def flagged(self) -> tuple[SegmentFlag, ...]:
        return tuple(f for f in self.flags if f.difference.flagged)


def segment_label(value: str | None) -> str:
    return NOT_RECORDED if value is None else value


def explore(report: Report) -> Exploration | None:
    """The comparisons of the report's segments, when a breakdown is ready (None
    otherwise; with fewer than two segments there is nothing to compare)."""
    segments = report.segments
    if segments is None or segments.status != "ready" or report.options.segment is None:
        return None
    by_label = {segment_label(s.value): s.stats for s in segments.value}
    stats = report.stats
    flags: list[SegmentFlag] = []
    if len(by_label) >= 2:
        rated = stats.scale_of(stats.target_stage) is not None
        metrics: tuple[DeciderMetric, ...] = ("conversion", "mean_rating") if rated else ("conversion",)
        for treatment in (v for v in stats.variants if v != stats.control):
            for metric in metrics:
                rows = segment_differences(
                    by_label, treatment=treatment, metric=metric, alpha=ALPHA, looked_at=len(by_label), rule=report.rule
                )
                flags += [SegmentFlag(row.segment, treatment, metric, row) for row in rows]
    return Exploration(report.options.segment, stats.target_stage, len(by_label), ALPHA, tuple(flags))


def exploration_dict(exploration: Exploration | None) -> dict[str, Any] | None:
    if exploration is None:
        return None
    return {
        "exploratory": True,
        "stage": exploration.stage,
        "looked_at": exploration.looked_at,
        "alpha": exploration.alpha,
        "differences": [
            {"segment": f.segment, "treatment": f.treatment, "metric": f.metric, **f.difference.to_dict()}
            for f in exploration.flags
        ],
    }
