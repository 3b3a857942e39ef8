"""The report's plots (forest, densities, funnel, lift over time) as inline SVG,
drawn by ``plots`` from the numbers the report holds.

Drawing costs about 0.2 s, so the plots are kept per data version, settings and
series in the app's report cache: a page whose data did not move is not drawn again.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from analysis.types import Estimate

from .. import plots
from ..aggregation import StageQuestion
from .background import report_cache
from .build import Report, data_version
from .decisions import has_outcomes
from .series import SeriesPoint
from .views import METRIC_LABELS, has_metric_data


def render_plots(report: Report) -> dict[str, str]:
    """The page's SVG plots by name, kept per data version (inside an app context)."""
    series = report.series.value if report.series is not None and report.series.status == "ready" else ()
    key = (
        report.experiment.id,
        data_version(report.experiment, report.stats),
        report.prior,
        report.rule,
        tuple(series),
        tuple(report.questions.items()),  # the forest's labels name the questions
    )
    return report_cache().plots.get(key, lambda: _draw(report, series))


def _draw(report: Report, series: Sequence[SeriesPoint]) -> dict[str, str]:
    result, stats, colors = report.result, report.stats, report.colors
    rows = []
    for stage_result in result.stages:
        for metric in ("conversion", "mean_rating"):
            if not stage_result.has(metric):
                continue  # no rating question at this stage
            label = _label(metric, report.questions.get(stage_result.stage))
            for c in stage_result.metric(metric).comparisons:
                if not has_metric_data(stats, stage_result.stage, c.treatment, metric):
                    continue  # no lift drawn where there is no data
                lift = c.relative_lift  # all three or none are known (see analysis.summarize)
                if lift is not None and lift.mean is not None and lift.low is not None and lift.high is not None:
                    rows.append(plots.LiftRow(stage_result.stage, label, c.treatment, lift.mean, lift.low, lift.high))
    target = result.stage(result.target_stage).metric("conversion")
    curves = [
        plots.BetaCurve(arm.variant, *arm.conjugate_params[:2])
        for arm in target.arms
        if arm.conjugate_params is not None and stats.cells[result.target_stage][arm.variant].exposed
    ]
    # No bar where nothing was recorded: a 0% bar would read as "nobody converted".
    shares = {
        v: [
            stats.cells[s][v].converted / stats.cells[s][v].exposed if has_outcomes(stats.cells[s][v]) else None
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


def _label(metric: str, question: StageQuestion | None) -> str:
    """A forest row's metric: a rating names its question (shortened) and scale."""
    if metric == "conversion" or question is None:
        return METRIC_LABELS[metric]
    text = textwrap.shorten(question.text, 40, placeholder="…")
    return f"{METRIC_LABELS[metric]}: {text} ({question.scale_text})"


def _estimate(estimate: Estimate | None) -> tuple[float | None, float | None, float | None]:
    if estimate is None:
        return None, None, None
    return estimate.mean, estimate.low, estimate.high
