"""The full model. Fast tests replace NUTS with hand-made draws (summaries, statuses,
diagnostics); slow ones run real NUTS: recovery of known per-stage effects, and
agreement with the conjugate path where there is nothing to pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import CellStats, Diagnostics, ExperimentStats, Scale, analyze, hierarchical, messages

STAGES = ("consideration", "purchase", "retention", "advocacy")
VARIANTS = ("A", "B", "C")
CUTS = np.array([-2.5, -1.5, -0.3, 1.0])


def expit(x):
    return 1 / (1 + np.exp(-x))


def simulate(rng, baseline, effect, shift, exposed, rated, stages=STAGES) -> ExperimentStats:
    """Data from the model's own generative story (logit conversion, ordered-logistic ratings)."""
    cells = {}
    for i, stage in enumerate(stages):
        cells[stage] = {}
        for j, variant in enumerate(VARIANTS):
            converted = rng.binomial(exposed, expit(baseline[i] + effect[i, j]))
            cumulative = np.concatenate([[0.0], expit(CUTS - shift[i, j]), [1.0]])
            ratings = rng.multinomial(rated, np.diff(cumulative))
            cells[stage][variant] = CellStats(exposed, int(converted), tuple(int(r) for r in ratings))
    return ExperimentStats(stages, stages[min(1, len(stages) - 1)], VARIANTS, "A", (1 / 3,) * 3, Scale(1, 5), cells)


def fake_draws(stats: ExperimentStats, chains=2, draws=50, seed=0):
    """Posterior-shaped draws centred on the observed rates, as InferenceData."""
    import arviz as az

    rng = np.random.default_rng(seed)
    exposed = np.array([[stats.cells[s][v].exposed for v in VARIANTS] for s in stats.stages])
    converted = np.array([[stats.cells[s][v].converted for v in VARIANTS] for s in stats.stages])
    ratings = np.array([[stats.cells[s][v].ratings for v in VARIANTS] for s in stats.stages], dtype=float)
    p = rng.beta(converted + 1, exposed - converted + 1, size=(chains, draws, *exposed.shape))
    probs = np.stack([rng.dirichlet(r + 1, size=(chains, draws)) for r in ratings.reshape(-1, 5)], axis=2)
    probs = probs.reshape((chains, draws, *ratings.shape))
    return az.from_dict(
        posterior={"p": p, "rating_probs": probs, "effect_tau": rng.normal(size=(chains, draws, 2))},
        sample_stats={"diverging": np.zeros((chains, draws), dtype=bool)},
    )


@pytest.fixture
def stats():
    rng = np.random.default_rng(1)
    effect = np.array([[0, 0.15, -0.1]] * 4)
    return simulate(rng, np.array([0.0, -1.0, -2.0, -3.0]), effect, np.zeros((4, 3)), 5000, 800)


def test_full_model_summaries_have_the_conjugate_result_types(stats, monkeypatch):
    failed = Diagnostics(1.08, 35.0, 40.0, 3, 50, 2, "pymc", False, 1.0, 2.0)
    monkeypatch.setattr(hierarchical, "sample", lambda model, **kwargs: (fake_draws(stats), failed))
    result = hierarchical.fit_full_model(stats, draws=50, chains=2)
    conjugate = analyze(stats)
    assert result.method == "hierarchical" and result.draws == 100
    assert result.status == messages.DIAGNOSTICS_FAILED
    assert any(n.code == messages.DIAGNOSTICS_FAILED and "1.080" in n.message for n in result.notes)
    assert result.diagnostics == failed

    def shape(r):
        return [(s.stage, [(m.metric, [c.treatment for c in m.comparisons]) for m in s.metrics]) for s in r.stages]

    assert shape(result) == shape(conjugate)
    comparison = result.stage("purchase").metric("conversion").comparison("B")
    assert comparison.p_better_error is None  # MCMC draws: see the diagnostics instead
    assert comparison.relative_lift.mean == pytest.approx(
        conjugate.stage("purchase").metric("conversion").comparison("B").relative_lift.mean, abs=0.05
    )
    assert result.stage("purchase").metric("conversion").arm("A").conjugate_params is None
    json.dumps(result.to_dict(), allow_nan=False)


def test_progress_is_reported_per_iteration_and_chains_any_callback():
    seen, chained = [], []
    callback = hierarchical._progress_callback(
        lambda done, total: seen.append((done, total)), 6, lambda **kw: chained.append(kw)
    )
    for _ in range(7):
        callback(trace=None, draw=None)
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6), (6, 6)]
    assert len(chained) == 7


def test_diagnostics_pass_on_well_mixed_chains_and_fail_otherwise():
    import arviz as az

    rng = np.random.default_rng(3)
    good = az.from_dict(
        posterior={"effect_mu": rng.normal(size=(4, 1000, 2))},
        sample_stats={"diverging": np.zeros((4, 1000), dtype=bool)},
    )
    d = hierarchical.diagnose(good, "pymc", None, None)
    assert d.passed and d.r_hat_max < 1.01 and d.ess_bulk_min > 2000 and d.divergences == 0
    stuck = rng.normal(size=(4, 1000, 2)) + np.array([0, 0, 0, 3.0])[:, None, None]  # one chain elsewhere
    diverging = np.zeros((4, 1000), dtype=bool)
    diverging[0, :5] = True
    bad = hierarchical.diagnose(
        az.from_dict(posterior={"effect_mu": stuck}, sample_stats={"diverging": diverging}), "pymc", None, None
    )
    assert not bad.passed and bad.r_hat_max > 1.1 and bad.divergences == 5
    single = hierarchical.diagnose(
        az.from_dict(posterior={"effect_mu": rng.normal(size=(1, 500, 2))}), "pymc", None, None
    )
    assert single.r_hat_max is None and not single.passed  # one chain cannot show convergence


def test_model_has_pooled_stage_effects_and_an_ordered_logistic_histogram(stats):
    model = hierarchical.build_model(stats)
    names = {rv.name for rv in model.free_RVs}
    assert names == set(hierarchical._FREE)
    unpooled = hierarchical.build_model(stats, pooling=False)
    assert {rv.name for rv in unpooled.free_RVs} == set(hierarchical._UNPOOLED)
    point = model.initial_point()
    assert point["effect_z"].shape == (4, 2) and point["cutpoints_ordered__"].shape == (4, 4)
    probs = model.compile_fn(model["rating_probs"], inputs=model.value_vars, on_unused_input="ignore")(point)
    assert probs.shape == (4, 3, 5) and np.allclose(probs.sum(-1), 1.0)


def test_bad_sampling_settings_raise(stats):
    with pytest.raises(ValueError, match="draws"):
        hierarchical.fit_full_model(stats, draws=5)


@pytest.mark.slow
def test_full_model_recovers_known_per_stage_effects():
    import arviz as az

    rng = np.random.default_rng(7)
    baseline = np.array([0.4, -0.6, -1.8, -2.6])
    effect = np.array([[0, 0.15, -0.10], [0, 0.10, 0.00], [0, 0.20, -0.05], [0, 0.12, -0.08]])
    shift = np.array([[0, 0.20, 0.00], [0, 0.15, -0.10], [0, 0.25, 0.05], [0, 0.20, 0.00]])
    stats = simulate(rng, baseline, effect, shift, 8000, 1500)
    idata, diagnostics = hierarchical.sample(hierarchical.build_model(stats), draws=1000, tune=1000, chains=4, seed=11)
    assert diagnostics.r_hat_max < 1.01 and diagnostics.divergences == 0
    level = (baseline[:, None] + effect).mean(axis=1)  # the model's level: mean log-odds over variants
    for name, truth in (("effect", effect[:, 1:]), ("shift", shift[:, 1:]), ("level", level)):
        target = idata.posterior[name]
        if name != "level":
            target = target.sel(variant=["B", "C"])
        interval = az.hdi(target, hdi_prob=0.94)[name].values
        inside_94 = (interval[..., 0] <= truth) & (truth <= interval[..., 1])
        interval = az.hdi(target, hdi_prob=0.99)[name].values
        inside_99 = (interval[..., 0] <= truth) & (truth <= interval[..., 1])
        # 8 (or 4) intervals at 94% all covering would happen by chance only 61% of the
        # time, so demand what a calibrated fit delivers almost surely.
        assert inside_99.all(), name
        assert inside_94.mean() >= 0.75, name


@pytest.mark.slow
def test_full_model_agrees_with_the_conjugate_path_without_pooling():
    # Large samples and pooling off: both models are the likelihood with weak priors.
    rng = np.random.default_rng(5)
    effect = np.array([[0, 0.02, -0.015], [0, -0.01, 0.02]])
    shift = np.array([[0, 0.04, -0.03], [0, 0.0, 0.03]])
    stats = simulate(rng, np.array([-1.0, -2.0]), effect, shift, 200_000, 20_000, stages=STAGES[:2])
    full = hierarchical.fit_full_model(stats, draws=1000, tune=1000, chains=4, seed=3, pooling=False)
    conjugate = analyze(stats)
    assert full.diagnostics.passed, full.diagnostics
    for stage in STAGES[:2]:
        for treatment in ("B", "C"):
            a = full.stage(stage).metric("conversion").comparison(treatment)
            b = conjugate.stage(stage).metric("conversion").comparison(treatment)
            sd = (b.relative_lift.high - b.relative_lift.low) / 3.92
            # Same likelihood: lift within a tenth of its posterior sd, P(better) within 0.03.
            assert abs(a.relative_lift.mean - b.relative_lift.mean) <= 0.1 * sd, (stage, treatment)
            assert abs(a.relative_lift.high - b.relative_lift.high) <= 0.2 * sd, (stage, treatment)
            assert abs(a.p_better - b.p_better) <= 0.03, (stage, treatment)
            # Ratings: ordered logistic (4 cutpoints shared by the variants) against a
            # free Dirichlet per variant, on data from the former: the two estimators
            # differ by their own noise, so within half a posterior sd.
            a = full.stage(stage).metric("mean_rating").comparison(treatment)
            b = conjugate.stage(stage).metric("mean_rating").comparison(treatment)
            sd = (b.relative_lift.high - b.relative_lift.low) / 3.92
            assert abs(a.relative_lift.mean - b.relative_lift.mean) <= 0.5 * sd, (stage, treatment)
