"""P(better) without Monte Carlo where the posterior allows it, so the headline
probability carries no simulation noise however few draws the intervals use.

Every metric is a linear functional ``w . theta`` of a Dirichlet posterior: conversion
puts ``(0, 1)`` on (not converted, converted), the top-box share puts 1 on the top
ratings, the mean rating puts the scale values on the ratings, NPS puts -100/0/100 on
detractors/passives/promoters.

- Two distinct weights (conversion, top-box share): merging equal-weight categories
  (the Dirichlet aggregation property) leaves a Beta posterior, and P(X > Y) for two
  Betas is one smooth integral: the mean, over Gauss-Legendre quantile levels of the
  narrower arm, of the wider arm's CDF. Error against Evan Miller's closed form below
  2e-5 (see the tests).
- Three or more (mean rating, NPS): an Edgeworth expansion of the difference to fourth
  order, with the functional's exact cumulants (Dirichlet moments, computed on
  centred weights so nothing cancels). Within 1e-3 of long simulations (3M draws,
  80 random histograms of 10 to 300 ratings) while each arm's posterior skewness is
  at most ``EDGEWORTH_MAX_SKEW``; beyond it (a handful of ratings, or a histogram
  piled against the end of the scale) this gives NaN and the caller simulates.
  Deterministic quadratures tried instead (saddle-point Laplace inversion,
  stick-breaking CDF tables) lost accuracy precisely on those piled histograms.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.polynomial.legendre import leggauss

_x, _w = leggauss(64)
_NODES, _WEIGHTS = (_x + 1) / 2, _w / 2


def collapse(weights: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge categories of equal weight: ``(distinct ascending weights, summed alpha)``.

    ``alpha`` may carry leading batch axes; the category axis is the last.
    """
    distinct, index = np.unique(np.asarray(weights, dtype=float), return_inverse=True)
    summed = np.zeros((*alpha.shape[:-1], distinct.size))
    for k, j in enumerate(index):
        summed[..., j] += alpha[..., k]
    return distinct, summed


EDGEWORTH_MAX_SKEW = 0.5


def p_better(weights: np.ndarray, alpha: np.ndarray, control: int) -> np.ndarray:
    """P(w . theta_v > w . theta_control) for every row and variant; NaN where it
    cannot be computed without simulation (see the module docstring).

    ``alpha`` is (rows, variants, categories) of independent Dirichlet posteriors; the
    result is (rows, variants), 0.5 in the control's column.
    """
    values, merged = collapse(weights, np.asarray(alpha, dtype=float))
    rows, variants = merged.shape[:2]
    if values.size == 1:
        out = np.full((rows, variants), 0.5)
    elif values.size == 2:
        hit, miss = merged[..., 1], merged[..., 0]
        out = beta_p_greater(hit, miss, hit[:, [control]], miss[:, [control]])
    else:
        out = _edgeworth_p_greater(values, merged, control)
    out[:, control] = 0.5
    return out


def functional_cumulants(weights: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean and second to fourth cumulants of ``w . theta`` for ``theta ~ Dir(alpha)``.

    With ``theta = G / S`` for independent ``G_k ~ Gamma(alpha_k)``, ``w . theta`` is
    independent of ``S`` (Lukacs), so ``E[(w . theta - mu)^j] = E[X^j] / S^(j)``
    (rising factorial of alpha_0) where ``X = sum (w_k - mu) G_k`` has cumulants
    ``(j - 1)! sum alpha_k (w_k - mu)^j``.
    """
    total = alpha.sum(-1)
    mean = alpha @ weights / total
    d = weights - mean[..., None]
    a2, a3, a4 = ((alpha * d**j).sum(-1) for j in (2, 3, 4))
    rising2 = total * (total + 1)
    rising3 = rising2 * (total + 2)
    rising4 = rising3 * (total + 3)
    m2 = a2 / rising2
    m3 = 2 * a3 / rising3
    m4 = (6 * a4 + 3 * a2**2) / rising4
    return mean, m2, m3, m4 - 3 * m2**2


def _edgeworth_p_greater(values: np.ndarray, alpha: np.ndarray, control: int) -> np.ndarray:
    from scipy import special  # here, not at the top: keeps scipy out of the app's start-up

    mean, k2, k3, k4 = functional_cumulants(values, alpha)
    skew = np.abs(k3) / np.maximum(k2, 1e-300) ** 1.5
    c = (slice(None), [control])
    d1, d2, d3, d4 = mean - mean[c], k2 + k2[c], k3 - k3[c], k4 + k4[c]
    sd = np.sqrt(d2)
    g1, g2 = d3 / sd**3, d4 / d2**2
    z = -d1 / sd  # P(D > 0) = 1 - F_D(0)
    he2, he3, he5 = z**2 - 1, z**3 - 3 * z, z**5 - 10 * z**3 + 15 * z
    density = np.exp(-(z**2) / 2) / np.sqrt(2 * np.pi)
    below = special.ndtr(z) - density * (g1 / 6 * he2 + g2 / 24 * he3 + g1**2 / 72 * he5)
    out = np.clip(1.0 - below, 0.0, 1.0)
    trusted = (skew <= EDGEWORTH_MAX_SKEW) & (skew[c] <= EDGEWORTH_MAX_SKEW)
    return np.where(trusted, out, np.nan)


def beta_p_greater(
    a1: npt.ArrayLike, b1: npt.ArrayLike, a2: npt.ArrayLike, b2: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """P(X1 > X2) for independent X_i ~ Beta(a_i, b_i), arrays broadcasting.

    Integrating over the narrower arm keeps the integrand (the other arm's CDF) smooth
    on the nodes; in quantile space the narrower arm's density never has to be
    evaluated, so priors below 1 (densities infinite at 0 or 1) are no problem.
    """
    from scipy import special  # here, not at the top: keeps scipy out of the app's start-up

    x1, y1, x2, y2 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (a1, b1, a2, b2)))
    first_narrow = _beta_var(x1, y1) <= _beta_var(x2, y2)
    an, bn = np.where(first_narrow, x1, x2), np.where(first_narrow, y1, y2)
    aw, bw = np.where(first_narrow, x2, x1), np.where(first_narrow, y2, y1)
    x = special.betaincinv(an[..., None], bn[..., None], _NODES)
    below: npt.NDArray[np.float64] = special.betainc(aw[..., None], bw[..., None], x) @ _WEIGHTS  # P(wide < narrow)
    return np.clip(np.where(first_narrow, below, 1.0 - below), 0.0, 1.0)


def _beta_var(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return a * b / ((a + b) ** 2 * (a + b + 1))
