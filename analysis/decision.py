"""The decision rule per comparison and the experiment-level recommendation.

The target stage's conversion decides; downstream stages' conversion and the mean
rating of every stage with a rating question are guardrails that can veto a treatment
but never ship one.
"""

from __future__ import annotations

from typing import cast

from .sequential import DECISION_CODES, decisions
from .types import (
    Action,
    Comparison,
    Decision,
    DecisionRule,
    ExperimentStats,
    Guardrail,
    Metric,
    Recommendation,
    SampleRatio,
    StageResult,
)

GuardBounds = dict[tuple[str, str, str], tuple[float, float]]
"""(stage, metric, treatment) -> (anytime-valid upper bound of the effect at the
guardrail budget's share, that share)."""


def decide(
    rule: DecisionRule,
    p_better: float,
    expected_loss_relative: float | None,
    smallest_n: int,
    *,
    low: float | None = None,
    high: float | None = None,
) -> Decision:
    """``DecisionRule`` in code: not enough data first, then ship, harmful, keep running.

    ``low``/``high`` are the anytime-valid bounds of the effect (``analysis.sequential``):
    ship also needs ``low > 0``, harmful ``high < 0``; None leaves the Bayesian rule
    alone. The same vectorised function decides in the simulations that check the rule.
    """
    code = decisions(
        smallest_n=smallest_n,
        min_exposed=rule.min_exposed,
        p_better=p_better,
        ship_probability=rule.ship_probability,
        harm_probability=rule.harm_probability,
        loss_relative=float("nan") if expected_loss_relative is None else expected_loss_relative,
        max_expected_loss=rule.max_expected_loss,
        low=low,
        high=high,
    )
    return cast(Decision, DECISION_CODES[int(code)])


def guardrail_checks(stats: ExperimentStats) -> int:
    """How many guardrails watch one treatment: the mean rating at every stage with a
    rating question and the conversion at every stage after the target. The guardrail
    budget (``guardrail_probability``) is split evenly over them (Bonferroni), so a
    treatment that harms nothing is vetoed, at any look, with probability at most that
    budget."""
    target = stats.stages.index(stats.target_stage)
    rated = sum(stats.scale_of(stage) is not None for stage in stats.stages)
    return rated + (len(stats.stages) - target - 1)


def guardrails(
    stats: ExperimentStats,
    rule: DecisionRule,
    stages: tuple[StageResult, ...],
    treatment: str,
    guard: GuardBounds | None = None,
) -> list[Guardrail]:
    """Where the treatment is credibly worse, with enough data, on a downstream stage's
    conversion or on the mean rating of any stage with a rating question: P(better) <=
    guardrail_probability and, with ``guard`` (the peeking-safe rule), the anytime-valid
    upper bound of the effect at the guardrail budget's share below 0."""
    target = stats.stages.index(stats.target_stage)
    broken = []
    for i, stage in enumerate(stages):
        watched: list[Metric] = ["mean_rating", "conversion"] if i > target else ["mean_rating"]
        for metric in watched:
            if not stage.has(metric):  # no rating question at this stage
                continue
            c = stage.metric(metric).comparison(treatment)
            if c.decision in (None, "not_enough_data") or c.p_better is None:
                continue
            if c.p_better > rule.guardrail_probability:
                continue
            if guard is None:
                broken.append(Guardrail(treatment, stage.stage, metric, c.p_better))
                continue
            high, alpha = guard[(stage.stage, metric, treatment)]
            if high < 0:
                broken.append(Guardrail(treatment, stage.stage, metric, c.p_better, high, alpha))
    return broken


def recommend(
    stats: ExperimentStats,
    rule: DecisionRule,
    stages: tuple[StageResult, ...],
    srm: SampleRatio,
    *,
    no_data: bool,
    guard: GuardBounds | None = None,
) -> Recommendation:
    target = stages[stats.stages.index(stats.target_stage)].metric("conversion")
    treatments = [v for v in stats.variants if v != stats.control]
    if no_data or not treatments:
        return Recommendation(
            "not_enough_data", None, "Not enough data: fewer than two variants have exposed customers.", (), ()
        )
    reasons: list[str] = []
    broken: list[Guardrail] = []
    shippable: list[str] = []
    decisions = {}
    for t in treatments:
        c = target.comparison(t)
        decisions[t] = c.decision
        mine = guardrails(stats, rule, stages, t, guard)
        broken += mine
        cells = stats.cells[stats.target_stage]
        if cells[t].converted == 0 and cells[stats.control].converted == 0:
            # Only the prior speaks: its lift and anytime-valid interval mean nothing.
            reasons.append(f"{t} at {stats.target_stage} conversion: no conversions in either variant yet.")
        else:
            reasons.append(_reason(t, stats.target_stage, c))
        for g in mine:
            reasons.append(
                f"{t} breaks a guardrail: {g.metric.replace('_', ' ')} at {g.stage} has P(better) {g.p_better:.3f}."
            )
        if c.decision == "ship" and not mine:
            shippable.append(t)

    action: Action
    variant: str | None
    if shippable:
        best = min(shippable, key=lambda t: target.arm(t).expected_loss or 0.0)
        action, variant = "ship", best
        summary = f"Ship {best}: it credibly lifts {stats.target_stage} conversion and no guardrail objects."
    elif all(decisions[t] == "harmful" or any(g.variant == t for g in broken) for t in treatments):
        action, variant = "keep_control", None
        summary = f"Keep {stats.control}: every treatment is worse at {stats.target_stage} or breaks a guardrail."
    elif all(decisions[t] == "not_enough_data" for t in treatments):
        action, variant = "not_enough_data", None
        summary = f"Not enough data yet: fewer than {rule.min_exposed} exposed customers in some variant."
    else:
        action, variant = "keep_running", None
        summary = f"Keep running: no treatment is credibly better at {stats.target_stage} conversion yet."
    if srm.flagged:
        reasons.insert(0, f"Without the mismatch the recommendation would be: {summary}")
        action, variant = "investigate", None
        summary = (
            f"Investigate before acting: sample-ratio mismatch at {srm.stage} (p = {srm.p_value:.2g}); "
            "assignment or exposure logging is likely broken."
        )
    return Recommendation(action, variant, summary, tuple(reasons), tuple(broken))


def _reason(treatment: str, stage: str, c: Comparison) -> str:
    lift = f"{c.relative_lift.mean:+.1%}" if c.relative_lift and c.relative_lift.mean is not None else "n/a"
    p_text = f"{c.p_better:.3f}" if c.p_better is not None else "n/a"
    interval = c.always_valid_interval
    anytime = ""
    if interval is not None and interval.low is not None and interval.high is not None:
        anytime = f", anytime-valid {interval.low:+.1%} to {interval.high:+.1%}"
    return (
        f"{treatment} at {stage} conversion: {_DECISION_TEXT[c.decision or 'not_enough_data']} "
        f"(lift {lift}, P(better) {p_text}{anytime})."
    )


_DECISION_TEXT = {
    "ship": "credibly better",
    "harmful": "credibly worse",
    "keep_running": "not decided yet",
    "not_enough_data": "not enough data",
}
