"""The decision rule per comparison and the experiment-level recommendation.

The target stage's conversion decides; downstream stages' conversion and every
stage's mean rating are guardrails that can veto a treatment but never ship one.
"""

from __future__ import annotations

from .types import Decision, DecisionRule, ExperimentStats, Guardrail, Recommendation, SampleRatio, StageResult


def decide(rule: DecisionRule, p_better: float, expected_loss_relative: float | None, smallest_n: int) -> Decision:
    """``DecisionRule`` in code: not enough data first, then ship, harmful, keep running."""
    if smallest_n < rule.min_exposed:
        return "not_enough_data"
    safe = expected_loss_relative is not None and expected_loss_relative < rule.max_expected_loss
    if p_better >= rule.ship_probability and safe:
        return "ship"
    if p_better <= rule.harm_probability:
        return "harmful"
    return "keep_running"


def guardrails(
    stats: ExperimentStats, rule: DecisionRule, stages: tuple[StageResult, ...], treatment: str
) -> list[Guardrail]:
    """Where the treatment is credibly worse: P(better) <= guardrail_probability with
    enough data, on a downstream stage's conversion or on any stage's mean rating."""
    target = stats.stages.index(stats.target_stage)
    broken = []
    for i, stage in enumerate(stages):
        watched = ["mean_rating"] + (["conversion"] if i > target else [])
        for metric in watched:
            c = stage.metric(metric).comparison(treatment)
            if c.decision in (None, "not_enough_data") or c.p_better is None:
                continue
            if c.p_better <= rule.guardrail_probability:
                broken.append(Guardrail(treatment, stage.stage, metric, c.p_better))
    return broken


def recommend(
    stats: ExperimentStats,
    rule: DecisionRule,
    stages: tuple[StageResult, ...],
    srm: SampleRatio,
    *,
    no_data: bool,
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
        mine = guardrails(stats, rule, stages, t)
        broken += mine
        lift = f"{c.relative_lift.mean:+.1%}" if c.relative_lift and c.relative_lift.mean is not None else "n/a"
        reasons.append(
            f"{t} at {stats.target_stage} conversion: {_DECISION_TEXT[c.decision]} "
            f"(lift {lift}, P(better) {c.p_better:.3f})."
        )
        for g in mine:
            reasons.append(
                f"{t} breaks a guardrail: {g.metric.replace('_', ' ')} at {g.stage} has P(better) {g.p_better:.3f}."
            )
        if c.decision == "ship" and not mine:
            shippable.append(t)

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


_DECISION_TEXT = {
    "ship": "credibly better",
    "harmful": "credibly worse",
    "keep_running": "not decided yet",
    "not_enough_data": "not enough data",
}
