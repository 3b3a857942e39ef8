"""Planning (days and customers until a peeking-safe call, "about N more days") and
the exploratory segment helper.

The planning functions simulate the test's Gaussian approximation; they are checked
against the full rule on simulated binomial data (``analysis.operating``, the same
functions ``analyze`` decides with): median time to decision within 25%.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis import AnalysisInputError, CellStats, ExperimentStats, Scale, messages
from analysis.operating import simulate_conversion
from analysis.planning import forecast, plan
from analysis.segments import segment_differences


@pytest.mark.slow
@pytest.mark.parametrize(
    "baseline, lift, per_day, arms",
    [(0.1, 0.15, 400, 2), (0.1, 0.30, 400, 2), (0.02, 0.2, 2000, 2), (0.5, 0.05, 1000, 2), (0.1, 0.15, 400, 3)],
)
def test_planned_median_days_match_simulated_experiments(baseline, lift, per_day, arms):
    planned = plan(baseline=baseline, lift=lift, per_arm_per_day=per_day, arms=arms, max_days=120)
    lifts = (lift,) + (0.0,) * (arms - 2)
    rng = np.random.default_rng(per_day + arms)
    calls = simulate_conversion(rng, baseline=baseline, lifts=lifts, per_day=per_day, days=120, simulations=1000)
    simulated = calls.median_ship_day(0)
    assert planned.median_days is not None
    assert abs(planned.median_days - simulated) <= 0.25 * simulated, (planned, simulated)
    assert planned.median_customers_per_arm == round(planned.median_days * per_day)
    assert planned.days_for_power >= planned.median_days


def test_plan_reaches_the_power_target_of_issue_12():
    planned = plan(baseline=0.1, lift=0.15, per_arm_per_day=400)
    assert planned.days_for_power <= 28 and planned.median_days <= 20
    assert plan(baseline=0.1, lift=0.30, per_arm_per_day=400).median_days <= 7


def test_plan_scales_with_traffic_and_effect():
    slow = plan(baseline=0.1, lift=0.1, per_arm_per_day=200)
    fast = plan(baseline=0.1, lift=0.1, per_arm_per_day=800)
    assert fast.median_days < slow.median_days
    # about the same customers: information is what matters
    assert fast.median_customers_per_arm == pytest.approx(slow.median_customers_per_arm, rel=0.25)
    assert (
        plan(baseline=0.1, lift=0.05, per_arm_per_day=400).median_days
        > plan(baseline=0.1, lift=0.1, per_arm_per_day=400).median_days
    )
    more_arms = plan(baseline=0.1, lift=0.1, per_arm_per_day=400, arms=4)
    assert more_arms.median_days >= plan(baseline=0.1, lift=0.1, per_arm_per_day=400).median_days
    harm = plan(baseline=0.1, lift=-0.15, per_arm_per_day=400)  # a harmful call for a loss
    assert harm.median_days is not None


def test_plan_says_none_when_out_of_reach():
    hopeless = plan(baseline=0.01, lift=0.01, per_arm_per_day=50, max_days=30)
    assert hopeless.median_days is None and hopeless.days_for_power is None
    assert hopeless.p_decision_by_max_days < 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"baseline": 0.0, "lift": 0.1, "per_arm_per_day": 10},
        {"baseline": 0.1, "lift": 0.0, "per_arm_per_day": 10},
        {"baseline": 0.9, "lift": 0.2, "per_arm_per_day": 10},
        {"baseline": 0.1, "lift": 0.1, "per_arm_per_day": 0},
    ],
)
def test_plan_rejects_impossible_inputs(kwargs):
    with pytest.raises(AnalysisInputError):
        plan(**kwargs)


def test_forecast_of_a_running_experiment():
    # day 5 of a 10% baseline test with a true +15% lift, 400 per arm per day
    running = forecast(exposed_t=2000, converted_t=230, exposed_c=2000, converted_c=200, per_arm_per_day=400)
    assert running.more_days is not None and 3 <= running.more_days <= 30
    assert 0.4 <= running.p_decision_by_then <= 0.7  # the median: about half
    assert running.p_ship_by_then > running.p_harmful_by_then
    optimistic = forecast(
        exposed_t=2000, converted_t=230, exposed_c=2000, converted_c=200, per_arm_per_day=400, assumed_lift=0.3
    )
    pessimistic = forecast(
        exposed_t=2000, converted_t=230, exposed_c=2000, converted_c=200, per_arm_per_day=400, assumed_lift=0.08
    )
    assert optimistic.more_days < running.more_days < pessimistic.more_days
    assert pessimistic.p_decision_by_then > optimistic.p_decision_by_then  # more time, more chances
    done = forecast(exposed_t=20_000, converted_t=2300, exposed_c=20_000, converted_c=2000, per_arm_per_day=400)
    assert done.decided_now and done.more_days == 0 and done.p_ship_by_then == 1.0


def test_forecast_is_reproducible():
    kwargs = dict(exposed_t=800, converted_t=90, exposed_c=800, converted_c=80, per_arm_per_day=400)
    assert forecast(**kwargs, seed=3) == forecast(**kwargs, seed=3)


# -- segments ---------------------------------------------------------------------------


def segment(exposed, converted_a, converted_b, ratings=(0,) * 5):
    cells = {"buy": {"A": CellStats(exposed, converted_a, ratings), "B": CellStats(exposed, converted_b, ratings)}}
    return ExperimentStats(("buy",), "buy", ("A", "B"), "A", (0.5, 0.5), Scale(), cells)


def test_a_segment_with_a_different_effect_is_flagged_and_no_ship_call_is_made():
    segments = {
        "web": segment(20_000, 2000, 2000),
        "ios": segment(20_000, 2000, 2010),
        "android": segment(20_000, 2000, 2600),  # +30% only here
    }
    rows = {r.segment: r for r in segment_differences(segments, treatment="B")}
    assert rows["android"].flagged and rows["android"].difference.low > 0
    assert rows["android"].effect == pytest.approx(2601 / 2001 - 1, rel=1e-6)
    assert not rows["ios"].flagged or rows["ios"].difference.high < 0  # the rest looks worse next to android
    assert all(r.alpha == pytest.approx(0.05 / 3) for r in rows.values())
    assert not hasattr(rows["android"], "decision")


def test_segments_looked_at_widen_the_interval():
    segments = {"a": segment(5000, 500, 560), "b": segment(5000, 500, 500)}
    few = segment_differences(segments, treatment="B")[0]
    many = segment_differences(segments, treatment="B", looked_at=40)[0]
    assert many.alpha == pytest.approx(0.05 / 40)
    assert many.difference.low < few.difference.low and many.difference.high > few.difference.high


def test_segments_without_data_get_a_status():
    segments = {"a": segment(0, 0, 0), "b": segment(50, 5, 5), "c": segment(5000, 500, 500), "d": segment(800, 80, 80)}
    rows = {r.segment: r for r in segment_differences(segments, treatment="B")}
    assert rows["a"].status == messages.NO_DATA and rows["a"].difference is None and not rows["a"].flagged
    assert rows["b"].status == messages.NOT_ENOUGH_DATA
    assert rows["c"].status == messages.OK


def test_segments_on_the_mean_rating():
    segments = {
        "x": segment(1000, 300, 300, (10, 10, 40, 120, 120)),
        "y": segment(1000, 300, 300, (10, 10, 40, 120, 120)),
    }
    rows = segment_differences(segments, treatment="B", metric="mean_rating")
    assert rows[0].scale == "difference_of_differences" and rows[0].difference.mean == pytest.approx(0)
    assert not any(r.flagged for r in rows)


def test_segment_helper_rejects_bad_calls():
    with pytest.raises(AnalysisInputError):
        segment_differences({"only": segment(10, 1, 1)}, treatment="B")
    with pytest.raises(AnalysisInputError):
        segment_differences({"a": segment(10, 1, 1), "b": segment(10, 1, 1)}, treatment="A")


@pytest.mark.slow
def test_equal_segments_are_rarely_flagged_over_daily_looks():
    """300 experiments, 4 segments with the same true effect (+5%), 14 daily looks:
    the share of experiments with any segment ever flagged stays within the budget."""
    rng = np.random.default_rng(77)
    experiments, days, per_day = 300, 14, 300
    rates = np.array([0.1, 0.105])
    daily = rng.binomial(per_day, rates, size=(experiments, days, 4, 2)).cumsum(axis=1)
    ever = 0
    for e in range(experiments):
        flagged = False
        for d in range(days):
            n = per_day * (d + 1)
            segments = {f"s{k}": segment(n, int(daily[e, d, k, 0]), int(daily[e, d, k, 1])) for k in range(4)}
            if any(r.flagged for r in segment_differences(segments, treatment="B")):
                flagged = True
                break
        ever += flagged
    assert ever / experiments <= 0.05
