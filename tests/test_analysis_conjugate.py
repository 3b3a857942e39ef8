"""The conjugate path as a report uses it: result shape, decisions, the recommendation
with its guardrails, the journey view, the sample-ratio check, degenerate data and
contract violations, reproducibility and JSON output."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from analysis import (
    FAST_DRAWS,
    AnalysisInputError,
    CellStats,
    DecisionRule,
    ExperimentStats,
    Scale,
    analyze,
    messages,
)

STAGES = ("consideration", "purchase", "retention")
NO_RATINGS = (0, 0, 0, 0, 0)


def experiment(cells, *, target="purchase", control="A", weights=None, scale=Scale()) -> ExperimentStats:
    """``cells[stage][variant] = (exposed, converted, ratings)``."""
    stages = tuple(cells)
    variants = tuple(next(iter(cells.values())))
    return ExperimentStats(
        stages=stages,
        target_stage=target,
        variants=variants,
        control=control,
        weights=weights or (1 / len(variants),) * len(variants),
        scale=scale,
        cells={s: {v: CellStats(*cells[s][v]) for v in variants} for s in stages},
    )


def funnel(rates, exposed=20_000, ratings=NO_RATINGS):
    """One variant's cells over STAGES: converted = rate * exposed at each stage."""
    return {s: (exposed, round(r * exposed), ratings) for s, r in zip(STAGES, rates, strict=True)}


def by_stage(**variants):
    return {s: {v: cells[s] for v, cells in variants.items()} for s in STAGES}


def json_safe(result) -> dict:
    data = result.to_dict()
    json.dumps(data, allow_nan=False)  # raises on NaN or infinity
    return data


def test_result_has_every_stage_metric_and_treatment():
    stats = experiment(
        by_stage(
            A=funnel((0.5, 0.2, 0.1), ratings=(5, 5, 20, 40, 30)),
            B=funnel((0.5, 0.22, 0.1), ratings=(4, 6, 18, 42, 30)),
            C=funnel((0.5, 0.2, 0.09), ratings=(6, 5, 20, 40, 29)),
        )
    )
    result = analyze(stats)
    assert [s.stage for s in result.stages] == list(STAGES)
    for stage in result.stages:
        assert [m.metric for m in stage.metrics] == ["conversion", "mean_rating", "top_box"]  # NPS only on 0-10
        for metric in stage.metrics:
            assert [a.variant for a in metric.arms] == ["A", "B", "C"]
            assert [c.treatment for c in metric.comparisons] == ["B", "C"]
            assert sum(a.p_best for a in metric.arms) == pytest.approx(1.0)
    conversion = result.stage("purchase").metric("conversion")
    assert conversion.arm("B").observed == pytest.approx(0.22)
    assert conversion.arm("B").conjugate_params == (1 + 4400, 1 + 15600)
    lift = conversion.comparison("B").relative_lift
    assert lift.low < 0.1 < lift.high and lift.mean == pytest.approx(0.1, abs=0.01)
    assert conversion.comparison("B").absolute_difference.mean == pytest.approx(0.02, abs=0.002)
    data = json_safe(result)
    assert data["stages"][1]["metrics"][0]["comparisons"][0]["treatment"] == "B"


def test_nps_is_reported_on_the_zero_to_ten_scale():
    ratings_a = (1, 0, 2, 1, 3, 5, 10, 20, 30, 40, 50)  # 162 ratings
    ratings_b = (0, 0, 1, 1, 2, 4, 8, 20, 28, 45, 60)
    cells = {"s": {"A": (500, 200, ratings_a), "B": (500, 210, ratings_b)}}
    result = analyze(experiment(cells, target="s", scale=Scale(0, 10)))
    nps = result.stage("s").metric("nps")
    detractors, promoters = sum(ratings_a[:7]), sum(ratings_a[9:])
    assert nps.arm("A").observed == pytest.approx(100 * (promoters - detractors) / sum(ratings_a))
    assert nps.comparison("B").relative_lift is None  # NPS can be negative: no relative lift
    assert nps.comparison("B").decision is None  # reported, not deciding
    top_box = result.stage("s").metric("top_box")
    assert top_box.arm("A").observed == pytest.approx(promoters / sum(ratings_a))  # 9-10 on 0-10


def test_seed_makes_the_result_reproducible_and_p_better_does_not_depend_on_it():
    stats = experiment(
        by_stage(
            A=funnel((0.5, 0.2, 0.1), ratings=(5, 5, 20, 40, 30)),
            B=funnel((0.5, 0.21, 0.1), ratings=(5, 6, 19, 40, 31)),
        )
    )
    first, again, other = analyze(stats, seed=7), analyze(stats, seed=7), analyze(stats, seed=8)
    assert first.to_dict() == again.to_dict()
    a, b = first.stage("purchase").metric("conversion"), other.stage("purchase").metric("conversion")
    assert a.comparison("B").relative_lift != b.comparison("B").relative_lift  # intervals are simulated
    assert a.comparison("B").p_better == b.comparison("B").p_better  # P(better) is not
    fast = analyze(stats, seed=7, draws=FAST_DRAWS, max_p_better_error=None)
    assert fast.stage("purchase").metric("conversion").comparison("B").p_better == a.comparison("B").p_better


def test_every_p_better_meets_the_monte_carlo_error_bound():
    piled = (0, 0, 0, 2, 400)  # too skewed for the expansion: simulated, then topped up
    stats = experiment(
        by_stage(A=funnel((0.5, 0.2, 0.1), ratings=piled), B=funnel((0.5, 0.2, 0.1), ratings=(0, 0, 1, 2, 399)))
    )
    result = analyze(stats)
    errors = [c.p_better_error for s in result.stages for m in s.metrics for c in m.comparisons]
    assert max(errors) <= 0.002
    assert any(e > 0 for e in errors)  # the piled histograms were simulated


@pytest.mark.parametrize(
    "rates_b, n, expected",
    [
        ((0.5, 0.23, 0.1), 20_000, "ship"),
        ((0.5, 0.17, 0.1), 20_000, "harmful"),
        ((0.5, 0.2, 0.1), 20_000, "keep_running"),
        ((0.5, 0.4, 0.1), 60, "not_enough_data"),
    ],
)
def test_decision_rule_per_stage(rates_b, n, expected):
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1), exposed=n), B=funnel(rates_b, exposed=n)))
    comparison = analyze(stats).stage("purchase").metric("conversion").comparison("B")
    assert comparison.decision == expected
    if expected == "ship":
        assert comparison.p_better >= 0.95 and comparison.expected_loss_relative < 0.01
    if expected == "harmful":
        assert comparison.p_better <= 0.05


def test_decision_rule_settings_are_honoured():
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1)), B=funnel((0.5, 0.205, 0.1))))
    lenient = DecisionRule(ship_probability=0.8, min_exposed=10)
    strict = DecisionRule(min_exposed=50_000)
    p = analyze(stats).stage("purchase").metric("conversion").comparison("B").p_better
    assert 0.8 < p < 0.95
    # The Bayesian thresholds alone (one look): the lenient rule ships ...
    fixed = analyze(stats, rule=lenient, sequential=None).stage("purchase").metric("conversion").comparison("B")
    assert fixed.decision == "ship" and fixed.always_valid_interval is None
    # ... but a +2.5% lift seen with 4,000 conversions per arm is not yet past the
    # anytime-valid bound, even with the lenient rule's larger (20%) ship budget.
    peeking_safe = analyze(stats, rule=lenient).stage("purchase").metric("conversion").comparison("B")
    assert peeking_safe.decision == "keep_running"
    assert peeking_safe.always_valid_interval.low < 0 < peeking_safe.always_valid_interval.high
    assert peeking_safe.decision_basis.startswith("Keep running")
    assert (
        analyze(stats, rule=strict).stage("purchase").metric("conversion").comparison("B").decision == "not_enough_data"
    )


def test_recommendation_ships_the_credible_winner():
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1)), B=funnel((0.5, 0.23, 0.115)), C=funnel((0.5, 0.2, 0.1))))
    recommendation = analyze(stats).recommendation
    assert (recommendation.action, recommendation.variant) == ("ship", "B")
    assert recommendation.guardrails == ()


def test_without_any_conversion_the_recommendation_quotes_no_number():
    """Exposed customers and not one conversion at the stage under test: the lift and
    its anytime-valid interval would be the prior's (-100% to +4,648,974%)."""
    stats = experiment(by_stage(A=funnel((0.5, 0.0, 0.0), exposed=300), B=funnel((0.5, 0.0, 0.0), exposed=300)))
    recommendation = analyze(stats).recommendation
    assert recommendation.action != "ship"
    assert recommendation.reasons == ("B at purchase conversion: no conversions in either variant yet.",)
    with_one = experiment(by_stage(A=funnel((0.5, 0.0, 0.0), exposed=300), B=funnel((0.5, 0.01, 0.0), exposed=300)))
    assert "anytime-valid" in analyze(with_one).recommendation.reasons[0]


def test_downstream_conversion_guardrail_blocks_a_target_stage_winner():
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1)), B=funnel((0.5, 0.23, 0.08))))
    result = analyze(stats)
    assert result.stage("purchase").metric("conversion").comparison("B").decision == "ship"
    recommendation = result.recommendation
    assert recommendation.action == "keep_control"
    assert [(g.variant, g.stage, g.metric) for g in recommendation.guardrails] == [("B", "retention", "conversion")]
    assert any("guardrail" in reason for reason in recommendation.reasons)


def test_satisfaction_guardrail_blocks_a_target_stage_winner():
    happy, unhappy = (100, 100, 300, 800, 700), (300, 200, 400, 600, 500)
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1), ratings=happy), B=funnel((0.5, 0.23, 0.1), ratings=unhappy)))
    recommendation = analyze(stats).recommendation
    assert recommendation.action == "keep_control"
    assert {g.metric for g in recommendation.guardrails} == {"mean_rating"}


def test_upstream_conversion_does_not_guard():
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1)), B=funnel((0.45, 0.23, 0.115))))
    assert analyze(stats).recommendation.action == "ship"


def test_all_treatments_worse_keeps_the_control():
    stats = experiment(by_stage(A=funnel((0.5, 0.2, 0.1)), B=funnel((0.5, 0.17, 0.1))))
    assert analyze(stats).recommendation.action == "keep_control"


def test_sample_ratio_mismatch_is_flagged_and_stated_in_the_recommendation():
    cells = by_stage(A=funnel((0.5, 0.2, 0.1), exposed=10_000), B=funnel((0.5, 0.23, 0.115), exposed=10_600))
    result = analyze(experiment(cells))
    srm = result.sample_ratio
    expected = scipy_stats.chisquare([10_000, 10_600], [10_300, 10_300])
    assert srm.chi_square == pytest.approx(expected.statistic)
    assert srm.p_value == pytest.approx(expected.pvalue)
    assert srm.flagged and result.status == messages.SAMPLE_RATIO_MISMATCH
    assert result.recommendation.action == "investigate"
    assert "sample-ratio mismatch" in result.recommendation.summary
    assert result.recommendation.reasons[0].startswith("Without the mismatch the recommendation would be: Ship B")


def test_sample_ratio_within_chance_and_configured_weights_are_not_flagged():
    cells = by_stage(A=funnel((0.5, 0.2, 0.1), exposed=20_000), B=funnel((0.5, 0.2, 0.1), exposed=10_050))
    result = analyze(experiment(cells, weights=(2 / 3, 1 / 3)))
    assert not result.sample_ratio.flagged and result.sample_ratio.p_value > 0.5
    strict = analyze(experiment(cells), rule=DecisionRule(srm_alpha=0.5))
    assert strict.sample_ratio.flagged


def test_exposures_on_a_zero_weight_variant_are_a_mismatch():
    cells = by_stage(A=funnel((0.5, 0.2, 0.1)), B=funnel((0.5, 0.2, 0.1), exposed=10))
    srm = analyze(experiment(cells, weights=(1.0, 0.0))).sample_ratio
    assert srm.flagged and srm.p_value == 0.0


def test_journey_view():
    a = {
        "consideration": (10_000, 5000, NO_RATINGS),
        "purchase": (10_000, 2000, NO_RATINGS),
        "retention": (10_000, 1000, NO_RATINGS),
    }
    b = {
        "consideration": (10_000, 5500, NO_RATINGS),
        "purchase": (10_000, 2200, NO_RATINGS),
        "retention": (10_000, 880, NO_RATINGS),
    }
    result = analyze(experiment(by_stage(A=a, B=b)))
    journey = result.journey
    assert journey.final_stage == "retention"
    assert journey.end_to_end == result.stage("retention").metric("conversion").comparisons
    variant_a, variant_b = journey.variants
    assert [s.observed for s in variant_a.steps] == pytest.approx([0.5, 0.4, 0.5])
    assert [s.observed for s in variant_b.steps] == pytest.approx([0.55, 0.4, 0.4])
    assert variant_a.end_to_end.mean == pytest.approx(0.1, abs=0.002)
    assert variant_a.steps[0].lift is None  # the control
    assert variant_b.steps[2].lift.mean == pytest.approx(0.4 / 0.5 - 1, abs=0.02)
    assert variant_b.largest_gain_stage == "consideration"
    assert variant_b.largest_loss_stage == "retention"
    assert variant_a.largest_gain_stage is None and variant_a.largest_loss_stage is None


def codes(result) -> set[str]:
    return {n.code for n in result.notes}


def test_no_exposures_gives_a_status_and_neutral_values():
    empty = (0, 0, NO_RATINGS)
    result = analyze(experiment({s: {"A": empty, "B": empty} for s in STAGES}))
    assert result.status == messages.NO_EXPOSURES
    assert result.recommendation.action == "not_enough_data"
    comparison = result.stage("purchase").metric("conversion").comparison("B")
    assert comparison.status == messages.NO_DATA
    # No number where there is no data (issue 12): P(better) is None, not a neutral 0.5.
    assert (comparison.p_better, comparison.relative_lift, comparison.decision) == (None, None, "not_enough_data")
    assert not comparison.has_data and comparison.always_valid_interval is None
    assert comparison.decision_basis.startswith("No data")
    arm = result.stage("purchase").metric("conversion").arm("A")
    assert (arm.observed, arm.posterior, arm.p_best) == (None, None, None)
    assert result.sample_ratio.p_value is None and not result.sample_ratio.flagged
    json_safe(result)


def test_a_single_variant_with_data():
    cells = {s: {"A": (1000, 100, (1, 2, 3, 4, 5)), "B": (0, 0, NO_RATINGS)} for s in STAGES}
    result = analyze(experiment(cells))
    assert result.status == messages.SINGLE_VARIANT
    assert result.recommendation.action == "not_enough_data"
    metric = result.stage("purchase").metric("conversion")
    assert metric.status == messages.SINGLE_VARIANT
    assert metric.arm("A").posterior is not None and metric.arm("A").p_best is None
    json_safe(result)


def test_zero_and_full_conversion():
    cells = {
        "consideration": {"A": (500, 500, (0, 0, 0, 0, 80)), "B": (500, 499, (0, 0, 0, 1, 79))},
        "purchase": {"A": (500, 0, NO_RATINGS), "B": (500, 4, NO_RATINGS)},
        "retention": {"A": (500, 0, NO_RATINGS), "B": (500, 0, NO_RATINGS)},
    }
    result = analyze(experiment(cells))
    full = result.stage("consideration").metric("conversion").comparison("B")
    assert full.status == messages.BOUNDARY_RATE and full.relative_lift is not None
    zero = result.stage("purchase").metric("conversion").comparison("B")
    assert zero.status == messages.ZERO_BASELINE and zero.relative_lift is None
    assert zero.absolute_difference.mean > 0 and zero.p_better > 0.9
    assert result.stage("retention").metric("conversion").comparison("B").p_better == pytest.approx(0.5)
    assert result.stage("purchase").metric("mean_rating").status == messages.NO_DATA
    assert {messages.BOUNDARY_RATE, messages.ZERO_BASELINE, messages.NO_DATA} <= codes(result)
    json_safe(result)


def test_a_one_variant_experiment_is_described_not_compared():
    cells = {"s": {"A": (100, 10, (1, 1, 1, 1, 1))}}
    result = analyze(experiment(cells, target="s"))
    assert result.recommendation.action == "not_enough_data"
    assert result.stage("s").metric("conversion").comparisons == ()
    json_safe(result)


@pytest.mark.parametrize(
    "cell, match",
    [
        ((-1, 0, NO_RATINGS), "negative"),
        ((10, 11, NO_RATINGS), "exceeds exposed"),
        ((10, 5, (1, 2, 3, 4, 5)), "exceed exposed"),
        ((10, 5, (1, 2, -1, 0, 0)), "negative"),
    ],
)
def test_contract_violations_raise(cell, match):
    with pytest.raises(AnalysisInputError, match=match):
        experiment({"s": {"A": cell}}, target="s")


def test_histogram_outside_the_scale_raises():
    with pytest.raises(AnalysisInputError, match="bins"):
        experiment({"s": {"A": (10, 5, (1, 2, 3))}}, target="s")


@pytest.mark.parametrize(
    "kwargs", [{"draws": 10}, {"draws": 1000.5}, {"max_p_better_error": 0.0}, {"max_p_better_error": 0.7}]
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(AnalysisInputError):
        analyze(experiment({"s": {"A": (10, 5, NO_RATINGS)}}, target="s"), **kwargs)


def test_importing_analysis_loads_neither_flask_sqlalchemy_nor_pymc():
    code = (
        "import sys, analysis, analysis.hierarchical; "
        "loaded = [m for m in ('flask', 'sqlalchemy', 'pymc', 'pytensor', 'arviz') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_results_are_frozen():
    result = analyze(experiment({"s": {"A": (10, 5, NO_RATINGS)}}, target="s"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.stages[0].metrics[0].arms[0].n = 1  # type: ignore[misc]
