"""The report arranged for display: one row per stage x variant x metric (the CSV
and the terminal table), the journey lift map (the page and the table), and the
latest full-model fit beside the live conjugate results.

These only rearrange what ``Report`` holds; they compute no statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
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

from ..aggregation import StageQuestion
from ..job_records import JobProgress, job_progress
from ..models import AnalysisJob
from ..plots import CONTROL_COLOR
from .build import Report
from .decisions import comparable, guardrail_status, has_outcomes, stage_role

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
    # Added by issue 12: whether there is outcome data behind the numbers (false: they
    # are left empty), the stage's role, and the anytime-valid interval the decision
    # rests on (the conversion and mean-rating comparisons), with the reason in words.
    has_data: bool = True
    role: str = "decides"
    always_valid_mean: float | None = None
    always_valid_low: float | None = None
    always_valid_high: float | None = None
    always_valid_scale: str | None = None
    always_valid_level: float | None = None
    decision_basis: str | None = None
    guardrail: str | None = None
    # Added with journeys: the rating question a rating row (mean rating, top-box
    # share, NPS) is about, with its text and scale (empty on conversion rows), and
    # the credible level of the posterior and lift intervals of every row.
    question: str | None = None
    question_text: str | None = None
    scale_min: int | None = None
    scale_max: int | None = None
    credible_level: float | None = None


def metric_rows(
    stats: ExperimentStats,
    result: ExperimentResult,
    segment: str | None = None,
    questions: Mapping[str, StageQuestion | None] | None = None,
) -> list[MetricRow]:
    """The rows of one analysis: per stage the metrics that apply to it (conversion;
    with a rating question, its mean rating and top-box share, and NPS on 0-10), each
    rating row naming its question (``questions``) and scale. ``decision`` is filled
    only where a call is made (the stage under test's conversion); guardrail rows say
    ``guardrail`` holds or broken. A segment's rows are exploratory: role
    ``exploratory``, no decision (a segment never makes its own call)."""
    rows = []
    broken = {(g.variant, g.stage, g.metric) for g in result.recommendation.guardrails}
    for stage_result in result.stages:
        stage = stage_result.stage
        question = (questions or {}).get(stage)
        scale = stage_result.scale
        for metric in stage_result.metrics:
            rating = metric.metric != "conversion"
            asked = question if rating else None
            scale_of = scale if rating else None
            role = "exploratory" if segment is not None else metric_role(stats, stage, metric.metric)
            for arm in metric.arms:
                cell = stats.cells[stage][arm.variant]
                is_control = arm.variant == result.control
                comparison = None if is_control else metric.comparison(arm.variant)
                row = _row(segment, stage, metric.metric, metric.status, arm, comparison, cell, is_control)
                data = has_outcomes(cell) if is_control else comparable(stats, stage, arm.variant)
                if not data:
                    row = _without_numbers(row)
                guardrail = None
                if role == "guardrail" and not is_control:
                    guardrail = "broken" if (arm.variant, stage, metric.metric) in broken else "holds" if data else None
                rows.append(
                    replace(
                        row,
                        decision=row.decision if role == "decides" else None,
                        has_data=data,
                        role=role,
                        guardrail=guardrail,
                        question=asked.key if asked else None,
                        question_text=asked.text if asked else None,
                        scale_min=scale_of.min if scale_of else None,
                        scale_max=scale_of.max if scale_of else None,
                        credible_level=result.credible_level,
                    )
                )
    return rows


def metric_role(stats: ExperimentStats, stage: str, metric: str) -> str:
    """``decides`` (the stage under test's conversion), ``balance_check`` (conversion
    before it), ``guardrail`` (conversion after it, the mean rating everywhere) or
    ``reported`` (top-box share and NPS)."""
    if metric == "conversion":
        return stage_role(stats, stage)
    return "guardrail" if metric == "mean_rating" else "reported"


def _without_numbers(row: MetricRow) -> MetricRow:
    """A row with no outcome data behind it: counts stay, every estimate goes."""
    blank: dict[str, Any] = {
        name: None
        for name in MetricRow.__dataclass_fields__
        if name
        not in {"segment", "stage", "variant", "is_control", "metric", "exposed", "count", "status", "role", "has_data"}
    }
    return replace(row, **{**blank, "decision_basis": "No outcome data at this stage."})


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
    anytime = comparison.always_valid_interval if comparison else None
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
        always_valid_mean=anytime.mean if anytime else None,
        always_valid_low=anytime.low if anytime else None,
        always_valid_high=anytime.high if anytime else None,
        always_valid_scale=comparison.always_valid_scale if comparison else None,
        always_valid_level=comparison.always_valid_level if comparison else None,
        decision_basis=comparison.decision_basis if comparison else None,
    )


def report_rows(report: Report) -> list[MetricRow]:
    """The whole experiment's rows, then each segment's when a segment was asked for."""
    rows = metric_rows(report.stats, report.result, questions=report.questions)
    if report.segments is not None and report.segments.status == "ready":
        for segment in report.segments.value:
            label = "(not recorded)" if segment.value is None else segment.value
            rows += metric_rows(segment.stats, segment.result, f"{report.options.segment}={label}", report.questions)
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
    mean_rating: ArmSummary | None  # None (and top_box) at a stage without a rating question
    top_box: ArmSummary | None
    nps: ArmSummary | None  # on a 0-10 question only
    lift: Comparison | None  # conversion; None for the control and without data
    rating_lift: Comparison | None  # mean rating; likewise
    nps_difference: Estimate | None  # NPS (0-10 questions), in points; likewise
    evidence: str
    has_data: bool  # any outcome (conversion or rating) recorded for this variant here
    rating_data: bool  # ratings recorded for this variant here
    decision: str | None  # at the stage under test only
    guardrails: tuple[tuple[str, str], ...]  # (metric, 'holds' | 'broken' | 'no_data')


@dataclass(frozen=True)
class LiftStage:
    stage: str
    is_target: bool
    # A stage before the tested step: the variants cannot have changed it yet, so its
    # numbers are a balance check (they should agree), not a result to act on.
    before_target: bool
    cells: tuple[LiftCell, ...]
    role: str = "decides"  # 'balance_check', 'decides' or 'guardrail'
    has_data: bool = True  # some variant has outcome data at this stage
    question: StageQuestion | None = None  # the rating question measured here, if any


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


def lift_map(report: Report) -> list[LiftStage]:
    """One entry per stage in journey order, each with a cell per variant. A variant
    with no outcome data at a stage gets no numbers there (``has_data`` false), a
    comparison needs data in both arms, and decisions are shown at the stage under
    test only (elsewhere: guardrail verdicts)."""
    stats, result, rule, colors = report.stats, report.result, report.rule, report.colors
    stages = []
    target_index = stats.stages.index(result.target_stage)
    for stage_result in result.stages:
        stage = stage_result.stage
        conversion = stage_result.metric("conversion")
        rating = stage_result.metric("mean_rating") if stage_result.has("mean_rating") else None
        top_box = stage_result.metric("top_box") if stage_result.has("top_box") else None
        nps = stage_result.metric("nps") if stage_result.has("nps") else None
        role = stage_role(stats, stage)
        guarded = ("conversion", "mean_rating") if rating is not None else ("conversion",)
        cells = []
        for variant in stats.variants:
            is_control = variant == result.control
            cell = stats.cells[stage][variant]
            both = not is_control and comparable(stats, stage, variant)
            lift = conversion.comparison(variant) if both else None
            rated = any(cell.ratings) and any(stats.cells[stage][result.control].ratings)
            rating_lift = rating.comparison(variant) if rating is not None and not is_control and rated else None
            nps_difference = nps.comparison(variant).absolute_difference if nps is not None and rating_lift else None
            statuses = tuple(
                (metric, status)
                for metric in guarded
                if (status := guardrail_status(report, stage, variant, metric)) is not None
            )
            cells.append(
                LiftCell(
                    variant=variant,
                    color=colors.get(variant, CONTROL_COLOR),
                    is_control=is_control,
                    exposed=stats.cells[stage_result.stage][variant].exposed,
                    conversion=conversion.arm(variant),
                    mean_rating=rating.arm(variant) if rating is not None else None,
                    top_box=top_box.arm(variant) if top_box is not None else None,
                    nps=nps.arm(variant) if nps is not None else None,
                    lift=lift,
                    rating_lift=rating_lift,
                    nps_difference=nps_difference,
                    evidence=evidence(lift, rule),
                    has_data=has_outcomes(cell),
                    rating_data=any(cell.ratings),
                    decision=lift.decision if lift is not None and role == "decides" else None,
                    guardrails=statuses,
                )
            )
        stages.append(
            LiftStage(
                stage,
                stage == result.target_stage,
                stats.stages.index(stage) < target_index,
                tuple(cells),
                role,
                any(c.has_data for c in cells),
                report.questions.get(stage),
            )
        )
    return stages


# -- the full model beside the conjugate results ------------------------------------------------


def has_metric_data(stats: ExperimentStats, stage: str, treatment: str, metric: str) -> bool:
    """Whether both arms have data behind a comparison of ``metric`` at ``stage``."""
    cells = stats.cells[stage]
    if metric == "conversion":
        return comparable(stats, stage, treatment)
    return any(cells[treatment].ratings) and any(cells[stats.control].ratings)


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
    progress: JobProgress | None = None


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
                if not stage_result.has(metric_name):
                    continue  # no rating question at this stage
                for c in stage_result.metric(metric_name).comparisons:
                    if not has_metric_data(report.stats, stage_result.stage, c.treatment, metric_name):
                        continue  # no pooled number where there is no data
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
        progress=job_progress(job),
    )
