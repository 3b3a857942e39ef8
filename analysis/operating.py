"""Operating characteristics of the decision rule, by simulation: how often ``ship``
or ``harmful`` is ever called over daily looks, and when.

Each simulated experiment draws its daily sufficient statistics directly (binomial
conversions, multinomial rating histograms per arm per day), sums them day by day,
and at every look applies the same functions ``analyze`` decides with:
``analysis.sequential`` for the anytime-valid bounds and ``sequential.decisions`` for
the rule, vectorised over thousands of experiments and all looks at once.

The Bayesian half of the rule needs P(better) and the expected relative loss. For
conversion both are computed as ``analyze`` does (P(better) by the exact Beta
quadrature, the relative loss from posterior draws), only at the looks where the
anytime-valid bound has crossed (elsewhere the rule cannot ship or call harmful
anyway), first such look first. For the mean rating they are taken as met, so the simulated frequencies of
``ship``/``harmful`` are upper bounds of the rule's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as scipy_stats

from . import exact
from . import sequential as seq
from .types import DecisionRule, Prior

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Calls:
    """The first look (1-based day) at which each simulated experiment called ``ship``
    and ``harmful`` for each treatment, 0 when never: (simulations, treatments)."""

    ship_day: IntArray
    harm_day: IntArray

    @property
    def simulations(self) -> int:
        return int(self.ship_day.shape[0])

    def ever_ship(self, treatment: int | None = None) -> float:
        """Share of experiments in which (any, or the given) treatment was ever shipped."""
        days = self.ship_day if treatment is None else self.ship_day[:, [treatment]]
        return float((days > 0).any(axis=1).mean())

    def ever_harmful(self, treatment: int | None = None) -> float:
        days = self.harm_day if treatment is None else self.harm_day[:, [treatment]]
        return float((days > 0).any(axis=1).mean())

    def ship_by(self, day: int, treatment: int = 0) -> float:
        d = self.ship_day[:, treatment]
        return float(((d > 0) & (d <= day)).mean())

    def median_ship_day(self, treatment: int = 0) -> float:
        """Median first ship day (the lower middle order statistic); infinite when
        half the experiments never ship."""
        d = np.sort(np.where(self.ship_day[:, treatment] > 0, self.ship_day[:, treatment], np.iinfo(np.int64).max))
        value = d[max((d.size + 1) // 2 - 1, 0)]
        return math.inf if value == np.iinfo(np.int64).max else float(value)


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a simulated frequency (its Monte Carlo interval)."""
    a = 1 - level
    low = scipy_stats.beta.ppf(a / 2, successes, trials - successes + 1) if successes > 0 else 0.0
    high = scipy_stats.beta.ppf(1 - a / 2, successes + 1, trials - successes) if successes < trials else 1.0
    return float(low), float(high)


def _first(hit: npt.NDArray[np.bool_]) -> IntArray:
    """First True along the look axis (1), as a 1-based day, 0 if none."""
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0).astype(np.int64)


def simulate_conversion(
    rng: np.random.Generator,
    *,
    baseline: float,
    lifts: tuple[float, ...],
    per_day: int,
    days: int,
    simulations: int,
    rule: DecisionRule = DecisionRule(),
    design: seq.SequentialDesign | None = seq.SequentialDesign(),
    prior: Prior = Prior(),
    loss_draws: int = 2000,
) -> Calls:
    """Experiments with a control at ``baseline`` and one treatment per relative lift,
    ``per_day`` customers per arm per day, a look every day for ``days`` days.
    ``design`` None: the fixed-horizon Bayesian rule alone (``analyze(...,
    sequential=None)``), to measure what peeking does to it."""
    rates = baseline * (1 + np.array((0.0, *lifts)))
    converted = rng.binomial(per_day, rates, size=(simulations, days, rates.size)).cumsum(axis=1)
    exposed = per_day * np.arange(1, days + 1)[None, :]
    treatments = len(lifts)
    alpha_ship = seq.split(1 - rule.ship_probability, treatments)
    alpha_harm = seq.split(rule.harm_probability, treatments)
    ship_days, harm_days = [], []
    xc = converted[..., 0]
    n = np.broadcast_to(exposed, xc.shape)
    for k in range(1, treatments + 1):
        xt = converted[..., k]
        estimate, variance = seq.conversion_effect(exposed, xt, exposed, xc)
        if design is not None:
            b = seq.bounds(estimate, variance, design.conversion_mixture_sd, alpha_ship, alpha_harm)
            sides = ((1, b.low > 0), (2, b.high < 0))
        else:
            sides = ((1, np.ones(xt.shape, dtype=bool)), (2, np.ones(xt.shape, dtype=bool)))
        days_found = []
        for code_wanted, candidate in sides:
            candidate = candidate & (n >= rule.min_exposed)
            found = np.zeros(simulations, dtype=np.int64)
            # Walk each experiment's candidate looks in order until the whole rule
            # holds: usually the first one (the Bayesian conditions are met well
            # before the anytime-valid bound crosses).
            while True:
                open_ = (found == 0) & candidate.any(axis=1)
                if not open_.any():
                    break
                rows = np.flatnonzero(open_)
                cols = candidate[rows].argmax(axis=1)
                nn = n[rows, cols].astype(float)
                at, bt = prior.conversion_alpha + xt[rows, cols], prior.conversion_beta + nn - xt[rows, cols]
                ac, bc = prior.conversion_alpha + xc[rows, cols], prior.conversion_beta + nn - xc[rows, cols]
                p_better = exact.beta_p_greater(at, bt, ac, bc)
                loss = np.full(rows.size, np.nan)
                if code_wanted == 1:
                    need = p_better >= rule.ship_probability
                    loss[need] = _relative_loss(rng, at[need], bt[need], ac[need], bc[need], loss_draws)
                code = seq.decisions(
                    smallest_n=nn,
                    min_exposed=rule.min_exposed,
                    p_better=p_better,
                    ship_probability=rule.ship_probability,
                    harm_probability=rule.harm_probability,
                    loss_relative=loss,
                    max_expected_loss=rule.max_expected_loss,
                    low=b.low[rows, cols] if design is not None else None,
                    high=b.high[rows, cols] if design is not None else None,
                )
                hit = code == code_wanted
                found[rows[hit]] = cols[hit] + 1
                candidate[rows[~hit], cols[~hit]] = False
            days_found.append(found)
        ship_days.append(days_found[0])
        harm_days.append(days_found[1])
    return Calls(np.stack(ship_days, axis=1), np.stack(harm_days, axis=1))


def _relative_loss(
    rng: np.random.Generator, at: FloatArray, bt: FloatArray, ac: FloatArray, bc: FloatArray, draws: int
) -> FloatArray:
    """E[max(1 - treatment / control, 0)] from Beta posterior draws, as ``analyze``."""
    out = np.empty(at.size)
    chunk = max(1, 2_000_000 // draws)
    for s in range(0, at.size, chunk):
        sl = slice(s, s + chunk)
        t = rng.beta(at[sl, None], bt[sl, None], size=(at[sl].size, draws))
        c = rng.beta(ac[sl, None], bc[sl, None], size=(at[sl].size, draws))
        out[sl] = np.maximum(1 - t / c, 0).mean(axis=1)
    return out


def shifted(probs: FloatArray, values: FloatArray, relative: float) -> FloatArray:
    """A rating distribution whose mean is ``(1 + relative)`` times that of ``probs``:
    mass moved to the top category (better) or the bottom one (worse)."""
    p = np.asarray(probs, dtype=float)
    mean = p @ values
    target = mean * (1 + relative)
    end = values[-1] if relative > 0 else values[0]
    w = (target - mean) / (end - mean)
    out: FloatArray = (1 - w) * p
    out[-1 if relative > 0 else 0] += w
    return out


def simulate_rating(
    rng: np.random.Generator,
    *,
    probs: FloatArray,
    values: FloatArray,
    lifts: tuple[float, ...],
    per_day: int,
    days: int,
    simulations: int,
    rule: DecisionRule = DecisionRule(),
    design: seq.SequentialDesign = seq.SequentialDesign(),
) -> Calls:
    """Experiments on the mean rating: the control rates with ``probs`` over
    ``values``, each treatment's mean is ``(1 + lift)`` times it (``shifted``);
    ``per_day`` ratings per arm per day. The Bayesian conditions are taken as met."""
    values = np.asarray(values, dtype=float)
    arms = [np.asarray(probs, dtype=float)] + [shifted(probs, values, lift) for lift in lifts]
    counts = [rng.multinomial(per_day, p, size=(simulations, days)).cumsum(axis=1) for p in arms]
    n = per_day * np.arange(1, days + 1)[None, :]
    treatments = len(lifts)
    alpha_ship = seq.split(1 - rule.ship_probability, treatments)
    alpha_harm = seq.split(rule.harm_probability, treatments)
    tau = design.rating_tau(float(values[-1] - values[0]))
    ship_days, harm_days = [], []
    for k in range(1, treatments + 1):
        estimate, variance = seq.mean_effect(counts[k], counts[0], values)
        b = seq.bounds(estimate, variance, tau, alpha_ship, alpha_harm)
        p_met = np.where(b.low > 0, 1.0, np.where(b.high < 0, 0.0, 0.5))
        code = seq.decisions(
            smallest_n=np.broadcast_to(n, estimate.shape),
            min_exposed=rule.min_exposed,
            p_better=p_met,
            ship_probability=rule.ship_probability,
            harm_probability=rule.harm_probability,
            loss_relative=np.zeros(estimate.shape),
            max_expected_loss=rule.max_expected_loss,
            low=b.low,
            high=b.high,
        )
        ship_days.append(_first(code == 1))
        harm_days.append(_first(code == 2))
    return Calls(np.stack(ship_days, axis=1), np.stack(harm_days, axis=1))
