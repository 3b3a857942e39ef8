"""Segments are exploratory: which segment's effect differs from the rest's.

Slicing an experiment by segment (country, device, new or returning customers) and
reading each slice's result invites false discoveries: with ten segments looked at
daily, one of them will look like a winner or a loser by chance. This module never
makes a ship call per segment. It asks one question per segment - does the
treatment's effect in this segment differ from its effect in all the other segments
together? - and answers it with the anytime-valid test of ``analysis.sequential``
(so daily looks are allowed), at a budget split over the number of segments looked at
(Bonferroni): over all looks and segments, a segment whose effect equals the rest's is
flagged with probability at most ``alpha``.

The difference is on the test's scale: for conversion the ratio of the segment's
relative risk to the rest's, shown as ``(1 + lift in segment) / (1 + lift elsewhere) -
1``; for the mean rating the difference of the two differences in means. The segment
and the rest are disjoint customers, so the variances add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Literal

import numpy as np

from . import messages
from . import sequential as seq
from .exceptions import AnalysisInputError
from .types import CellStats, DecisionRule, Estimate, ExperimentStats, _Serialisable


@dataclass(frozen=True)
class SegmentDifference(_Serialisable):
    """One segment against the rest. ``status`` is ``ok``, ``no_data`` (an arm of the
    segment or of the rest has no data) or ``not_enough_data`` (below the rule's
    ``min_exposed``); only ``ok`` rows have numbers. ``effect`` is the segment's own
    effect (point estimate only), ``difference`` the anytime-valid interval of its
    difference from the rest at level ``1 - alpha`` (two-sided, after the split over
    ``looked_at`` segments); ``flagged`` when that interval excludes 0. Exploratory:
    there is no decision."""

    segment: str
    status: str
    effect: float | None
    rest_effect: float | None
    difference: Estimate | None
    flagged: bool
    alpha: float
    scale: str


def segment_differences(
    segments: Mapping[str, ExperimentStats],
    *,
    treatment: str,
    stage: str | None = None,
    metric: Literal["conversion", "mean_rating"] = "conversion",
    alpha: float = 0.05,
    looked_at: int | None = None,
    rule: DecisionRule = DecisionRule(),
    design: seq.SequentialDesign = seq.SequentialDesign(),
) -> tuple[SegmentDifference, ...]:
    """Per segment, whether the treatment's effect there differs from elsewhere.

    ``segments`` maps a segment's name to its statistics (same experiment shape);
    ``stage`` defaults to the target stage; the mean rating is on that stage's own
    scale (an error at a stage without a rating question); ``looked_at`` is how many
    segments the analyst has looked at in all (across every segmentation tried;
    default: these), and the budget ``alpha`` is split over them.
    """
    if len(segments) < 2:
        raise AnalysisInputError("at least two segments are needed to compare one with the rest")
    if metric not in ("conversion", "mean_rating"):
        raise AnalysisInputError("metric must be conversion or mean_rating")
    if not 0 < alpha < 1:
        raise AnalysisInputError("alpha must be between 0 and 1")
    first = next(iter(segments.values()))
    stage = stage or first.target_stage
    if treatment not in first.variants or treatment == first.control or stage not in first.stages:
        raise AnalysisInputError("treatment must be a non-control variant and stage one of the experiment's")
    scale = first.scale_of(stage)
    if any(stats.scale_of(stage) != scale for stats in segments.values()):
        raise AnalysisInputError(f"the segments do not share one rating scale at stage {stage!r}")
    if metric == "mean_rating" and scale is None:
        raise AnalysisInputError(f"stage {stage!r} has no rating question: its mean rating cannot be compared")
    looked_at = max(looked_at or len(segments), len(segments))
    share = seq.split(alpha, looked_at) / 2  # two-sided: half on each side

    def cells(stats: ExperimentStats) -> tuple[CellStats, CellStats]:
        return stats.cells[stage][treatment], stats.cells[stage][stats.control]

    rows = []
    for name, stats in segments.items():
        t, c = cells(stats)
        others = [cells(s) for n, s in segments.items() if n != name]
        rest_t = reduce(lambda a, b: a + b, (o[0] for o in others))
        rest_c = reduce(lambda a, b: a + b, (o[1] for o in others))
        sizes = (
            [t.exposed, c.exposed, rest_t.exposed, rest_c.exposed]
            if metric == "conversion"
            else [sum(x.ratings) for x in (t, c, rest_t, rest_c)]
        )
        label = "relative_lift_ratio" if metric == "conversion" else "difference_of_differences"
        if min(sizes) == 0 or min(sizes) < rule.min_exposed:
            status = messages.NO_DATA if min(sizes) == 0 else messages.NOT_ENOUGH_DATA
            rows.append(SegmentDifference(name, status, None, None, None, False, share * 2, label))
            continue
        if metric == "conversion":
            e_s, v_s = seq.conversion_effect(t.exposed, t.converted, c.exposed, c.converted)
            e_r, v_r = seq.conversion_effect(rest_t.exposed, rest_t.converted, rest_c.exposed, rest_c.converted)
            tau = design.conversion_mixture_sd
        else:
            assert scale is not None  # checked above
            values = np.arange(scale.min, scale.max + 1, dtype=float)
            e_s, v_s = seq.mean_effect(np.array(t.ratings), np.array(c.ratings), values)
            e_r, v_r = seq.mean_effect(np.array(rest_t.ratings), np.array(rest_c.ratings), values)
            tau = design.rating_tau(scale.max - scale.min)
        b = seq.bounds(e_s - e_r, v_s + v_r, tau, share, share)
        low, mid, high = float(b.low), float(b.estimate), float(b.high)
        if metric == "conversion":
            show = np.expm1
            rows.append(
                SegmentDifference(
                    name,
                    messages.OK,
                    float(show(e_s)),
                    float(show(e_r)),
                    Estimate(float(show(mid)), float(show(low)), float(show(high))),
                    low > 0 or high < 0,
                    share * 2,
                    label,
                )
            )
        else:
            rows.append(
                SegmentDifference(
                    name,
                    messages.OK,
                    float(e_s),
                    float(e_r),
                    Estimate(mid, low, high),
                    low > 0 or high < 0,
                    share * 2,
                    label,
                )
            )
    return tuple(rows)
