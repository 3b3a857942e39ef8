"""The report arranged for display: one row per stage x variant x metric (the CSV
and the terminal table), the journey lift map (the page and the table), and the
latest full-model fit beside the live conjugate results.

These only rearrange what ``Report`` holds; they compute no statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analysis.types import (
    ArmSummary,
    CellStats,
    Comparison,
    DecisionRule,
    Estimate,
    ExperimentResult,
    ExperimentStats,
)

from ..models import AnalysisJob
from ..plots import CONTROL_COLOR
from .build import Report

METRIC_LABELS = {"conversion": "conversion", "mean_rating": "mean rating", "top_box": "top-box share", "nps": "NPS"}


# -- rows ------------------------------------------------------------------------------------


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
    segment: str | None,
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


# -- the lift map ----------------------------------------------------------------------------


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
    """One entry per stage in journey order, each with a cell per variant."""
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
                    color=colors.get(variant, CONTROL_COLOR),
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


# -- the full model beside the conjugate results ------------------------------------------------


@dataclass(frozen=True)
class FullModelRow:
    """One stage x metric x treatment, conjugate beside the full model."""

    stage: str
    metric: str
    treatment: str
    conjugate_lift: Estimate | None
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
            for metric_name in ("conversion", "mean_rating"):
                for c in stage_result.metric(metric_name).comparisons:
                    full = comparisons.get((stage_result.stage, metric_name, c.treatment), {})
                    rows.append(
                        FullModelRow(
                            stage_result.stage,
                            metric_name,
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
