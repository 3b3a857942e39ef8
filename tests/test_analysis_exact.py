"""The numbers against closed forms: P(better) against Evan Miller's exact sum,
Edgeworth P(better) against long simulations, intervals against scipy's Beta
quantiles, the Dirichlet mean rating against its analytic mean and variance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, special, stats

from analysis import CellStats, ExperimentStats, Prior, Scale, analyze, exact
from analysis.conjugate import _Dirichlet


def miller_p_b_beats_a(a_a: int, b_a: int, a_b: int, b_b: int) -> float:
    """Evan Miller's closed form for P(p_B > p_A), Beta posteriors with integer a_B."""
    i = np.arange(a_b)
    terms = special.betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - special.betaln(1 + i, b_b) - special.betaln(a_a, b_a)
    return float(np.exp(terms).sum())


# (converted A, exposed A, converted B, exposed B): small counts, zeros, all, large.
MILLER_TABLE = [
    (0, 0, 0, 0),
    (0, 1, 1, 1),
    (0, 10, 1, 10),
    (1, 3, 2, 3),
    (3, 7, 0, 4),
    (0, 1000, 0, 1000),
    (1000, 1000, 999, 1000),
    (10, 100, 15, 100),
    (2, 40, 9, 45),
    (100, 1000, 120, 1000),
    (120, 1000, 100, 1000),
    (5000, 50_000, 5200, 50_000),
    (50, 20_000, 70, 21_000),
    (7, 12, 400, 900),
    (30_000, 100_000, 30_150, 100_000),
]


@pytest.mark.parametrize("ca, na, cb, nb", MILLER_TABLE)
def test_beta_p_better_matches_evan_millers_closed_form(ca, na, cb, nb):
    expected = miller_p_b_beats_a(1 + ca, 1 + na - ca, 1 + cb, 1 + nb - cb)
    got = exact.beta_p_greater(1 + cb, 1 + nb - cb, 1 + ca, 1 + na - ca)
    assert abs(got - expected) < 1e-4


def test_analyze_reports_the_closed_form_p_better_for_conversion():
    table = MILLER_TABLE[7:12]
    cells = {
        f"s{i}": {
            "A": CellStats(na, ca, (0,) * 5),
            "B": CellStats(nb, cb, (0,) * 5),
        }
        for i, (ca, na, cb, nb) in enumerate(table)
    }
    stages = tuple(cells)
    result = analyze(ExperimentStats(stages, stages[0], ("A", "B"), "A", (0.5, 0.5), Scale(), cells))
    for i, (ca, na, cb, nb) in enumerate(table):
        comparison = result.stage(f"s{i}").metric("conversion").comparison("B")
        assert comparison.p_better == pytest.approx(
            miller_p_b_beats_a(1 + ca, 1 + na - ca, 1 + cb, 1 + nb - cb), abs=1e-4
        )
        assert comparison.p_better_error == 0.0


@pytest.mark.parametrize("a1, b1, a2, b2", [(0.5, 10.5, 1.5, 9.5), (0.5, 0.5, 0.5, 3.5), (2.5, 300.5, 0.5, 250.5)])
def test_beta_p_better_with_fractional_priors_matches_numerical_integration(a1, b1, a2, b2):
    # Priors below 1 make the densities infinite at 0: integrate on the CDF scale.
    reference, _ = integrate.quad(
        lambda u: special.betainc(a2, b2, special.betaincinv(a1, b1, u)), 0, 1, epsabs=1e-12, limit=200
    )
    assert exact.beta_p_greater(a1, b1, a2, b2) == pytest.approx(reference, abs=1e-4)


RATINGS = np.arange(1, 6, dtype=float)
EDGEWORTH_CASES = [  # (histogram A, histogram B) on 1-5, prior 1: skewness at most 0.25
    ((40, 25, 60, 150, 220), (35, 30, 50, 160, 240)),
    ((4, 3, 10, 30, 50), (2, 5, 8, 28, 60)),
    ((300, 200, 900, 3000, 5000), (320, 180, 880, 2900, 5200)),
    ((20, 20, 20, 20, 20), (18, 21, 20, 22, 23)),
]


@pytest.mark.parametrize("hist_a, hist_b", EDGEWORTH_CASES)
def test_mean_rating_p_better_matches_a_long_simulation(hist_a, hist_b):
    alpha = np.array([[np.add(hist_a, 1.0), np.add(hist_b, 1.0)]])
    p = exact.p_better(RATINGS, alpha, control=0)[0, 1]
    assert np.isfinite(p)
    rng = np.random.default_rng(11)
    n = 1_000_000
    simulated = (rng.dirichlet(alpha[0, 1], n) @ RATINGS > rng.dirichlet(alpha[0, 0], n) @ RATINGS).mean()
    assert abs(p - simulated) < 0.002  # 4 simulation standard errors


def test_piled_histograms_are_left_to_simulation_and_meet_the_error_bound():
    # Nearly every rating at the top: the posterior is too skewed for Edgeworth.
    alpha = np.array([[[1, 1, 1, 1, 3001.0], [2, 1, 1, 1, 2991.0]]])
    assert np.isnan(exact.p_better(RATINGS, alpha, control=0)[0, 1])
    cells = {"s": {"A": CellStats(5000, 3000, (0, 0, 0, 0, 3000)), "B": CellStats(5000, 3000, (1, 0, 0, 0, 2990))}}
    result = analyze(ExperimentStats(("s",), "s", ("A", "B"), "A", (0.5, 0.5), Scale(), cells))
    comparison = result.stage("s").metric("mean_rating").comparison("B")
    assert 0 < comparison.p_better_error <= 0.002
    rng = np.random.default_rng(5)
    n = 2_000_000
    reference = (rng.dirichlet(alpha[0, 1], n) @ RATINGS > rng.dirichlet(alpha[0, 0], n) @ RATINGS).mean()
    assert abs(comparison.p_better - reference) < 0.007  # 3 of its standard errors and the reference's


def test_single_arm_conversion_intervals_match_scipy_beta_quantiles():
    counts = [(0, 50), (3, 40), (120, 1000), (990, 1000), (4000, 90_000)]
    cells = {f"s{i}": {"A": CellStats(n, c, (0,) * 5)} for i, (c, n) in enumerate(counts)}
    stages = tuple(cells)
    prior = Prior(conversion_alpha=0.5, conversion_beta=0.5)
    result = analyze(
        ExperimentStats(stages, stages[0], ("A",), "A", (1.0,), Scale(), cells), prior=prior, draws=400_000
    )
    for i, (c, n) in enumerate(counts):
        posterior = stats.beta(0.5 + c, 0.5 + n - c)
        arm = result.stage(f"s{i}").metric("conversion").arm("A")
        tolerance = 0.02 * posterior.std()  # about 4 Monte Carlo standard errors at 400k draws
        assert arm.posterior.low == pytest.approx(posterior.ppf(0.025), abs=tolerance)
        assert arm.posterior.high == pytest.approx(posterior.ppf(0.975), abs=tolerance)
        assert arm.posterior.mean == pytest.approx(posterior.mean(), abs=tolerance)
        assert arm.conjugate_params == pytest.approx((0.5 + c, 0.5 + n - c))


def dirichlet_mean_and_variance(alpha: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Textbook moments of sum_k v_k theta_k: E[theta] = a / a0 and
    Cov = (diag(E) - E E^T) / (a0 + 1)."""
    a0 = alpha.sum()
    m = alpha / a0
    cov = (np.diag(m) - np.outer(m, m)) / (a0 + 1)
    return float(values @ m), float(values @ cov @ values)


@pytest.mark.parametrize("histogram", [(0, 0, 0, 0, 0), (1, 0, 2, 5, 9), (300, 200, 900, 3000, 5000)])
def test_dirichlet_mean_rating_has_the_analytic_mean_and_variance(histogram):
    alpha = np.add(histogram, 1.0)
    mean, variance = dirichlet_mean_and_variance(alpha, RATINGS)
    m, k2, _, _ = exact.functional_cumulants(RATINGS, alpha)
    assert m == pytest.approx(mean, rel=1e-12)
    assert k2 == pytest.approx(variance, rel=1e-10)
    draws = _Dirichlet(np.random.default_rng(3), alpha[None, :], 400_000) @ RATINGS
    assert draws.mean() == pytest.approx(mean, abs=5 * np.sqrt(variance / 400_000))
    assert draws.var() == pytest.approx(variance, rel=0.02)


def test_dirichlet_third_and_fourth_cumulants_match_simulation():
    alpha = np.array([2.0, 1.0, 3.0, 9.0, 14.0])
    _, _k2, k3, k4 = exact.functional_cumulants(RATINGS, alpha)
    x = np.random.default_rng(9).dirichlet(alpha, 2_000_000) @ RATINGS
    d = x - x.mean()
    assert k3 == pytest.approx((d**3).mean(), rel=0.03)
    assert k4 == pytest.approx((d**4).mean() - 3 * (d**2).mean() ** 2, rel=0.08)


def test_analyze_mean_rating_matches_the_dirichlet_posterior():
    histogram = (3, 1, 6, 20, 30)
    cells = {"s": {"A": CellStats(100, 60, histogram)}}
    result = analyze(ExperimentStats(("s",), "s", ("A",), "A", (1.0,), Scale(), cells), draws=200_000)
    mean, variance = dirichlet_mean_and_variance(np.add(histogram, 1.0), RATINGS)
    arm = result.stage("s").metric("mean_rating").arm("A")
    assert arm.posterior.mean == pytest.approx(mean, abs=5 * np.sqrt(variance / 200_000))
    assert arm.observed == pytest.approx(np.dot(histogram, RATINGS) / 60)
