"""What the report's calls rest on, in words: the headline, each treatment's call at
the stage under test, the role of every other stage, and where there is no data.

The analysis decides (``analysis.sequential``: P(better), expected loss and an
anytime-valid interval); this module only says which of its numbers a call rests on
and hides the numbers that mean nothing:

- a variant with no outcome (no conversion and no rating) recorded at a stage has
  *no data at this stage*: no rate, P(better), expected loss or journey gain there;
- only the stage under test carries decision badges ('Ship', 'Harmful'); the stages
  before it are balance checks, the later ones (and the mean rating of every stage
  with a rating question) are guardrails, shown as holding or broken;
- the headline's words come from the decision, with the anytime-valid interval the
  decision rests on beside it (never a credible interval at another level);
- the full model needs some outcome data (``full_model_refusal``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from analysis.types import CellStats, Comparison, Estimate, ExperimentStats, JourneyVariant

from ..errors import Conflict
from .build import Report

Role = Literal["balance_check", "decides", "guardrail"]

SCALE_WORDS = {"relative_lift": "relative lift", "absolute_difference": "difference in means"}


def has_outcomes(cell: CellStats) -> bool:
    """Whether anything was recorded for this variant at this stage: a conversion or a
    rating (exposed customers alone are not outcome data)."""
    return cell.exposed > 0 and (cell.converted > 0 or any(cell.ratings))


def outcome_data(stats: ExperimentStats) -> dict[str, dict[str, bool]]:
    """``[stage][variant]``: whether the variant has outcome data at the stage."""
    return {s: {v: has_outcomes(stats.cells[s][v]) for v in stats.variants} for s in stats.stages}


def comparable(stats: ExperimentStats, stage: str, treatment: str) -> bool:
    """A treatment's comparison at a stage means something only when both it and the
    control have outcome data there."""
    cells = stats.cells[stage]
    return has_outcomes(cells[treatment]) and has_outcomes(cells[stats.control])


def stage_role(stats: ExperimentStats, stage: str) -> Role:
    target = stats.stages.index(stats.target_stage)
    index = stats.stages.index(stage)
    return "decides" if index == target else "balance_check" if index < target else "guardrail"


def full_model_refusal(stats: ExperimentStats) -> str | None:
    """Why the full model cannot be fitted (no variant has any outcome data), or None."""
    if any(has_outcomes(stats.cells[s][v]) for s in stats.stages for v in stats.variants):
        return None
    return (
        "No variant has any outcome data yet (no conversion or rating at any stage): "
        "the full model would only repeat its prior."
    )


def check_full_model(stats: ExperimentStats) -> None:
    """Raise ``Conflict('no_data')`` where ``full_model_refusal`` gives a reason."""
    reason = full_model_refusal(stats)
    if reason is not None:
        raise Conflict("no_data", reason)


# -- each treatment's call -------------------------------------------------------------------


@dataclass(frozen=True)
class TreatmentCall:
    """One treatment at the stage under test (conversion): the decision, the numbers
    beside it, and which of them the call rests on (``rests_on``, in words)."""

    treatment: str
    has_data: bool
    decision: str | None
    basis: str | None
    lift: Estimate | None  # credible interval at the report's credible level
    p_better: float | None
    expected_loss_relative: float | None
    anytime: Estimate | None
    anytime_level: float | None
    anytime_scale: str | None
    rests_on: str


def _rests_on(c: Comparison, credible_level: float) -> str:
    if c.always_valid_interval is None or c.always_valid_level is None:
        return "No call: there is no data to rest one on."
    level = f"{c.always_valid_level:.0%}"
    scale = SCALE_WORDS.get(c.always_valid_scale or "", c.always_valid_scale or "effect")
    return (
        f"The call rests on the anytime-valid {level} interval of the {scale} (valid however often the report is "
        f"opened), together with P(better) and the expected loss; the {credible_level:.0%} credible interval says "
        "what the data suggest now and does not decide."
    )


def treatment_calls(report: Report) -> list[TreatmentCall]:
    stats, result = report.stats, report.result
    target = result.stage(result.target_stage).metric("conversion")
    calls = []
    for c in target.comparisons:
        shown = c.has_data and comparable(stats, result.target_stage, c.treatment)
        calls.append(
            TreatmentCall(
                treatment=c.treatment,
                has_data=shown,
                decision=c.decision if shown else None,
                basis=c.decision_basis if shown else "No data at this stage for this variant or the control.",
                lift=c.relative_lift if shown else None,
                p_better=c.p_better if shown else None,
                expected_loss_relative=c.expected_loss_relative if shown else None,
                anytime=c.always_valid_interval if shown else None,
                anytime_level=c.always_valid_level if shown else None,
                anytime_scale=c.always_valid_scale if shown else None,
                rests_on=_rests_on(c, result.credible_level) if shown else "No call: there is no data at this stage.",
            )
        )
    return calls


# -- the headline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """The recommendation in words taken from the decision, and (for a ship call) the
    anytime-valid interval the decision rests on, at its own level."""

    action: str
    variant: str | None
    text: str
    interval: Estimate | None
    level: float | None
    scale: str | None


def headline(report: Report) -> Headline:
    result = report.result
    rec = result.recommendation
    stage = result.target_stage
    if rec.action == "ship" and rec.variant is not None:
        c = result.stage(stage).metric("conversion").comparison(rec.variant)
        return Headline(
            rec.action,
            rec.variant,
            f"Ship {rec.variant}: the peeking-safe rule calls it better at {stage} conversion, "
            "and no guardrail objects.",
            c.always_valid_interval,
            c.always_valid_level,
            c.always_valid_scale,
        )
    texts = {
        "keep_control": f"Keep {result.control}: every treatment is called worse at {stage} or breaks a guardrail.",
        "keep_running": f"Keep running: no treatment is called better or worse at {stage} conversion yet.",
    }
    return Headline(rec.action, rec.variant, texts.get(rec.action, rec.summary), None, None, None)


# -- stages other than the one under test ------------------------------------------------------


def guardrail_status(report: Report, stage: str, variant: str, metric: str) -> str | None:
    """'broken', 'holds' or 'no_data' for a guardrail of a treatment (conversion after
    the stage under test, the mean rating at every stage with a rating question); None
    where the metric at this stage is not a guardrail or the variant is the control."""
    stats = report.stats
    if variant == stats.control:
        return None
    if metric == "conversion" and stage_role(stats, stage) != "guardrail":
        return None
    if metric != "conversion" and stats.scale_of(stage) is None:
        return None  # no rating question here: no rating to guard
    if any(
        g.variant == variant and g.stage == stage and g.metric == metric
        for g in report.result.recommendation.guardrails
    ):
        return "broken"
    cells = stats.cells[stage]
    if metric == "mean_rating":
        if not (any(cells[variant].ratings) and any(cells[stats.control].ratings)):
            return "no_data"
    elif not comparable(stats, stage, variant):
        return "no_data"
    return "holds"


# -- the journey -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JourneyRow:
    """One variant's whole journey, each rate once: observed end-to-end conversion (the
    lift map's figure at the final stage) and its posterior estimate, labelled as such;
    the largest gain and pain point among stages where both arms have data."""

    variant: str
    has_data: bool
    observed: float | None
    estimate: Estimate | None
    lift: Estimate | None
    p_better: float | None
    largest_gain_stage: str | None
    largest_loss_stage: str | None


def journey_rows(report: Report) -> list[JourneyRow]:
    stats, journey = report.stats, report.result.journey
    final = journey.final_stage
    comparisons: Mapping[str, Comparison] = {c.treatment: c for c in journey.end_to_end}
    rows = []
    for jv in journey.variants:
        cell = stats.cells[final][jv.variant]
        data = has_outcomes(cell)
        is_control = jv.variant == stats.control
        c = comparisons.get(jv.variant)
        shown = data and (is_control or comparable(stats, final, jv.variant))
        gain, loss = _gain_and_loss(stats, jv) if not is_control else (None, None)
        rows.append(
            JourneyRow(
                variant=jv.variant,
                has_data=data,
                observed=cell.converted / cell.exposed if data else None,
                estimate=jv.end_to_end if data else None,
                lift=c.relative_lift if c is not None and shown else None,
                p_better=c.p_better if c is not None and shown else None,
                largest_gain_stage=gain,
                largest_loss_stage=loss,
            )
        )
    return rows


def _gain_and_loss(stats: ExperimentStats, jv: JourneyVariant) -> tuple[str | None, str | None]:
    """The steps with the largest and smallest lift, among stages where the variant and
    the control both have outcome data (a stage without any is no gain)."""
    lifts = [
        (step.lift.mean, step.stage)
        for step in jv.steps
        if step.lift is not None and step.lift.mean is not None and comparable(stats, step.stage, jv.variant)
    ]
    gain, loss = max(lifts, default=None), min(lifts, default=None)
    return (gain[1] if gain and gain[0] > 0 else None, loss[1] if loss and loss[0] < 0 else None)


def decision_dict(report: Report) -> dict[str, object]:
    """The calls for machines (the API's ``Report.decision``)."""
    head = headline(report)
    return {
        "headline": head.text,
        "action": head.action,
        "variant": head.variant,
        "interval": head.interval.to_dict() if head.interval is not None else None,
        "interval_level": head.level,
        "interval_scale": head.scale,
        "stage": report.stats.target_stage,
        "metric": "conversion",
        "treatments": [
            {
                "treatment": call.treatment,
                "has_data": call.has_data,
                "decision": call.decision,
                "decision_basis": call.basis,
                "rests_on": call.rests_on,
                "always_valid_interval": call.anytime.to_dict() if call.anytime is not None else None,
                "always_valid_level": call.anytime_level,
                "always_valid_scale": call.anytime_scale,
            }
            for call in treatment_calls(report)
        ],
        "stage_roles": {stage: stage_role(report.stats, stage) for stage in report.stats.stages},
        "outcome_data": outcome_data(report.stats),
    }
