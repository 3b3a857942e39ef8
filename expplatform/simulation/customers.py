"""Synthetic customers and what they do, with no I/O: deterministic given the seed.

Customer ``i`` of a scenario and seed is the same in every run: id, persona, platform,
arrival, faults and the uniforms its outcomes are drawn from are read from SHAKE-256
of ``"<seed>:<scenario>:<i>"`` (:func:`uniforms`: standard, fast, the same on every
platform and Python). Every customer draws the same number of uniforms whatever
happens, so a variant changes what a customer does only where its effect says (common
random numbers), and a re-run with the same seed sends the same events with the same
ids.

A customer converts at stage k only after converting at k - 1, with probability
(the persona's conversion at k) x (the product of the multipliers of the variants
they were given, at k); a customer who converts at a stage answers each of its
questions with the question's response rate, a rating drawn from the persona's
distribution shifted by the variants' rating effects.

:class:`Truth` sums, for every customer an experiment enrolled, the *expected*
outcomes given their persona and the variants they got (not the draws), so the true
rates it reports are those of exactly the customers the service saw.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

from ..bucketing import Split, place
from .scenario import NO_EFFECT, Effect, Question, Scenario, mean_of, shift_for_mean, shifted

MAX_ID_PREFIX = 60
_TO_UNIT = 2.0**-53
PROFILE_DRAWS = 6  # persona, platform, day, time of day, before assignment, unknown customer; + the SRM draw


def uniforms(label: str, count: int) -> tuple[float, ...]:
    """``count`` independent uniforms in [0, 1) determined by ``label``: 64-bit words of
    SHAKE-256 of the label, their top 53 bits as a fraction (as the bucketing does)."""
    words = struct.unpack(f">{count}Q", hashlib.shake_256(label.encode()).digest(8 * count))
    return tuple((w >> 11) * _TO_UNIT for w in words)


@dataclass(frozen=True)
class Calendar:
    """The simulated days: ``days`` days ending ``last`` (today), customers spread
    over them by weekday weight."""

    last: date
    days: int
    weekday_weights: tuple[float, ...]

    @property
    def first(self) -> date:
        return self.last - timedelta(days=self.days - 1)

    def day(self, index: int) -> date:
        return self.first + timedelta(days=index)

    @property
    def cumulative(self) -> list[float]:
        weights = [self.weekday_weights[self.day(i).weekday()] for i in range(self.days)]
        total = sum(weights)
        running, out = 0.0, []
        for w in weights:
            running += w / total
            out.append(running)
        out[-1] = 1.0
        return out


@dataclass(frozen=True)
class Customer:
    index: int
    id: str
    persona: str
    platform: str
    arrival: datetime  # simulated
    before_assignment: bool  # sends an event before the assign call
    ghost: bool  # a customer never assigned sends events too
    srm_draw: float  # compared with the sample-ratio fault's share
    draws: tuple[float, ...]  # per stage one, then per question two (answers?, which rating)


@dataclass(frozen=True)
class Outcome:
    conversions: tuple[str, ...]  # stages converted at, in journey order
    ratings: tuple[tuple[str, int], ...]  # (question, rating)


@dataclass(frozen=True)
class Sent:
    """An event a customer sends: a conversion at ``stage`` or, with ``question``, a
    rating (``stage``: the question's). Its id derives from the customer's, so a
    second run sends the same ids."""

    event_id: str
    customer_id: str
    stage: str
    question: str | None = None
    value: int | None = None


def id_prefix(scenario: Scenario, seed: int) -> str:
    return f"sim-{scenario.name}-s{seed}"[:MAX_ID_PREFIX]


def _pick(cumulative: Sequence[float], keys: Sequence[str], u: float) -> str:
    return keys[min(bisect.bisect_right(cumulative, u), len(keys) - 1)]


def _cumulative(shares: Mapping[str, float]) -> tuple[list[str], list[float]]:
    keys = list(shares)
    running, out = 0.0, []
    for key in keys:
        running += shares[key]
        out.append(running)
    out[-1] = 1.0
    return keys, out


class Population:
    """Customer ``i`` of a scenario, seed and calendar."""

    def __init__(self, scenario: Scenario, seed: int, calendar: Calendar) -> None:
        self.scenario = scenario
        self.seed = seed
        self.calendar = calendar
        self.prefix = id_prefix(scenario, seed)
        self._personas = _cumulative(scenario.personas)
        self._platforms = _cumulative(scenario.platforms)
        self._days = calendar.cumulative
        self._draw_count = len(scenario.stages) + 2 * len(scenario.questions)
        fault = scenario.faults.sample_ratio
        self._sample_ratio = None
        if fault is not None:
            experiment = scenario.experiments[fault.experiment]
            traffic = float(experiment.definition.get("traffic", 1.0))
            self._sample_ratio = (fault, Split.of(experiment.key, experiment.weights, traffic), experiment)

    def customer(self, index: int) -> Customer:
        draws = uniforms(f"{self.seed}:{self.scenario.name}:{index}", PROFILE_DRAWS + 1 + self._draw_count)
        persona_u, platform_u, day_u, moment, before_u, ghost_u, srm_draw = draws[: PROFILE_DRAWS + 1]
        faults = self.scenario.faults
        day = min(bisect.bisect_right(self._days, day_u), self.calendar.days - 1)
        start = datetime.combine(self.calendar.day(day), datetime.min.time(), UTC)
        return Customer(
            index=index,
            id=f"{self.prefix}-{index:07d}",
            persona=_pick(self._personas[1], self._personas[0], persona_u),
            platform=_pick(self._platforms[1], self._platforms[0], platform_u),
            arrival=start + timedelta(days=moment),
            before_assignment=before_u < faults.before_assignment_rate,
            ghost=ghost_u < faults.unknown_customer_rate,
            srm_draw=srm_draw,
            draws=draws[PROFILE_DRAWS + 1 :],
        )

    def fault_draws(self, customer: Customer) -> tuple[float, ...]:
        """Two uniforms per event the customer may send (late?, sent twice?)."""
        return uniforms(f"{self.seed}:{self.scenario.name}:{customer.index}:faults", 2 * self._draw_count)

    def in_arrival_order(self, count: int) -> list[int]:
        """Customer numbers 0..count-1 in order of simulated arrival (the day and time
        of day :meth:`customer` gives: SHAKE's shorter output is a prefix of its longer)."""
        days, name, seed = self._days, self.scenario.name, self.seed
        last = self.calendar.days - 1

        def arrival(index: int) -> tuple[int, float, int]:
            _persona, _platform, day_u, moment = uniforms(f"{seed}:{name}:{index}", 4)
            return min(bisect.bisect_right(days, day_u), last), moment, index

        return [index for *_when, index in sorted(map(arrival, range(count)))]

    def ghost_id(self, customer: Customer) -> str:
        return f"{self.prefix}-ghost-{customer.index:07d}"

    def skips(self, key: str, customer: Customer) -> bool:
        """Whether the sample-ratio fault skips this customer's assign call for ``key``:
        their variant, by the published bucketing, is the fault's, and their draw is
        under its share."""
        if self._sample_ratio is None:
            return False
        fault, split, experiment = self._sample_ratio
        if key != fault.experiment or customer.srm_draw >= fault.skip_share:
            return False
        index = place(split, customer.id)
        return 0 <= index < len(experiment.variants) and experiment.variants[index] == fault.variant

    def events(self, customer: Customer, outcome: Outcome) -> list[Sent]:
        """What the customer sends for what they did: a conversion per stage reached,
        then their ratings."""
        cid = customer.id
        sent = [Sent(f"{cid}:{stage}", cid, stage) for stage in outcome.conversions]
        for question, value in outcome.ratings:
            sent.append(Sent(f"{cid}:{question}", cid, self.scenario.questions[question].stage, question, value))
        return sent

    def early_event(self, customer: Customer) -> Sent:
        """The event a ``before_assignment`` customer sends before their assign call."""
        return Sent(f"{customer.id}:early", customer.id, self.scenario.stages[0])

    def ghost_events(self, customer: Customer) -> list[Sent]:
        """The events of the never-assigned customer a ``ghost`` customer brings along."""
        ghost = self.ghost_id(customer)
        return [Sent(f"{ghost}:{stage}", ghost, stage) for stage in self.scenario.stages[:2]]


# Stage -> P(converts there); question -> (P(rates), E[rating | rates]).
Expected = tuple[dict[str, float], dict[str, tuple[float, float]]]


# -- what a customer does ----------------------------------------------------------------------


class Behaviour:
    """Conversion probabilities and rating distributions under a set of effects."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def step(self, persona: str, stage: str, effects: Sequence[Effect]) -> float:
        p = self.scenario.conversion[persona][stage]
        for effect in effects:
            p *= effect.multiplier(stage, persona)
        return min(p, 1.0)

    def distribution(self, question: Question, persona: str, effects: Sequence[Effect]) -> tuple[float, ...]:
        points = sum(effect.shift(question.key, persona) for effect in effects)
        return _distribution(question, persona, round(points, 9))

    def outcome(self, customer: Customer, effects: Sequence[Effect]) -> Outcome:
        scenario = self.scenario
        draws = iter(customer.draws)
        reached = True
        converted: list[str] = []
        for stage in scenario.stages:
            u = next(draws)
            reached = reached and u < self.step(customer.persona, stage, effects)
            if reached:
                converted.append(stage)
        ratings = []
        for question in scenario.questions.values():
            answers, which = next(draws), next(draws)
            if question.stage in converted and answers < question.response_rate:
                probabilities = self.distribution(question, customer.persona, effects)
                ratings.append((question.key, question.scale[0] + _inverse(probabilities, which)))
        return Outcome(tuple(converted), tuple(ratings))

    def expected(self, persona: str, effects: Sequence[Effect]) -> Expected:
        """Stage -> P(converts there); question -> (P(rates), E[rating | rates])."""
        reach: dict[str, float] = {}
        running = 1.0
        for stage in self.scenario.stages:
            running *= self.step(persona, stage, effects)
            reach[stage] = running
        rated = {}
        for question in self.scenario.questions.values():
            probabilities = self.distribution(question, persona, effects)
            rated[question.key] = (
                reach[question.stage] * question.response_rate,
                mean_of(probabilities, question.scale[0]),
            )
        return reach, rated


@cache
def _distribution_cached(probabilities: tuple[float, ...], low: int, points: float) -> tuple[float, ...]:
    return shifted(probabilities, shift_for_mean(probabilities, low, points))


def _distribution(question: Question, persona: str, points: float) -> tuple[float, ...]:
    base = question.ratings[persona]
    return base if points == 0 else _distribution_cached(base, question.scale[0], points)


def _inverse(probabilities: Sequence[float], u: float) -> int:
    running = 0.0
    for i, p in enumerate(probabilities):
        running += p
        if u < running:
            return i
    return len(probabilities) - 1


def effects_of(scenario: Scenario, variants: Mapping[str, str]) -> list[Effect]:
    """The effects a customer meets: their variant's in each experiment that enrolled
    them (a customer not enrolled sees the control experience: no effect)."""
    out = []
    for key, variant in variants.items():
        experiment = scenario.experiments.get(key)
        out.append(experiment.effect(variant) if experiment is not None else NO_EFFECT)
    return out


# -- the truth ------------------------------------------------------------------------------------


@dataclass
class _Cell:
    exposed: float = 0.0
    converted: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    rated: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    rating_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, weight: float, reach: Mapping[str, float], rated: Mapping[str, tuple[float, float]]) -> None:
        self.exposed += weight
        for stage, p in reach.items():
            self.converted[stage] += weight * p
        for question, (p, mean) in rated.items():
            self.rated[question] += weight * p
            self.rating_sum[question] += weight * p * mean

    def merge(self, other: _Cell) -> None:
        self.exposed += other.exposed
        for target, source in (
            (self.converted, other.converted),
            (self.rated, other.rated),
            (self.rating_sum, other.rating_sum),
        ):
            for key, value in source.items():
                target[key] += value


class Truth:
    """Expected outcomes summed per experiment x variant (and x persona), over the
    customers each experiment enrolled, given the variants they really got."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.behaviour = Behaviour(scenario)
        self.cells: dict[tuple[str, str, str], _Cell] = defaultdict(_Cell)  # (experiment, variant, persona)
        # Customers share a few (persona, variants) combinations: each one's expectation once.
        self._expected: dict[tuple[str, tuple[tuple[str, str], ...]], Expected] = {}

    def add(self, customer: Customer, variants: Mapping[str, str]) -> None:
        if not variants:
            return
        combination = (customer.persona, tuple(variants.items()))
        found = self._expected.get(combination)
        if found is None:
            found = self._expected[combination] = self.behaviour.expected(
                customer.persona, effects_of(self.scenario, variants)
            )
        reach, rated = found
        for key, variant in variants.items():
            if key in self.scenario.experiments:
                self.cells[(key, variant, customer.persona)].add(1.0, reach, rated)

    def merge(self, other: Truth) -> None:
        for key, cell in other.cells.items():
            self.cells[key].merge(cell)

    def _table(self, experiment_key: str, cells: Mapping[str, _Cell]) -> dict[str, Any]:
        experiment = self.scenario.experiments[experiment_key]
        return _summarise(self.scenario, experiment.control, experiment.variants, cells)

    def enrolled(self) -> dict[str, Any]:
        """Per experiment: true rates and lifts of the customers it enrolled, in all
        and per persona."""
        out: dict[str, Any] = {}
        for key, experiment in self.scenario.experiments.items():
            overall: dict[str, _Cell] = {}
            by_persona: dict[str, dict[str, _Cell]] = defaultdict(dict)
            for variant in experiment.variants:
                total = _Cell()
                for persona in self.scenario.personas:
                    cell = self.cells.get((key, variant, persona))
                    if cell is not None:
                        total.merge(cell)
                        by_persona[persona][variant] = cell
                overall[variant] = total
            out[key] = {
                **self._table(key, overall),
                "personas": {p: self._table(key, cells) for p, cells in sorted(by_persona.items())},
            }
        return out

    def population(self) -> dict[str, Any]:
        """Per experiment: true rates and lifts for the scenario's persona shares, the
        experiment alone (every other experiment at its control experience)."""
        out: dict[str, Any] = {}
        for key, experiment in self.scenario.experiments.items():
            cells: dict[str, _Cell] = {}
            for variant in experiment.variants:
                cell = _Cell()
                for persona, share in self.scenario.personas.items():
                    reach, rated = self.behaviour.expected(persona, [experiment.effect(variant)])
                    cell.add(share, reach, rated)
                cells[variant] = cell
            out[key] = self._table(key, cells)
        return out


DIGITS = 10  # of the truth file's figures: sums of expectations carry float noise past that


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, DIGITS) if b > 0 else None


def _lift(value: float | None, control: float | None) -> float | None:
    return None if value is None or control is None or control == 0 else round(value / control - 1, DIGITS)


def _summarise(scenario: Scenario, control: str, variants: Sequence[str], cells: Mapping[str, _Cell]) -> dict[str, Any]:
    """Per variant and stage: exposed, conversion rate, and per question the rated
    share and mean rating; per treatment the relative lifts (and the difference in
    mean rating, in points) against the control."""
    table: dict[str, Any] = {"control": control, "variants": {}}
    for variant in variants:
        cell = cells.get(variant, _Cell())
        stages = {}
        for stage in scenario.stages:
            entry: dict[str, Any] = {"conversion": _ratio(cell.converted.get(stage, 0.0), cell.exposed)}
            for question in scenario.questions_at(stage):
                entry.setdefault("questions", {})[question.key] = {
                    "rated_share": _ratio(cell.rated.get(question.key, 0.0), cell.exposed),
                    "mean_rating": _ratio(cell.rating_sum.get(question.key, 0.0), cell.rated.get(question.key, 0.0)),
                }
            stages[stage] = entry
        table["variants"][variant] = {"exposed": round(cell.exposed, 6), "stages": stages}
    lifts: dict[str, Any] = {}
    base = table["variants"][control]["stages"]
    for variant in variants:
        if variant == control:
            continue
        mine = table["variants"][variant]["stages"]
        lifts[variant] = {}
        for stage in scenario.stages:
            entry = {"conversion": _lift(mine[stage]["conversion"], base[stage]["conversion"])}
            for question in scenario.questions_at(stage):
                m = mine[stage]["questions"][question.key]["mean_rating"]
                c = base[stage]["questions"][question.key]["mean_rating"]
                entry.setdefault("questions", {})[question.key] = {
                    "mean_rating": _lift(m, c),
                    "mean_rating_difference": None if m is None or c is None else round(m - c, DIGITS),
                }
            lifts[variant][stage] = entry
    table["lifts"] = lifts
    return table
