"""A rating scale per journey stage (``ExperimentStats.stage_scales``), or none.

A mixed experiment (effort 1-7 at consideration, CSAT 1-5 at purchase, no question at
retention, NPS 0-10 at advocacy) must give, stage by stage, what a one-stage
experiment of that stage alone on its scale gives (exactly where the numbers are
computed without draws, within Monte Carlo error otherwise); stages without a question
have conversion only and add no satisfaction guardrail; segments and the full model
follow each stage's own scale.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from analysis import (
    AnalysisInputError,
    CellStats,
    DecisionRule,
    ExperimentStats,
    Scale,
    analyze,
    hierarchical,
    messages,
    segment_differences,
)
from analysis import sequential as seq
from analysis.decision import guardrail_checks

STAGES = ("consideration", "purchase", "retention", "advocacy")
SCALES: dict[str, Scale | None] = {
    "consideration": Scale(1, 7),
    "purchase": Scale(1, 5),
    "retention": None,
    "advocacy": Scale(0, 10),
}
VARIANTS = ("A", "B", "C")
NPS = np.array([1, 1, 1, 1, 2, 3, 5, 10, 20, 25, 31]) / 100


def histogram(rng, scale: Scale | None, rated: int, tilt: float = 0.0) -> tuple[int, ...]:
    """Ratings of ``rated`` customers on ``scale``, leaning towards the top by ``tilt``."""
    if scale is None:
        return ()
    k = scale.categories
    base = NPS if k == 11 else np.linspace(1, 3, k) / np.linspace(1, 3, k).sum()
    probs = base * np.exp(tilt * np.arange(k) / (k - 1))
    return tuple(int(x) for x in rng.multinomial(rated, probs / probs.sum()))


def mixed_stats(seed=1, *, scales=SCALES, exposed=4000, rated=600, target="purchase") -> ExperimentStats:
    """Variant B converts and rates a little better, C a little worse; at advocacy C has
    40 ratings, all 10s (too skewed for the exact P(better))."""
    rng = np.random.default_rng(seed)
    cells: dict[str, dict[str, CellStats]] = {}
    for i, stage in enumerate(STAGES):
        scale = scales[stage]
        cells[stage] = {}
        for variant, lift, tilt in (("A", 1.0, 0.0), ("B", 1.08, 0.4), ("C", 0.95, -0.2)):
            converted = int(rng.binomial(exposed, 0.4 / (i + 1) * lift))
            ratings = histogram(rng, scale, rated, tilt)
            if scale == Scale(0, 10) and variant == "C":
                ratings = (0,) * 10 + (40,)
            cells[stage][variant] = CellStats(exposed, converted, ratings)
    return ExperimentStats(STAGES, target, VARIANTS, "A", (1 / 3,) * 3, Scale(1, 5), cells, stage_scales=dict(scales))


def one_stage(stats: ExperimentStats, stage: str) -> ExperimentStats:
    """The stage alone, as a single-scale experiment where it has a scale (the path that
    existed before stage scales), with ``stage_scales`` None where it has no question."""
    scale = stats.scale_of(stage)
    return ExperimentStats(
        (stage,),
        stage,
        stats.variants,
        stats.control,
        stats.weights,
        scale if scale is not None else Scale(),
        {stage: stats.cells[stage]},
        stage_scales={} if scale is not None else {stage: None},
    )


def close(a, b, width, share=0.05):
    """Two Monte Carlo estimates agree within ``share`` of an interval ``width`` (the
    2.5% quantile of 8000 draws moves by about 1% of such a width between seeds)."""
    if a is None or b is None:
        return a is b
    return abs(a - b) <= share * width


def assert_same_estimate(a, b, what):
    assert (a is None) == (b is None), what
    if a is None:
        return
    width = b.high - b.low
    assert width > 0, what
    for field in ("mean", "low", "high"):
        assert close(getattr(a, field), getattr(b, field), width), (what, field, a, b)


def assert_same_stage(mixed, single, stage):
    """Everything of ``stage`` in the mixed result against the one-stage result."""
    got, want = mixed.stage(stage), single.stage(stage)
    assert got.scale == want.scale
    assert [m.metric for m in got.metrics] == [m.metric for m in want.metrics]
    for a, b in zip(got.metrics, want.metrics, strict=True):
        what = (stage, a.metric)
        assert a.status == b.status, what
        for arm_a, arm_b in zip(a.arms, b.arms, strict=True):
            assert (arm_a.variant, arm_a.n, arm_a.observed) == (arm_b.variant, arm_b.n, arm_b.observed), what
            assert arm_a.conjugate_params == arm_b.conjugate_params, what  # closed form: exactly equal
            assert_same_estimate(arm_a.posterior, arm_b.posterior, (*what, arm_a.variant))
            assert arm_a.p_best == pytest.approx(arm_b.p_best, abs=0.03), what
        for c_a, c_b in zip(a.comparisons, b.comparisons, strict=True):
            what = (stage, a.metric, c_a.treatment)
            assert (c_a.status, c_a.has_data, c_a.decision) == (c_b.status, c_b.has_data, c_b.decision), what
            assert (c_a.p_better_error == 0) == (c_b.p_better_error == 0), what
            if c_b.p_better_error == 0:  # exact quadrature or Edgeworth: no simulation noise
                assert c_a.p_better == c_b.p_better, what
            else:  # a rank statistic over draws, with its standard error
                assert abs(c_a.p_better - c_b.p_better) <= 4 * np.hypot(c_a.p_better_error, c_b.p_better_error), what
            assert_same_estimate(c_a.absolute_difference, c_b.absolute_difference, what)
            assert_same_estimate(c_a.relative_lift, c_b.relative_lift, what)
            iv_a, iv_b = c_a.always_valid_interval, c_b.always_valid_interval
            assert (iv_a is None) == (iv_b is None), what
            if iv_b is not None:  # from the counts alone, on the stage's own scale width
                assert (iv_a.mean, iv_a.low, iv_a.high) == pytest.approx((iv_b.mean, iv_b.low, iv_b.high), rel=1e-9)
                assert c_a.always_valid_level == c_b.always_valid_level
    notes = {(n.code, n.metric, n.variant) for n in mixed.notes if n.stage == stage}
    assert notes == {(n.code, n.metric, n.variant) for n in single.notes if n.stage == stage}


@pytest.fixture(scope="module")
def stats():
    return mixed_stats()


@pytest.fixture(scope="module")
def result(stats):
    return analyze(stats, seed=3)


def test_each_stage_reports_the_metrics_of_its_own_scale(stats, result):
    assert stats.scale_of("retention") is None and stats.scale_of("advocacy") == Scale(0, 10)
    shown = {s.stage: (s.scale, [m.metric for m in s.metrics]) for s in result.stages}
    assert shown == {
        "consideration": (Scale(1, 7), ["conversion", "mean_rating", "top_box"]),
        "purchase": (Scale(1, 5), ["conversion", "mean_rating", "top_box"]),
        "retention": (None, ["conversion"]),
        "advocacy": (Scale(0, 10), ["conversion", "mean_rating", "top_box", "nps"]),
    }
    retention, advocacy = result.stage("retention"), result.stage("advocacy")
    assert retention.has("conversion") and not retention.has("mean_rating") and not retention.has("top_box")
    assert advocacy.has("nps") and not result.stage("purchase").has("nps")
    with pytest.raises(StopIteration):
        retention.metric("mean_rating")
    # Each scale's own values: the 1-7 mean is above 5 with ratings leaning up, 0-10's above 7.
    assert 4.5 < result.stage("consideration").metric("mean_rating").arm("A").observed < 7
    assert 6 < advocacy.metric("mean_rating").arm("A").observed <= 10
    assert [c.treatment for c in advocacy.metric("nps").comparisons] == ["B", "C"]

    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    scales = {s["stage"]: s["scale"] for s in data["stages"]}
    assert scales == {
        "consideration": {"min": 1, "max": 7},
        "purchase": {"min": 1, "max": 5},
        "retention": None,
        "advocacy": {"min": 0, "max": 10},
    }
    assert not any(n.stage == "retention" and n.metric != "conversion" for n in result.notes)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_matches_a_one_stage_experiment_on_its_scale(stats, result, stage):
    single = analyze(one_stage(stats, stage), seed=11)  # other draws: agreement within their error
    assert_same_stage(result, single, stage)


def test_the_piled_histogram_is_simulated_and_the_rest_exact(result):
    # Both branches of the P(better) of rating metrics are exercised by the comparison above.
    advocacy = result.stage("advocacy").metric("mean_rating")
    assert advocacy.comparison("C").p_better_error > 0 and advocacy.comparison("B").p_better_error == 0
    assert result.stage("consideration").metric("mean_rating").comparison("C").p_better_error == 0


def test_stage_scales_equal_to_the_experiment_scale_change_nothing():
    one = dict.fromkeys(STAGES, Scale(1, 5))
    plain = mixed_stats(4, scales=one)
    plain = dataclasses.replace(plain, stage_scales={})
    spelled_out = dataclasses.replace(plain, stage_scales=one)
    # The experiment's scale is ignored where every stage names its own.
    overridden = dataclasses.replace(plain, scale=Scale(0, 10), stage_scales=one)
    expected = analyze(plain, seed=5).to_dict()
    assert analyze(spelled_out, seed=5).to_dict() == expected
    assert analyze(overridden, seed=5).to_dict() == expected


@pytest.mark.parametrize(
    "change, match",
    [
        ({"advocacy": {"A": CellStats(100, 10, (1, 2, 3, 4, 5))}}, "histogram of advocacy/A has 5 bins, scale has 11"),
        ({"consideration": {"B": CellStats(100, 10, (0,) * 11)}}, "histogram of consideration/B has 11 bins"),
        ({"retention": {"C": CellStats(100, 10, (0, 0, 0, 0, 0))}}, r"retention.*no rating question"),
        ({"retention": {"A": CellStats(100, 10, (1,))}}, "no rating question"),
    ],
)
def test_a_histogram_must_fit_its_own_stage_scale(stats, change, match):
    cells = {stage: dict(stats.cells[stage]) for stage in STAGES}
    for stage, replaced in change.items():
        cells[stage].update(replaced)
    with pytest.raises(AnalysisInputError, match=match):
        dataclasses.replace(stats, cells=cells)


def test_stage_scales_must_name_stages_and_hold_scales(stats):
    with pytest.raises(AnalysisInputError, match=r"not among the stages.*checkout"):
        dataclasses.replace(stats, stage_scales={**SCALES, "checkout": Scale(1, 5)})
    with pytest.raises(AnalysisInputError, match="must be a Scale or None"):
        dataclasses.replace(stats, stage_scales={**SCALES, "purchase": (1, 5)})


def test_scale_of_falls_back_to_the_experiment_scale_and_sums_need_equal_stage_scales(stats):
    partial = {"retention": None, "advocacy": Scale(0, 10), "consideration": Scale(1, 7)}
    fallback = dataclasses.replace(stats, stage_scales=partial)  # purchase on the experiment's 1-5
    assert fallback.scale_of("purchase") == Scale(1, 5) and fallback.scale_of("retention") is None
    assert analyze(fallback, seed=3).to_dict() == analyze(stats, seed=3).to_dict()

    total = stats + stats
    assert total.stage_scales == stats.stage_scales
    assert total.cells["advocacy"]["B"].ratings == tuple(2 * r for r in stats.cells["advocacy"]["B"].ratings)
    assert total.cells["retention"]["B"].ratings == ()
    other = mixed_stats(2, scales={**SCALES, "consideration": Scale(0, 6)})
    with pytest.raises(TypeError):
        stats + other
    with pytest.raises(TypeError):  # same scales reached differently is still a different shape
        stats + fallback


def test_the_guardrail_budget_is_shared_over_the_guardrails_that_exist():
    # Target purchase (2nd of 4): mean-rating guardrails at the 3 stages with a question
    # and conversion guardrails at retention and advocacy: 5, not 6.
    stats = mixed_stats(7)
    assert guardrail_checks(stats) == 5
    assert guardrail_checks(mixed_stats(7, scales=dict.fromkeys(STAGES, Scale(1, 5)))) == 6
    assert guardrail_checks(mixed_stats(7, scales=dict.fromkeys(STAGES))) == 2

    # B wins at purchase but its NPS raters turn away at advocacy (ratings shifted down).
    cells = {stage: dict(stats.cells[stage]) for stage in STAGES}
    a = cells["purchase"]["A"]
    cells["purchase"]["B"] = CellStats(a.exposed, int(a.converted * 1.3), a.ratings)
    low = np.array(stats.cells["advocacy"]["A"].ratings)
    worse = tuple(int(x) for x in np.roll(low, -3))  # everyone 3 points lower, the lowest wrap to the top
    cells["advocacy"]["B"] = CellStats(a.exposed, stats.cells["advocacy"]["A"].converted, worse)
    harmed = dataclasses.replace(stats, cells=cells)
    result = analyze(harmed, seed=1)
    assert result.stage("purchase").metric("conversion").comparison("B").decision == "ship"
    broken = [g for g in result.recommendation.guardrails if g.variant == "B"]
    assert [(g.stage, g.metric) for g in broken] == [("advocacy", "mean_rating")]
    (g,) = broken
    assert g.alpha == pytest.approx(0.05 / 5)
    # The bound is the mean-rating difference on 0-10: tau is 5% of a width of 10.
    estimate, variance = seq.mean_effect(np.array(worse), low, np.arange(11.0))
    assert g.always_valid_high == pytest.approx(float(estimate + seq.radius(variance, 0.5, 0.05 / 5)))
    assert result.recommendation.action != "ship"


def test_a_stage_without_ratings_yet_is_not_a_stage_without_a_question():
    stats = mixed_stats(3, rated=0)
    result = analyze(stats)
    purchase = result.stage("purchase")
    assert purchase.has("mean_rating") and purchase.metric("mean_rating").status == messages.NO_DATA
    no_data = {(n.stage, n.metric) for n in result.notes if n.code == messages.NO_DATA}
    assert ("purchase", "mean_rating") in no_data and ("advocacy", "nps") in no_data
    assert not any(stage == "retention" for stage, _ in no_data)


def test_an_experiment_without_any_rating_question_has_conversion_only():
    stats = mixed_stats(5, scales=dict.fromkeys(STAGES))
    result = analyze(stats)
    assert all([m.metric for m in s.metrics] == ["conversion"] and s.scale is None for s in result.stages)
    single = analyze(one_stage(stats, "purchase"), seed=11)
    assert_same_stage(result, single, "purchase")
    json.dumps(result.to_dict(), allow_nan=False)


# -- segments ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segments():
    return {
        name: mixed_stats(seed, exposed=3000, rated=500) for name, seed in (("ios", 21), ("android", 22), ("web", 23))
    }


@pytest.mark.parametrize(
    "stage, metric", [("advocacy", "mean_rating"), ("consideration", "mean_rating"), ("retention", "conversion")]
)
def test_segments_compare_each_stage_on_its_own_scale(segments, stage, metric):
    rule = DecisionRule(min_exposed=10)
    got = segment_differences(segments, treatment="B", stage=stage, metric=metric, rule=rule)
    alone = {name: one_stage(s, stage) for name, s in segments.items()}
    want = segment_differences(alone, treatment="B", stage=stage, metric=metric, rule=rule)
    assert got == want
    assert all(row.status == messages.OK for row in got)
    if metric == "mean_rating":  # the difference in means on that scale, by hand for one segment
        scale = SCALES[stage]
        values = np.arange(scale.min, scale.max + 1, dtype=float)
        ios = segments["ios"].cells[stage]
        estimate, _ = seq.mean_effect(np.array(ios["B"].ratings), np.array(ios["A"].ratings), values)
        assert got[0].segment == "ios" and got[0].effect == pytest.approx(float(estimate))


def test_segments_need_a_question_and_one_scale_at_the_stage(segments):
    with pytest.raises(AnalysisInputError, match="no rating question"):
        segment_differences(segments, treatment="B", stage="retention", metric="mean_rating")
    changed = {**segments, "web": mixed_stats(23, scales={**SCALES, "advocacy": Scale(1, 11)})}
    with pytest.raises(AnalysisInputError, match="do not share one rating scale"):
        segment_differences(changed, treatment="B", stage="advocacy", metric="mean_rating")
    # Another stage's scale does not matter.
    segment_differences(changed, treatment="B", stage="purchase", metric="mean_rating")


# -- the full model ---------------------------------------------------------------------


def test_full_model_has_cutpoints_per_number_of_categories_and_no_likelihood_without_a_question():
    scales = {**SCALES, "consideration": Scale(0, 4)}  # K = 5, like purchase's 1-5
    stats = mixed_stats(8, scales=scales)
    model = hierarchical.build_model(stats)
    names = {rv.name for rv in model.free_RVs}
    assert names == {"level", "effect_mu", "effect_tau", "effect_z", "cutpoints_k5", "cutpoints_k11"} | {
        "shift_mu",
        "shift_tau",
        "shift_z",
    }
    assert [p.name for p in model.potentials] == ["ratings"]  # one likelihood, padded to the longest scale
    dims = model.named_vars_to_dims
    assert dims["cutpoints_k5"] == ("stage_k5", "cut_k5") and dims["shift_z"] == ("rated_stage", "treatment")
    assert dims["rating_probs"] == ("rated_stage", "variant", "category") and len(model.coords["category"]) == 11
    assert list(model.coords["stage_k5"]) == ["consideration", "purchase"]
    assert list(model.coords["stage_k11"]) == ["advocacy"]
    assert list(model.coords["rated_stage"]) == ["consideration", "purchase", "advocacy"]
    point = model.initial_point()
    assert point["cutpoints_k5_ordered__"].shape == (2, 4) and point["cutpoints_k11_ordered__"].shape == (1, 10)
    assert point["shift_z"].shape == (3, 2) and point["effect_z"].shape == (4, 2)
    # A single stage with a question: nothing to pool the shift over.
    alone = dict.fromkeys(STAGES)
    alone["advocacy"] = Scale(0, 10)
    unpooled = hierarchical.build_model(mixed_stats(8, scales=alone))
    assert {rv.name for rv in unpooled.free_RVs} == {
        "level",
        "effect_mu",
        "effect_tau",
        "effect_z",
        "cutpoints_k11",
    } | {"shift_stage"}
    none = hierarchical.build_model(mixed_stats(8, scales=dict.fromkeys(STAGES)))
    assert {rv.name for rv in none.free_RVs} == {"level", "effect_mu", "effect_tau", "effect_z"}
    assert not none.potentials


def test_full_model_summaries_read_each_stage_on_its_own_scale(monkeypatch):
    import arviz as az

    # consideration 0-4 and purchase 1-5 share the K = 5 cutpoints; their means differ by the values.
    scales = {**SCALES, "consideration": Scale(0, 4)}
    stats = mixed_stats(9, scales=scales)
    rng = np.random.default_rng(0)
    chains, draws = 2, 200
    p = rng.uniform(0.05, 0.5, size=(chains, draws, 4, 3))
    k5 = rng.dirichlet(np.arange(1, 6), size=(chains, draws, 2, 3))  # (chain, draw, stage, variant, K)
    k11 = rng.dirichlet(NPS * 50, size=(chains, draws, 1, 3))
    # The model's rating_probs: the stages with a question, padded with empty categories to 11.
    padded = np.concatenate([np.concatenate([k5, np.zeros((chains, draws, 2, 3, 6))], axis=-1), k11], axis=2)
    idata = az.from_dict(
        posterior={"p": p, "rating_probs": padded, "effect_tau": rng.gamma(3, 0.03, (2, 200, 2))},
        sample_stats={"diverging": np.zeros((chains, draws), dtype=bool)},
    )
    diagnostics = hierarchical.diagnose(idata, "pymc", None, None)
    monkeypatch.setattr(hierarchical, "sample", lambda model, **kwargs: (idata, diagnostics))
    result = hierarchical.fit_full_model(stats, draws=draws, chains=chains)
    assert [m.metric for m in result.stage("retention").metrics] == ["conversion"]
    assert result.stage("advocacy").has("nps") and not result.stage("consideration").has("nps")

    def mean(x):
        return float(x.mean())

    for j, variant in enumerate(VARIANTS):
        arm = result.stage("consideration").metric("mean_rating").arm(variant)
        assert arm.posterior.mean == pytest.approx(mean(k5[:, :, 0, j] @ np.arange(0.0, 5.0)))
        arm = result.stage("purchase").metric("mean_rating").arm(variant)
        assert arm.posterior.mean == pytest.approx(mean(k5[:, :, 1, j] @ np.arange(1.0, 6.0)))
        arm = result.stage("purchase").metric("top_box").arm(variant)
        assert arm.posterior.mean == pytest.approx(mean(k5[:, :, 1, j, 3:].sum(-1)))
        arm = result.stage("advocacy").metric("nps").arm(variant)
        nps = np.where(np.arange(11) >= 9, 100.0, np.where(np.arange(11) <= 6, -100.0, 0.0))
        assert arm.posterior.mean == pytest.approx(mean(k11[:, :, 0, j] @ nps))
        arm = result.stage("retention").metric("conversion").arm(variant)
        assert arm.posterior.mean == pytest.approx(mean(p[:, :, 2, j]))
    json.dumps(result.to_dict(), allow_nan=False)


def expit(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.slow
def test_full_model_recovers_a_strong_effect_on_the_nps_stage_beside_a_stage_without_a_question(monkeypatch):
    import arviz as az

    stages = ("purchase", "retention", "advocacy")
    scales = {"purchase": Scale(1, 5), "retention": None, "advocacy": Scale(0, 10)}
    cuts = {
        "purchase": np.array([-2.5, -1.5, -0.3, 1.0]),
        "advocacy": np.log(np.cumsum(NPS)[:-1] / (1 - np.cumsum(NPS)[:-1])),
    }
    shift = {"purchase": (0.0, 0.5), "advocacy": (0.0, 0.6)}  # B rates higher, strongly at advocacy
    rng = np.random.default_rng(17)
    cells, truth = {}, {}
    for i, stage in enumerate(stages):
        cells[stage] = {}
        for j, variant in enumerate(("A", "B")):
            converted = int(rng.binomial(4000, expit(-0.5 - i + 0.05 * j)))
            ratings: tuple[int, ...] = ()
            if scales[stage] is not None:
                probs = np.diff(np.concatenate([[0.0], expit(cuts[stage] - shift[stage][j]), [1.0]]))
                ratings = tuple(int(x) for x in rng.multinomial(1500, probs))
                truth[stage, variant] = probs @ np.arange(scales[stage].min, scales[stage].max + 1)
            cells[stage][variant] = CellStats(4000, converted, ratings)
    stats = ExperimentStats(stages, "purchase", ("A", "B"), "A", (0.5, 0.5), Scale(1, 5), cells, stage_scales=scales)

    kept = {}
    sample = hierarchical.sample

    def keep(model, **kwargs):
        kept["idata"], diagnostics = sample(model, **kwargs)
        return kept["idata"], diagnostics

    monkeypatch.setattr(hierarchical, "sample", keep)
    result = hierarchical.fit_full_model(stats, draws=1000, tune=500, chains=4, seed=5)
    assert result.diagnostics.r_hat_max < 1.01 and result.diagnostics.divergences == 0, result.diagnostics
    assert [m.metric for m in result.stage("retention").metrics] == ["conversion"]
    assert result.stage("advocacy").has("nps") and not result.stage("purchase").has("nps")

    # The shift itself (log-odds of rating higher), where the truth is known exactly.
    posterior = kept["idata"].posterior
    assert list(posterior["shift"].coords["rated_stage"].values) == ["purchase", "advocacy"]
    for stage in ("purchase", "advocacy"):
        target = posterior["shift"].sel(rated_stage=stage, variant="B")
        low, high = az.hdi(target, hdi_prob=0.99)["shift"].values
        assert low <= shift[stage][1] <= high, (stage, low, high)
    low, high = az.hdi(posterior["shift"].sel(rated_stage="advocacy", variant="B"), hdi_prob=0.99)["shift"].values
    assert low > 0.3  # strong, and told apart from zero

    # The same effect on the 0-10 scale's mean rating, as the report shows it.
    c = result.stage("advocacy").metric("mean_rating").comparison("B")
    true_difference = truth["advocacy", "B"] - truth["advocacy", "A"]
    assert true_difference > 0.4
    assert c.absolute_difference.low <= true_difference <= c.absolute_difference.high
    assert c.p_better > 0.999 and c.absolute_difference.low > 0
