"""Peeking-safe decisions: one-sided normal-mixture confidence sequences.

The Bayesian summaries (P(better), expected loss, credible intervals) answer "what do
we believe now", but a rule "ship once P(better) >= 0.95" looked at every day ships an
A/A test far more often than 5% of the time: every look is another chance for noise to
cross a fixed threshold. The decisions ``ship`` and ``harmful`` therefore also need an
*anytime-valid* bound on the treatment effect, one whose error guarantee holds
simultaneously over all looks, however many and whenever taken.

Method (the mixture sequential probability ratio test, mSPRT). The effect estimate
``d`` with its plug-in variance ``V`` (from the summable counts) is treated as
``d ~ N(theta, V)``, the usual large-sample approximation. For a hypothesised effect
``theta0`` the likelihood ratio of ``theta0 + delta`` against ``theta0``, mixed over
``delta`` with the half-normal density ``2 N(0, tau^2)`` on ``delta > 0``, is

    L+ = 2 sqrt(V / (V + tau^2)) exp(u^2 / 2) Phi(u),  u = (d - theta0) tau / sqrt(V (V + tau^2)),

a nonnegative martingale under ``theta0`` (in the Gaussian limit), so by Ville's
inequality P(L+ ever reaches 1/alpha) <= alpha. ``L+`` is exactly the Bayes factor of
"the effect exceeds theta0 by a N+(0, tau^2) amount" against "the effect is theta0", so
the evidence is Bayesian in form while its error rate is frequentist and holds at any
stopping time. Inverting it in ``theta0`` gives the lower confidence sequence
``d - radius(V, tau, alpha)``: wrong (above the true effect) at some look with
probability <= alpha. The upper bound is the mirror image. ``ship`` needs the lower
bound above 0, ``harmful`` the upper bound below 0, so a treatment that is not better
is ever called ``ship`` with probability at most alpha, whatever the number of looks.

References: H. Robbins (1970) "Statistical methods related to the law of the iterated
logarithm"; R. Johari, P. Koomen, L. Pekelis, D. Walsh (2017, Operations Research 2022)
"Always valid inference: continuous monitoring of A/B tests" (the mSPRT with a normal
mixture, as used by Optimizely); S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon
(2021, Annals of Statistics) "Time-uniform, nonparametric, nonasymptotic confidence
sequences" (the one-sided normal mixture boundary, their Proposition 6); I.
Waudby-Smith, D. Arbour, R. Sinha, E. H. Kennedy, A. Ramdas (2024, Annals of
Statistics) "Time-uniform central limit theory and asymptotic confidence sequences"
(validity with a plug-in variance).

Scales. Conversion: the log relative risk ``log(p_t / p_c)`` with the Agresti-Caffo
adjustment (one success and one failure added to each arm, i.e. the posterior mean
under the uniform prior), so no cell is ever log(0) and small counts are not
over-confident; its bounds are reported as a relative lift ``exp(.) - 1``. Mean rating:
the difference in means, with each arm's variance from its histogram plus one
pseudo-rating per category (never zero, conservative when ratings are few).

Mixing scale ``tau`` (``SequentialDesign``): the boundary is narrowest when the
variance of the estimate is about tau^2 / 7 (for alpha = 0.05), i.e. around the sample
size at which an effect of about ``tau`` is detected. A log relative lift of 0.1
(about +10%) puts that point, at a 10% baseline and 400 customers per arm per day, at
about four weeks, where a +15% lift must be detected; larger effects are found earlier
at a small cost (the boundary grows like log of the sample size), smaller ones later.
For the mean rating tau is 5% of the scale's width (0.2 points on 1-5, 0.5 on 0-10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .exceptions import AnalysisInputError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SequentialDesign:
    """The mixing scales of the peeking-safe test (see the module docstring).

    ``conversion_mixture_sd`` is on the log relative lift (0.1 ~ +10%);
    ``rating_mixture_sd`` is a share of the rating scale's width (max - min).
    """

    conversion_mixture_sd: float = 0.1
    rating_mixture_sd: float = 0.05

    def __post_init__(self) -> None:
        for name in ("conversion_mixture_sd", "rating_mixture_sd"):
            if not 0 < getattr(self, name) < 10:
                raise AnalysisInputError(f"{name} must be positive (and below 10)")

    def rating_tau(self, scale_width: float) -> float:
        return self.rating_mixture_sd * scale_width


def _array(x: Any) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def log_evidence(deviation: Any, variance: Any, tau: Any) -> FloatArray:
    """log of the one-sided mixture likelihood ratio ``L+`` for an effect above
    ``theta0``, where ``deviation = d - theta0`` (closed form, see the module doc)."""
    from scipy import special  # here, not at the top: keeps scipy out of the app's start-up

    d, v, t2 = _array(deviation), _array(variance), _array(tau) ** 2
    u = d * np.sqrt(t2 / (v * (v + t2)))
    out: FloatArray = np.log(2.0) + 0.5 * np.log(v / (v + t2)) + u**2 / 2 + special.log_ndtr(u)
    return out


def radius(variance: Any, tau: Any, alpha: Any) -> FloatArray:
    """How far below the estimate the one-sided anytime-valid lower bound at level
    ``alpha`` lies: the deviation at which ``L+`` reaches ``1 / alpha``.

    With ``r = tau^2 / V`` and ``u`` the root of ``u^2 / 2 + log Phi(u) = log(1 /
    (2 alpha)) + log(1 + r) / 2`` (increasing in u, so one root; Newton from
    ``sqrt(2 c)``), the radius is ``u sqrt(V (1 + V / tau^2))``. Infinite where the
    variance is infinite.
    """
    from scipy import special  # here, not at the top: keeps scipy out of the app's start-up

    v, t2, a = np.broadcast_arrays(_array(variance), _array(tau) ** 2, _array(alpha))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = -np.log(2 * a) + 0.5 * np.log1p(t2 / v)
        u = np.sqrt(np.maximum(2 * c, 1.0))
        for _ in range(30):
            h = u**2 / 2 + special.log_ndtr(u) - c
            slope = u + np.exp(-(u**2) / 2 - 0.5 * np.log(2 * np.pi) - special.log_ndtr(u))
            step = h / slope
            u = u - step
            if np.all(np.abs(step[np.isfinite(step)]) < 1e-12):
                break
        out = u * np.sqrt(v * (1 + v / t2))
    return np.where(np.isfinite(v), out, np.inf)


def conversion_effect(
    exposed_t: Any, converted_t: Any, exposed_c: Any, converted_c: Any
) -> tuple[FloatArray, FloatArray]:
    """Log relative risk of treatment over control and its delta-method variance,
    with the Agresti-Caffo adjustment ``(x + 1) / (n + 2)``; arrays broadcast."""
    nt, nc = _array(exposed_t) + 2, _array(exposed_c) + 2
    pt, pc = (_array(converted_t) + 1) / nt, (_array(converted_c) + 1) / nc
    estimate = np.log(pt) - np.log(pc)
    variance = (1 - pt) / (nt * pt) + (1 - pc) / (nc * pc)
    return estimate, variance


def mean_effect(histogram_t: Any, histogram_c: Any, values: Any) -> tuple[FloatArray, FloatArray]:
    """Difference in mean rating (treatment - control) from rating histograms (last
    axis: categories) and its variance: each arm's sample mean, and its variance
    from the histogram with one pseudo-rating per category added. NaN / infinite
    where an arm has no ratings."""
    w = _array(values)
    ht, hc = _array(histogram_t), _array(histogram_c)
    means, variances = [], []
    for h in (ht, hc):
        n = h.sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = (h @ w) / n
            padded = h + 1.0
            m = padded @ w / padded.sum(-1)
            spread = padded @ (w**2) / padded.sum(-1) - m**2
            variance = np.where(n > 0, spread / n, np.inf)
        means.append(mean)
        variances.append(variance)
    return means[0] - means[1], variances[0] + variances[1]


@dataclass(frozen=True)
class Bounds:
    """Anytime-valid bounds of an effect (on the test's own scale, e.g. the log
    relative risk): ``low`` at level ``alpha_low``, ``high`` at ``alpha_high``."""

    estimate: FloatArray
    low: FloatArray
    high: FloatArray


def bounds(estimate: Any, variance: Any, tau: float, alpha_low: Any, alpha_high: Any) -> Bounds:
    """The lower bound (one-sided, level ``alpha_low``) and upper bound (level
    ``alpha_high``); together a two-sided sequence of level ``alpha_low + alpha_high``."""
    d, v = _array(estimate), _array(variance)
    return Bounds(d, d - radius(v, tau, alpha_low), d + radius(v, tau, alpha_high))


DECISION_CODES = ("not_enough_data", "ship", "harmful", "keep_running")


def decisions(
    *,
    smallest_n: Any,
    min_exposed: int,
    p_better: Any,
    ship_probability: float,
    harm_probability: float,
    loss_relative: Any,
    max_expected_loss: float,
    low: Any | None,
    high: Any | None,
) -> npt.NDArray[np.int64]:
    """The decision rule, vectorised; an index into ``DECISION_CODES``.

    ``not_enough_data`` below ``min_exposed``; ``ship`` when P(better) reaches
    ``ship_probability``, the relative expected loss is below ``max_expected_loss`` and
    the anytime-valid lower bound is above 0; ``harmful`` when P(better) is at most
    ``harm_probability`` and the anytime-valid upper bound is below 0; otherwise
    ``keep_running``. ``low``/``high`` None: the fixed-horizon Bayesian rule alone.
    NaN ``loss_relative`` counts as not safe.
    """
    n = _array(smallest_n)
    p = _array(p_better)
    loss = _array(loss_relative)
    with np.errstate(invalid="ignore"):
        ship = (p >= ship_probability) & (loss < max_expected_loss)
        harm = p <= harm_probability
        if low is not None:
            ship &= _array(low) > 0
        if high is not None:
            harm &= _array(high) < 0
    out = np.where(ship, 1, np.where(harm, 2, 3))
    return np.where(n < min_exposed, 0, out).astype(np.int64)


def split(budget: float, ways: int) -> float:
    """Bonferroni: each of ``ways`` sequences gets ``budget / ways``; the chance that
    any of them is ever wrong is at most ``budget`` (a union bound, valid for
    confidence sequences as for fixed tests)."""
    return budget / max(ways, 1)
