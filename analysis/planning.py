"""Planning under the peeking-safe rule: how many customers and days until a decision.

Both functions follow the conversion test of ``analysis.sequential`` in its own
Gaussian approximation: the log relative risk estimate after ``n`` customers per arm
is ``S / I`` where ``I = 1 / V`` is the information (``V`` the delta-method variance at
the true rates) and ``S`` a Brownian motion with drift ``theta`` in information time,
so the path between daily looks has independent Gaussian increments. Simulating those
paths (thousands at once, one look per day) and applying the same anytime-valid
boundary (``sequential.radius``) gives the distribution of the first day the bound
crosses 0. The Bayesian conditions of the rule (P(better), expected loss) are not
simulated: where the anytime-valid bound crosses they almost always hold already
(``tests/test_analysis_planning.py`` checks the median against the full rule on
simulated binomial data: within 25%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import sequential as seq
from .exceptions import AnalysisInputError
from .types import DecisionRule, _Serialisable


@dataclass(frozen=True)
class Plan(_Serialisable):
    """When a treatment with the given true lift is expected to be called.

    ``median_days``: median first day of the call (``ship`` for a positive lift,
    ``harmful`` for a negative one), None when fewer than half the experiments decide
    within ``max_days``; ``median_customers_per_arm`` the customers per arm by then;
    ``days_for_power``: the day by which a share ``power`` of experiments has decided
    (None beyond ``max_days``); ``p_decision_by_max_days`` that share at ``max_days``.
    """

    baseline: float
    lift: float
    arms: int
    per_arm_per_day: float
    median_days: int | None
    median_customers_per_arm: int | None
    days_for_power: int | None
    power: float
    p_decision_by_max_days: float
    max_days: int


@dataclass(frozen=True)
class Forecast(_Serialisable):
    """For a running experiment: ``more_days`` is about how many more days until a
    call (the median, assuming ``assumed_lift``, or where that is None the current
    estimate with its uncertainty); None when fewer than half the continuations
    decide within ``horizon_days``. ``p_decision_by_then`` is the chance, given the data
    so far and the current estimate's uncertainty, that ``ship`` or ``harmful`` is
    called within ``more_days`` (within ``horizon_days`` when None); split into
    ``p_ship_by_then`` and ``p_harmful_by_then``. ``decided_now`` when the bound has
    already crossed (then ``more_days`` is 0)."""

    more_days: int | None
    p_decision_by_then: float
    p_ship_by_then: float
    p_harmful_by_then: float
    horizon_days: int
    assumed_lift: float | None
    decided_now: bool


def _day_quantile(first: np.ndarray, q: float) -> int | None:
    """The ``q`` quantile (an order statistic) of first-call days, 0 meaning never:
    None when it falls on a never."""
    never = np.iinfo(np.int64).max
    ordered = np.sort(np.where(first > 0, first, never))
    value = int(ordered[max(math.ceil(q * ordered.size) - 1, 0)])
    return None if value == never else value


def _check_rate(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise AnalysisInputError(f"{name} must be between 0 and 1")


def _first_crossings(
    rng: np.random.Generator,
    theta: np.ndarray,
    s0: np.ndarray,
    info_now: float,
    info: np.ndarray,
    tau: float,
    alpha_ship: float,
    alpha_harm: float,
    can_decide: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """First day (1-based, 0 = never) the lower bound exceeds 0 and the upper bound
    falls below 0, for paths (rows) starting at score ``s0`` with drifts ``theta``,
    information ``info_now`` now and ``info[d]`` after day ``d + 1``."""
    steps = np.diff(info, prepend=info_now)
    increments = rng.standard_normal((theta.size, info.size)) * np.sqrt(steps) + theta[:, None] * steps
    score = s0[:, None] + increments.cumsum(axis=1)
    estimate = score / info
    variance = 1 / info
    ship = (estimate - seq.radius(variance, tau, alpha_ship) > 0) & can_decide
    harm = (estimate + seq.radius(variance, tau, alpha_harm) < 0) & can_decide
    first = [np.where(x.any(axis=1), x.argmax(axis=1) + 1, 0) for x in (ship, harm)]
    return first[0], first[1]


def plan(
    *,
    baseline: float,
    lift: float,
    per_arm_per_day: float,
    arms: int = 2,
    rule: DecisionRule = DecisionRule(),
    design: seq.SequentialDesign = seq.SequentialDesign(),
    power: float = 0.8,
    max_days: int = 365,
    simulations: int = 4000,
    seed: int = 0,
) -> Plan:
    """Expected days and customers until the peeking-safe rule calls a treatment whose
    true relative lift is ``lift`` (the smallest worth detecting), at ``baseline``
    conversion with ``per_arm_per_day`` customers per arm per day and ``arms`` arms
    (the budgets are split over ``arms - 1`` treatments, as ``analyze`` does)."""
    _check_rate("baseline", baseline)
    _check_rate("baseline x (1 + lift)", baseline * (1 + lift))
    if lift == 0 or arms < 2 or per_arm_per_day <= 0 or max_days < 1 or not 0 < power < 1:
        raise AnalysisInputError("lift must be non-zero, arms >= 2, traffic positive, max_days >= 1, 0 < power < 1")
    treated = baseline * (1 + lift)
    per_customer = (1 - treated) / treated + (1 - baseline) / baseline
    n = per_arm_per_day * np.arange(1, max_days + 1)
    info = n / per_customer
    rng = np.random.default_rng(seed)
    theta = np.full(simulations, math.log1p(lift))
    ship, harm = _first_crossings(
        rng,
        theta,
        np.zeros(simulations),
        0.0,
        info,
        design.conversion_mixture_sd,
        seq.split(1 - rule.ship_probability, arms - 1),
        seq.split(rule.harm_probability, arms - 1),
        n >= rule.min_exposed,
    )
    day = ship if lift > 0 else harm
    median = _day_quantile(day, 0.5)
    at_power = _day_quantile(day, power)
    return Plan(
        baseline=baseline,
        lift=lift,
        arms=arms,
        per_arm_per_day=per_arm_per_day,
        median_days=median,
        median_customers_per_arm=round(median * per_arm_per_day) if median is not None else None,
        days_for_power=at_power,
        power=power,
        p_decision_by_max_days=float((day > 0).mean()),
        max_days=max_days,
    )


def forecast(
    *,
    exposed_t: int,
    converted_t: int,
    exposed_c: int,
    converted_c: int,
    per_arm_per_day: float,
    arms: int = 2,
    assumed_lift: float | None = None,
    rule: DecisionRule = DecisionRule(),
    design: seq.SequentialDesign = seq.SequentialDesign(),
    horizon_days: int = 90,
    simulations: int = 4000,
    seed: int = 0,
) -> Forecast:
    """About how many more days until a running experiment's treatment is called,
    and the chance of a call by then (see ``Forecast``), from its conversion counts
    so far and the expected customers per arm per day from now on."""
    if min(exposed_t, exposed_c, converted_t, converted_c) < 0 or converted_t > exposed_t or converted_c > exposed_c:
        raise AnalysisInputError("counts must be non-negative and converted at most exposed")
    if per_arm_per_day <= 0 or horizon_days < 1 or arms < 2:
        raise AnalysisInputError("traffic must be positive, horizon_days >= 1, arms >= 2")
    estimate, variance = seq.conversion_effect(exposed_t, converted_t, exposed_c, converted_c)
    d0, v0 = float(estimate), float(variance)
    tau = design.conversion_mixture_sd
    alpha_ship = seq.split(1 - rule.ship_probability, arms - 1)
    alpha_harm = seq.split(rule.harm_probability, arms - 1)
    decided = bool(d0 - seq.radius(v0, tau, alpha_ship) > 0 or d0 + seq.radius(v0, tau, alpha_harm) < 0)
    decided &= min(exposed_t, exposed_c) >= rule.min_exposed
    # Information grows as each arm's variance term shrinks with its customers.
    pt, pc = (converted_t + 1) / (exposed_t + 2), (converted_c + 1) / (exposed_c + 2)
    more = per_arm_per_day * np.arange(1, horizon_days + 1)
    info = 1 / ((1 - pt) / ((exposed_t + 2 + more) * pt) + (1 - pc) / ((exposed_c + 2 + more) * pc))
    can_decide = np.minimum(exposed_t, exposed_c) + more >= rule.min_exposed
    rng = np.random.default_rng(seed)

    def run(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s0 = np.full(theta.size, d0 / v0)
        return _first_crossings(rng, theta, s0, 1 / v0, info, tau, alpha_ship, alpha_harm, can_decide)

    # Predictive: the effect is uncertain as the data so far say (flat prior, normal
    # approximation), and the continuation is drawn given that effect.
    ship, harm = run(d0 + math.sqrt(v0) * rng.standard_normal(simulations))
    if decided:
        return Forecast(0, 1.0, float(d0 > 0), float(d0 < 0), horizon_days, assumed_lift, True)
    if assumed_lift is None:
        first_ship, first_harm = ship, harm
    else:
        first_ship, first_harm = run(np.full(simulations, math.log1p(assumed_lift)))
    first = np.where((first_ship > 0) & ((first_harm == 0) | (first_ship <= first_harm)), first_ship, first_harm)
    median = _day_quantile(first, 0.5)
    by = median if median is not None else horizon_days
    ship_by = (ship > 0) & (ship <= by)
    harm_by = (harm > 0) & (harm <= by)
    return Forecast(
        more_days=median,
        p_decision_by_then=float((ship_by | harm_by).mean()),
        p_ship_by_then=float(ship_by.mean()),
        p_harmful_by_then=float(harm_by.mean()),
        horizon_days=horizon_days,
        assumed_lift=assumed_lift,
        decided_now=False,
    )
