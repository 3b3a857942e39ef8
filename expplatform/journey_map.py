"""The live journey map: for a period and a persona (or two personas side by side),
each stage's reach, conversion to the next stage, rating questions and the pain
points, from the journey counters alone; and the experiments that test each stage.

The parts, in the order a request uses them:

- ``MapOptions.parse``: the period and personas a caller asks for, validated once
  (the page and the API accept the same values and name the same fields);
- ``read_counts``: one grouped SQL statement over ``journey_counts``, the period's
  days summed per stage x question x persona x rating: its cost grows with days and
  personas, never with customers or events. Summing days counts distinct customers:
  ingest keeps each customer's first conversion at a stage, and latest rating to a
  question, in exactly one day's cell;
- ``journey_map``: pure statistics on those sums (numpy; scipy's Beta quantiles):
  step conversion with its Beta posterior, each question's mean rating, top-box share
  and NPS with their Dirichlet posterior, the pain points with the probability that
  each really is the worst (from joint draws), and two groups' differences;
- ``stage_tests``: the experiments testing each stage, with the measured lift and
  decision of the stopped ones shown (their report's analysis, kept per worker: a
  stopped experiment's data no longer moves).

Every interval is an equal-tailed 95% credible interval. Draws come from generators
seeded by what they describe (group, stage, question), so the same data gives the
same numbers, and a persona's figures are the same alone and beside another.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from analysis.types import Estimate, Scale

from .errors import MalformedRequest
from .models import Journey, JourneyCount, utcnow

LEVEL = 0.95
DRAWS = 4000
SEED = 0
# Fewer customers at a stage (or ratings of a question) than this: "not enough data",
# and the stage is left out of the pain points.
MIN_CUSTOMERS = 30
MIN_RATINGS = 30
RATING_PRIOR = 1.0  # total weight of the Dirichlet prior on a question's ratings, in ratings
DEFAULT_DAYS = 28
MAX_DAYS = 366
ALL, UNKNOWN = "all", "unknown"  # query words: every customer; customers without a known persona
PARAMETERS = ("days", "from", "to", "persona", "compare")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # matched whole; ASCII digits only
_DAYS = re.compile(r"[0-9]{1,3}")
_TAILS = ((1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2)

FloatArray = npt.NDArray[np.float64]


# -- the journey, as the statistics see it ---------------------------------------------------


@dataclass(frozen=True)
class StageShape:
    key: str
    name: str
    goal: str
    touchpoints: tuple[str, ...]


@dataclass(frozen=True)
class QuestionShape:
    key: str
    stage: str
    text: str
    scale: Scale


@dataclass(frozen=True)
class PersonaShape:
    key: str
    name: str


@dataclass(frozen=True)
class JourneyShape:
    """A journey's stages (in order), questions and personas, detached from the ORM."""

    key: str
    name: str
    description: str
    persona_attribute: str
    stages: tuple[StageShape, ...]
    questions: tuple[QuestionShape, ...]
    personas: tuple[PersonaShape, ...]

    @classmethod
    def of(cls, journey: Journey) -> JourneyShape:
        return cls(
            key=journey.key,
            name=journey.name,
            description=journey.description or "",
            persona_attribute=journey.persona_attribute,
            stages=tuple(StageShape(s.key, s.name, s.goal or "", tuple(s.touchpoints or ())) for s in journey.stages),
            questions=tuple(
                QuestionShape(q.key, q.stage, q.text, Scale(q.scale_min, q.scale_max)) for q in journey.questions
            ),
            personas=tuple(PersonaShape(p.key, p.name) for p in journey.personas),
        )

    def questions_at(self, stage: str) -> tuple[QuestionShape, ...]:
        return tuple(q for q in self.questions if q.stage == stage)

    def stage_name(self, key: str) -> str:
        return next((s.name for s in self.stages if s.key == key), key)

    def persona_name(self, value: str | None) -> str:
        """The name of a persona value ('' unknown, None everyone)."""
        if value is None:
            return "Everyone"
        if value == "":
            return "Unknown persona"
        return next((p.name for p in self.personas if p.key == value), value)


# -- what a caller may ask ----------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """UTC days, both ends included."""

    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def persona_word(value: str | None) -> str:
    """A persona value as the query string names it: its key, 'unknown' or 'all'."""
    return ALL if value is None else UNKNOWN if value == "" else value


@dataclass(frozen=True)
class MapOptions:
    """A period, the persona shown (None: everyone; '': unknown persona; else a
    persona key) and the persona compared with it (None: no comparison)."""

    period: Period
    persona: str | None = None
    compare: str | None = None
    custom_period: bool = False  # given as from/to rather than a number of days ending today

    @classmethod
    def parse(cls, args: Mapping[str, Any], personas: Iterable[str], today: date) -> MapOptions:
        """Validate query arguments (``days`` 1-366 ending today, default 28, or
        ``from``/``to`` dates; ``persona``; ``compare``); raise ``MalformedRequest``
        naming every bad field."""
        keys = set(personas)
        errors: dict[str, str] = {}
        for name in sorted(set(args) - set(PARAMETERS)):
            errors[name] = "is not a parameter of the journey map (" + ", ".join(PARAMETERS) + ")"
        raw = {name: str(args.get(name) or "").strip() for name in PARAMETERS}
        days = _days(raw["days"], errors)
        last = _date(raw["to"], "to", errors) if raw["to"] else today
        first = _date(raw["from"], "from", errors) if raw["from"] else None
        if first is not None and raw["days"]:
            errors["days"] = "give either days or from (with to), not both"
        period = Period(today - timedelta(days=DEFAULT_DAYS - 1), today)
        if first is not None and last is not None:
            if first > last:
                errors["from"] = "must not be after to"
            elif (last - first).days + 1 > MAX_DAYS:
                errors["from"] = f"the period may be at most {MAX_DAYS} days long"
            else:
                period = Period(first, last)
        elif last is not None and days is not None:
            period = Period(last - timedelta(days=days - 1), last)
        persona = _persona(raw["persona"], keys, "persona", errors)
        compare = _persona(raw["compare"], keys, "compare", errors) if raw["compare"] else None
        if raw["compare"] and raw["compare"] == ALL and ALL not in keys:
            errors["compare"] = "must be a persona (or 'unknown'): the comparison is with one persona"
        elif raw["compare"] and "persona" not in errors and "compare" not in errors and compare == persona:
            errors["compare"] = "must differ from persona"
        if errors:
            raise MalformedRequest(fields=errors)
        return cls(period, persona, compare, custom_period=bool(raw["from"] or raw["to"]))

    def query(self, today: date, **changes: str | None) -> dict[str, str]:
        """These options as query arguments (for links), with ``changes`` applied
        (a value of None drops the argument)."""
        query: dict[str, str] = {}
        if self.custom_period:
            query.update({"from": self.period.first.isoformat(), "to": self.period.last.isoformat()})
        elif self.period.last != today or self.period.days != DEFAULT_DAYS:
            query["days"] = str(self.period.days)
            if self.period.last != today:
                query["to"] = self.period.last.isoformat()
        if self.persona is not None:
            query["persona"] = persona_word(self.persona)
        if self.compare is not None:
            query["compare"] = persona_word(self.compare)
        for name, value in changes.items():
            if value is None:
                query.pop(name, None)
            else:
                query[name] = value
        return query


def _days(raw: str, errors: dict[str, str]) -> int | None:
    if not raw:
        return DEFAULT_DAYS
    if not _DAYS.fullmatch(raw) or not 1 <= int(raw) <= MAX_DAYS:
        errors["days"] = f"must be a whole number of days from 1 to {MAX_DAYS}"
        return None
    return int(raw)


def _date(raw: str, name: str, errors: dict[str, str]) -> date | None:
    try:
        if _DATE.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    errors[name] = "must be a date, YYYY-MM-DD"
    return None


def _persona(raw: str, keys: set[str], name: str, errors: dict[str, str]) -> str | None:
    """A persona key wins over the words 'all' and 'unknown' (a persona so keyed shadows them)."""
    if raw in keys:
        return raw
    if raw in ("", ALL):
        return None
    if raw == UNKNOWN:
        return ""
    listed = ", ".join([*sorted(keys), UNKNOWN, ALL] if name == "persona" else [*sorted(keys), UNKNOWN])
    errors[name] = f"is not a persona of this journey ({listed})"
    return None


# -- the counters -------------------------------------------------------------------------------


@dataclass
class Counts:
    """One group of customers over a period: customers reaching each stage (their
    first conversion there fell in the period) and each question's histogram of
    latest ratings (given in the period), bin ``i`` for rating ``scale.min + i``."""

    reached: dict[str, int] = field(default_factory=dict)
    ratings: dict[str, list[int]] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        for stage, n in other.reached.items():
            self.reached[stage] = self.reached.get(stage, 0) + n
        for key, histogram in other.ratings.items():
            mine = self.ratings.setdefault(key, [0] * len(histogram))
            for i, n in enumerate(histogram):
                mine[i] += n


MAX_PIVOT = 32  # rating values read as columns of one row; a journey with more reads a row per value


def read_counts(session: Session, journey_id: int, shape: JourneyShape, period: Period) -> dict[str, Counts]:
    """Per persona value: the period's sums, in one grouped statement. Persona values
    that are not the journey's (a persona since removed) count as unknown (''), as
    ingest counts them from then on; cells of stages, questions or rating values the
    journey no longer has are left out.

    The statement seeks the primary key (journey, stage, metric, persona, day) for each
    of the journey's stages and metrics and reads only the period's days. It groups by
    stage x metric x persona, the key's order, so the database streams the groups
    instead of sorting every cell: the rating values are columns of each group's row
    (SUM of CASE), not rows to sort (on SQLite sorting a year's 60,000 cells was most
    of the cost)."""
    stages = [s.key for s in shape.stages]
    scales = {q.key: q.scale for q in shape.questions}
    personas = {p.key for p in shape.personas}
    c = JourneyCount
    where = (
        c.journey_id == journey_id,
        c.stage.in_(stages),
        c.metric.in_(["", *scales]),
        c.day >= period.first,
        c.day <= period.last,
    )
    values = sorted({v for scale in scales.values() for v in range(scale.min, scale.max + 1)})
    by_persona: dict[str, Counts] = {}

    def counts_of(persona: str) -> Counts:
        return by_persona.setdefault(persona if persona in personas else "", Counts())

    def add_rating(counts: Counts, metric: str, value: int, n: int) -> None:
        scale = scales.get(metric)
        if scale is not None and scale.min <= value <= scale.max and n:
            histogram = counts.ratings.setdefault(metric, [0] * scale.categories)
            histogram[value - scale.min] += n

    if len(values) > MAX_PIVOT:
        rows = session.execute(
            select(c.stage, c.metric, c.persona, c.kind, c.value, func.sum(c.customers))
            .where(*where)
            .group_by(c.stage, c.metric, c.persona, c.kind, c.value)
        )
        for stage, metric, persona, kind, value, n in rows:
            counts = counts_of(persona)
            if kind == "converted" and metric == "":
                counts.reached[stage] = counts.reached.get(stage, 0) + int(n)
            elif kind == "rating":
                add_rating(counts, metric, value, int(n))
        return by_persona
    converted = func.sum(case((c.kind == "converted", c.customers), else_=0))
    rated = [func.sum(case((and_(c.kind == "rating", c.value == v), c.customers), else_=0)) for v in values]
    statement = (
        select(c.stage, c.metric, c.persona, converted, *rated).where(*where).group_by(c.stage, c.metric, c.persona)
    )
    for stage, metric, persona, n, *histogram in session.execute(statement):
        counts = counts_of(persona)
        if metric == "":
            counts.reached[stage] = counts.reached.get(stage, 0) + int(n)  # int(): PostgreSQL sums as NUMERIC
            continue
        for value, m in zip(values, histogram, strict=True):
            add_rating(counts, metric, value, int(m))
    return by_persona


# -- groups of customers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """The customers one column of the map describes: every one (``personas`` None),
    the given persona values, or everyone but one (``excluding``)."""

    key: str
    label: str
    persona: str | None  # the persona value shown, when one
    excluding: str | None = None

    def counts(self, by_persona: Mapping[str, Counts]) -> Counts:
        total = Counts()
        for value, counts in by_persona.items():
            if self.excluding is not None:
                if value != self.excluding:
                    total.add(counts)
            elif self.persona is None or value == self.persona:
                total.add(counts)
        return total


def groups_for(shape: JourneyShape, options: MapOptions) -> tuple[Group, ...]:
    """The map's groups: the persona asked for; with ``compare``, that persona beside
    it, and when the first is everyone, 'everyone else' (so the two never share a
    customer and their difference means something)."""
    if options.compare is None:
        return (_group(shape, options.persona),)
    compared = _group(shape, options.compare)
    if options.persona is None:
        word = persona_word(options.compare)
        first = Group(f"all-but-{word}", f"Everyone but {compared.label}", None, excluding=options.compare)
    else:
        first = _group(shape, options.persona)
    return first, compared


def _group(shape: JourneyShape, persona: str | None) -> Group:
    return Group(persona_word(persona), shape.persona_name(persona), persona)


# -- figures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """From a stage to the next: ``continued`` of the ``reached`` customers reached the
    next stage. Conversion has the posterior Beta(1 + next, 1 + max(this - next, 0));
    the drop-off is 1 - conversion. ``skipped``: more customers reached the next stage
    than this one (customers skip stages), so the ratio is not a share of them."""

    to_stage: str
    reached: int
    continued: int
    observed: float | None
    conversion: Estimate | None
    drop_off: Estimate | None
    skipped: bool
    enough_data: bool


@dataclass(frozen=True)
class QuestionFigures:
    """A rating question's latest ratings in the period: mean rating, its rescaling to
    0-1 ((mean - min) / (max - min)), top-box share (ratings >= ``top_box_min``) and,
    on 0-10 scales, NPS in points (-100..100); observed values and the posterior of a
    Dirichlet(histogram + 1/K) over the K ratings: a prior worth one rating, spread
    evenly, so a few ratings are not pulled far to the middle of the scale (a uniform
    prior, worth K ratings, put 40 ratings of 10 out of 10 at 9.05 [8.11, 9.49]).
    Estimates are None without ratings."""

    key: str
    text: str
    scale_min: int
    scale_max: int
    rated: int
    histogram: tuple[int, ...]
    observed_mean: float | None
    mean: Estimate | None
    satisfaction: Estimate | None
    top_box_min: int
    observed_top_box: float | None
    top_box: Estimate | None
    observed_nps: float | None
    nps: Estimate | None
    enough_data: bool


@dataclass(frozen=True)
class StageFigures:
    """A stage for one group: customers reaching it, the step to the next stage (None
    at the last), its questions, and its satisfaction on the common 0-1 axis (the
    average of its rated questions' rescaled means; None without ratings)."""

    stage: str
    reached: int
    step: Step | None
    questions: tuple[QuestionFigures, ...]
    satisfaction: Estimate | None
    satisfaction_enough_data: bool
    observed_satisfaction: float | None = None  # the same average of observed means


PainKind = Literal["drop_off", "satisfaction"]
PainStatus = Literal["ok", "not_enough_data", "not_applicable"]


@dataclass(frozen=True)
class PainPoint:
    """The stage with the largest drop-off to the next (or the lowest satisfaction)
    among stages with enough data (the worst posterior mean), its observed value and
    posterior, P(it really is the worst) over joint posterior draws, and the next
    likeliest; in words in ``message``."""

    kind: PainKind
    status: PainStatus
    message: str
    stage: str | None = None
    observed: float | None = None
    value: Estimate | None = None
    p_worst: float | None = None
    runner_up: str | None = None
    p_runner_up: float | None = None


@dataclass(frozen=True)
class GroupMap:
    group: Group
    stages: tuple[StageFigures, ...]
    drop_off: PainPoint
    satisfaction: PainPoint

    def stage(self, key: str) -> StageFigures:
        return next(s for s in self.stages if s.stage == key)


@dataclass(frozen=True)
class Difference:
    """First group minus second: the observed difference, the posterior's (mean and
    interval, from independent draws of both); ``credible`` when the interval excludes 0."""

    observed: float
    estimate: Estimate
    credible: bool


@dataclass(frozen=True)
class StageDifference:
    stage: str
    conversion: Difference | None  # step conversion to the next stage
    mean_ratings: tuple[tuple[str, Difference | None], ...]  # per question key


@dataclass(frozen=True)
class JourneyMap:
    shape: JourneyShape
    options: MapOptions
    groups: tuple[GroupMap, ...]
    differences: tuple[StageDifference, ...] | None
    first_stage_customers: Mapping[str, int]  # per persona value: customers reaching the first stage
    generated_at: datetime
    level: float = LEVEL


class _Draws:
    """A group's posterior draws, kept beside its figures for the pain points and
    the comparison (never shown)."""

    def __init__(self) -> None:
        self.conversion: dict[str, FloatArray] = {}  # stage -> step conversion draws
        self.mean: dict[str, FloatArray] = {}  # question -> mean rating draws
        self.satisfaction: dict[str, FloatArray] = {}  # stage -> 0-1 draws


def _rng(group: Group, *parts: int) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(group.key.encode()), *parts])


def _beta_estimate(a: float, b: float) -> Estimate:
    from scipy.special import betaincinv

    low, high = betaincinv(a, b, _TAILS)
    return Estimate(float(a / (a + b)), float(low), float(high))


def _draw_estimate(mean: float, draws: FloatArray) -> Estimate:
    low, high = np.quantile(draws, _TAILS)
    return Estimate(float(mean), float(low), float(high))


def _step(group: Group, index: int, to_stage: str, this: int, following: int, draws: _Draws, stage: str) -> Step:
    if this == 0:
        return Step(to_stage, this, following, None, None, None, following > 0, False)
    a, b = 1.0 + following, 1.0 + max(this - following, 0)
    conversion = _beta_estimate(a, b)
    draws.conversion[stage] = _rng(group, index, 0).beta(a, b, DRAWS)
    assert conversion.mean is not None and conversion.low is not None and conversion.high is not None
    return Step(
        to_stage=to_stage,
        reached=this,
        continued=following,
        observed=following / this,
        conversion=conversion,
        drop_off=Estimate(1 - conversion.mean, 1 - conversion.high, 1 - conversion.low),
        skipped=following > this,
        enough_data=this >= MIN_CUSTOMERS,
    )


def _question(group: Group, index: int, slot: int, question: QuestionShape, histogram: Sequence[int], draws: _Draws):
    scale = question.scale
    counts = np.asarray(histogram, dtype=float)
    values = np.arange(scale.min, scale.max + 1, dtype=float)
    n = int(counts.sum())
    top = values >= scale.top_box_min
    empty = QuestionFigures(
        key=question.key,
        text=question.text,
        scale_min=scale.min,
        scale_max=scale.max,
        rated=0,
        histogram=tuple(int(x) for x in counts),
        observed_mean=None,
        mean=None,
        satisfaction=None,
        top_box_min=scale.top_box_min,
        observed_top_box=None,
        top_box=None,
        observed_nps=None,
        nps=None,
        enough_data=False,
    )
    if n == 0:
        return empty
    alpha = counts + RATING_PRIOR / scale.categories
    total = alpha.sum()
    probabilities = _rng(group, index, slot).dirichlet(alpha, DRAWS)
    mean_draws = probabilities @ values
    span = scale.max - scale.min
    mean = _draw_estimate(float(alpha @ values / total), mean_draws)
    assert mean.mean is not None and mean.low is not None and mean.high is not None
    satisfaction = Estimate(
        (mean.mean - scale.min) / span, (mean.low - scale.min) / span, (mean.high - scale.min) / span
    )
    draws.mean[question.key] = mean_draws
    nps = observed_nps = None
    if scale.has_nps:
        weights = np.where(values >= 9, 100.0, np.where(values <= 6, -100.0, 0.0))
        nps = _draw_estimate(float(alpha @ weights / total), probabilities @ weights)
        observed_nps = float(counts @ weights / n)
    return QuestionFigures(
        key=question.key,
        text=question.text,
        scale_min=scale.min,
        scale_max=scale.max,
        rated=n,
        histogram=empty.histogram,
        observed_mean=float(counts @ values / n),
        mean=mean,
        satisfaction=satisfaction,
        top_box_min=scale.top_box_min,
        observed_top_box=float(counts[top].sum() / n),
        top_box=_beta_estimate(float(alpha[top].sum()), float(alpha[~top].sum())),
        observed_nps=observed_nps,
        nps=nps,
        enough_data=n >= MIN_RATINGS,
    )


def group_map(shape: JourneyShape, group: Group, counts: Counts) -> tuple[GroupMap, _Draws]:
    """One group's figures and pain points (pure: counts in, figures out)."""
    draws = _Draws()
    stages = []
    for index, stage in enumerate(shape.stages):
        reached = counts.reached.get(stage.key, 0)
        step = None
        if index + 1 < len(shape.stages):
            following = shape.stages[index + 1].key
            step = _step(group, index, following, reached, counts.reached.get(following, 0), draws, stage.key)
        questions = tuple(
            _question(group, index, slot, q, counts.ratings.get(q.key, [0] * q.scale.categories), draws)
            for slot, q in enumerate(shape.questions_at(stage.key), start=1)
        )
        rated = [q for q in questions if q.rated]
        satisfaction = None
        if rated:
            scaled = [(draws.mean[q.key] - q.scale_min) / (q.scale_max - q.scale_min) for q in rated]
            stage_draws = np.mean(scaled, axis=0)
            draws.satisfaction[stage.key] = stage_draws
            means = [
                q.satisfaction.mean for q in rated if q.satisfaction is not None and q.satisfaction.mean is not None
            ]
            satisfaction = _draw_estimate(float(np.mean(means)), stage_draws)
        observed = [((q.observed_mean or 0.0) - q.scale_min) / (q.scale_max - q.scale_min) for q in rated]
        stages.append(
            StageFigures(
                stage=stage.key,
                reached=reached,
                step=step,
                questions=questions,
                satisfaction=satisfaction,
                satisfaction_enough_data=bool(rated) and all(q.enough_data for q in rated),
                observed_satisfaction=float(np.mean(observed)) if observed else None,
            )
        )
    figures = tuple(stages)
    return (
        GroupMap(group, figures, _drop_off_point(shape, figures, draws), _satisfaction_point(shape, figures, draws)),
        draws,
    )


# -- pain points --------------------------------------------------------------------------------


def _chances(samples: FloatArray, worst: Literal["max", "min"]) -> FloatArray:
    """P(each row is the worst) from joint draws (rows: candidates; columns: draws)."""
    picks = samples.argmax(axis=0) if worst == "max" else samples.argmin(axis=0)
    return np.bincount(picks, minlength=samples.shape[0]) / samples.shape[1]


def _p(value: float) -> str:
    if value > 0.999:
        return "> 0.999"
    if value < 0.001:
        return "< 0.001"
    return f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _drop_off_point(shape: JourneyShape, stages: Sequence[StageFigures], draws: _Draws) -> PainPoint:
    steps = [s for s in stages if s.step is not None]
    if not steps:
        return PainPoint("drop_off", "not_applicable", "A one-stage journey has no drop-off.")
    candidates = [s for s in steps if s.step is not None and s.step.enough_data]
    if not candidates:
        message = f"Not enough data: no stage was reached by {MIN_CUSTOMERS} customers in this period."
        return PainPoint("drop_off", "not_enough_data", message)
    samples = np.vstack([1.0 - draws.conversion[s.stage] for s in candidates])
    chances = _chances(samples, "max")
    means = [(s.step.drop_off.mean or 0.0) if s.step and s.step.drop_off else 0.0 for s in candidates]
    best = int(np.argmax(means))
    worst = candidates[best]
    assert worst.step is not None and worst.step.drop_off is not None
    runner, p_runner = _runner_up(candidates, chances, best)
    name, following = shape.stage_name(worst.stage), shape.stage_name(worst.step.to_stage)
    drop = worst.step.drop_off
    observed = 1.0 - (worst.step.observed or 0.0)
    message = (
        f"The largest drop-off is from {name} to {following}: {_pct(observed)} of the customers reaching "
        f"{name} do not reach {following} ({LEVEL:.0%} interval {_pct(drop.low)} to {_pct(drop.high)}). "
    )
    message += _certainty("the largest drop-off", chances[best], len(candidates), _step_name(shape, runner), p_runner)
    return PainPoint("drop_off", "ok", message, worst.stage, observed, drop, float(chances[best]), runner, p_runner)


def _satisfaction_point(shape: JourneyShape, stages: Sequence[StageFigures], draws: _Draws) -> PainPoint:
    rated = [s for s in stages if s.satisfaction is not None]
    if not shape.questions:
        return PainPoint("satisfaction", "not_applicable", "The journey has no rating questions.")
    candidates = [s for s in rated if s.satisfaction_enough_data]
    if not candidates:
        message = f"Not enough data: no stage's questions had {MIN_RATINGS} ratings each in this period."
        return PainPoint("satisfaction", "not_enough_data", message)
    samples = np.vstack([draws.satisfaction[s.stage] for s in candidates])
    chances = _chances(samples, "min")
    means = [s.satisfaction.mean if s.satisfaction and s.satisfaction.mean is not None else 1.0 for s in candidates]
    best = int(np.argmin(means))
    worst = candidates[best]
    value = worst.satisfaction
    assert value is not None and value.mean is not None and value.low is not None and value.high is not None
    runner, p_runner = _runner_up(candidates, chances, best)
    observed = worst.observed_satisfaction if worst.observed_satisfaction is not None else value.mean
    message = (
        f"The lowest satisfaction is at {shape.stage_name(worst.stage)}: {observed:.2f} on the 0-1 scale "
        f"(mean rating rescaled from the lowest to the highest rating; {LEVEL:.0%} interval {value.low:.2f} to "
        f"{value.high:.2f}). "
    )
    message += _certainty("the lowest", chances[best], len(candidates), runner and shape.stage_name(runner), p_runner)
    return PainPoint(
        "satisfaction", "ok", message, worst.stage, observed, value, float(chances[best]), runner, p_runner
    )


def _runner_up(candidates: Sequence[StageFigures], chances: FloatArray, best: int) -> tuple[str | None, float | None]:
    order = [i for i in np.argsort(-chances, kind="stable") if i != best]
    if not order:
        return None, None
    return candidates[order[0]].stage, float(chances[order[0]])


def _certainty(what: str, chance: float, candidates: int, runner: str | None, p_runner: float | None) -> str:
    """``runner``: the next likeliest, named as the message names the worst."""
    if candidates == 1:
        return "It is the only stage with enough data to compare."
    text = f"Probability that it really is {what}: {_p(chance)}"
    if runner is not None and p_runner is not None and chance < 0.9:
        text += f"; not settled: {runner} could be ({_p(p_runner)})"
    return text + "."


def _step_name(shape: JourneyShape, stage: str | None) -> str | None:
    if stage is None:
        return None
    keys = [s.key for s in shape.stages]
    following = keys[keys.index(stage) + 1]
    return f"{shape.stage_name(stage)} to {shape.stage_name(following)}"


# -- comparison ---------------------------------------------------------------------------------


def _difference(observed: float, first: FloatArray, second: FloatArray, mean: float) -> Difference:
    estimate = _draw_estimate(mean, first - second)
    assert estimate.low is not None and estimate.high is not None
    return Difference(observed, estimate, estimate.low > 0 or estimate.high < 0)


def differences(
    shape: JourneyShape, first: tuple[GroupMap, _Draws], second: tuple[GroupMap, _Draws]
) -> tuple[StageDifference, ...]:
    """First group minus second, per stage: step conversion (Beta draws) and each
    question's mean rating (Dirichlet draws); None where either has no data."""
    (map_a, draws_a), (map_b, draws_b) = first, second
    result = []
    for stage in shape.stages:
        a, b = map_a.stage(stage.key), map_b.stage(stage.key)
        conversion = None
        if stage.key in draws_a.conversion and stage.key in draws_b.conversion:
            assert a.step and b.step and a.step.conversion and b.step.conversion
            mean = (a.step.conversion.mean or 0.0) - (b.step.conversion.mean or 0.0)
            observed = (a.step.observed or 0.0) - (b.step.observed or 0.0)
            conversion = _difference(observed, draws_a.conversion[stage.key], draws_b.conversion[stage.key], mean)
        ratings: list[tuple[str, Difference | None]] = []
        for qa, qb in zip(a.questions, b.questions, strict=True):
            if qa.mean is None or qb.mean is None:
                ratings.append((qa.key, None))
                continue
            mean = (qa.mean.mean or 0.0) - (qb.mean.mean or 0.0)
            observed = (qa.observed_mean or 0.0) - (qb.observed_mean or 0.0)
            ratings.append((qa.key, _difference(observed, draws_a.mean[qa.key], draws_b.mean[qb.key], mean)))
        result.append(StageDifference(stage.key, conversion, tuple(ratings)))
    return tuple(result)


def build_map(
    shape: JourneyShape, options: MapOptions, by_persona: Mapping[str, Counts], *, now: datetime | None = None
) -> JourneyMap:
    """The map of already-read counts (pure)."""
    computed = [(group, group_map(shape, group, group.counts(by_persona))) for group in groups_for(shape, options)]
    diffs = differences(shape, computed[0][1], computed[1][1]) if len(computed) == 2 else None
    first_stage = shape.stages[0].key if shape.stages else None
    return JourneyMap(
        shape=shape,
        options=options,
        groups=tuple(result[0] for _group, result in computed),
        differences=diffs,
        first_stage_customers={
            persona: counts.reached.get(first_stage, 0) if first_stage else 0 for persona, counts in by_persona.items()
        },
        generated_at=now or utcnow(),
    )


def journey_map(session: Session, journey: Journey, options: MapOptions, *, now: datetime | None = None) -> JourneyMap:
    """The journey map: one statement over the counters, then the statistics."""
    shape = JourneyShape.of(journey)
    return build_map(shape, options, read_counts(session, journey.id, shape, options.period), now=now)


def today_utc(now: datetime | None = None) -> date:
    return (now or utcnow()).date()


# -- the experiments testing each stage ---------------------------------------------------------

SHOWN_STOPPED = 3  # the latest stopped experiments shown on a stage
SHOWN_ITERATIONS = 6  # the latest iterations shown of a clone chain


@dataclass(frozen=True)
class TreatmentLift:
    """A treatment's relative lift of conversion at the stage under test (the report's
    credible interval), P(better) and decision; None without data at that stage."""

    variant: str
    lift: Estimate | None
    p_better: float | None
    decision: str | None


@dataclass(frozen=True)
class Measured:
    """What a stopped experiment's report says: its recommendation and the lifts."""

    action: str
    summary: str
    treatments: tuple[TreatmentLift, ...]


@dataclass(frozen=True)
class StageExperiment:
    key: str
    name: str
    status: str
    target_stage: str
    cloned_from: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    measured: Measured | None  # stopped experiments only
    note: str | None = None  # why a stopped one has no measurement


@dataclass(frozen=True)
class StageTests:
    """The experiments testing one stage: running and paused ones, the latest
    stopped ones (of ``stopped_total``), and clone chains (iterations, oldest first;
    ``earlier`` iterations before the shown ones are left out)."""

    stage: str
    active: tuple[StageExperiment, ...] = ()
    stopped: tuple[StageExperiment, ...] = ()
    stopped_total: int = 0
    iterations: tuple[tuple[StageExperiment, ...], ...] = ()
    earlier: tuple[int, ...] = ()


Measure = Any  # Callable[[Experiment], Measured | None]


def stage_tests(session: Session, journey: Journey, measure: Measure) -> dict[str, StageTests]:
    """Per stage key of the journey: the experiments testing it (drafts only appear as
    the newest iteration of a chain). ``measure`` gives a stopped experiment's
    measurement; it is called only for the stopped experiments shown."""
    from .models import Experiment

    experiments = list(
        session.scalars(
            select(Experiment).where(Experiment.journey_id == journey.id).order_by(Experiment.created_at, Experiment.id)
        )
    )
    measured: dict[str, StageExperiment] = {}

    def view(experiment: Experiment) -> StageExperiment:
        if experiment.key not in measured:
            result, note = None, None
            if experiment.status == "stopped":
                result = measure(experiment)
                note = None if result is not None else "No measurement: the experiment could not be analysed."
            measured[experiment.key] = StageExperiment(
                key=experiment.key,
                name=experiment.name,
                status=experiment.status,
                target_stage=experiment.target_stage,
                cloned_from=experiment.cloned_from,
                started_at=experiment.started_at,
                stopped_at=experiment.stopped_at,
                measured=result,
                note=note,
            )
        return measured[experiment.key]

    tests: dict[str, StageTests] = {}
    for stage in journey.stages:
        testing = [e for e in experiments if e.target_stage == stage.key]
        active = [e for e in testing if e.status in ("running", "paused")]
        stopped = sorted(
            (e for e in testing if e.status == "stopped"),
            key=lambda e: (e.stopped_at is not None, e.stopped_at or e.created_at, e.id),
            reverse=True,
        )
        tests[stage.key] = StageTests(
            stage=stage.key,
            active=tuple(view(e) for e in active),
            stopped=tuple(view(e) for e in stopped[:SHOWN_STOPPED]),
            stopped_total=len(stopped),
        )
    chains = _chains(experiments)
    for chain in chains:
        stage = chain[-1].target_stage
        if stage in tests and len(chain) >= 2:
            shown = chain[-SHOWN_ITERATIONS:]
            current = tests[stage]
            tests[stage] = StageTests(
                stage=current.stage,
                active=current.active,
                stopped=current.stopped,
                stopped_total=current.stopped_total,
                iterations=(*current.iterations, tuple(view(e) for e in shown)),
                earlier=(*current.earlier, len(chain) - len(shown)),
            )
    return tests


def _chains(experiments: Sequence[Any]) -> list[list[Any]]:
    """Experiments grouped by clone chain (``cloned_from`` links followed to the first
    iteration), each chain oldest first (creation order); chains in order of their
    first iteration."""
    by_key = {e.key: e for e in experiments}
    chains: dict[str, list[Any]] = {}
    for experiment in experiments:
        root, seen = experiment, {experiment.key}
        while root.cloned_from in by_key and root.cloned_from not in seen:
            seen.add(root.cloned_from)
            root = by_key[root.cloned_from]
        chains.setdefault(root.key, []).append(experiment)
    return list(chains.values())


def measure_stopped(session: Session, experiment: Any) -> Measured | None:
    """A stopped experiment's lift and decision at the stage under test, as its report
    computes them (the same statistics, settings and seed), kept per worker: once
    stopped its data no longer moves. None when it cannot be analysed."""
    from flask import current_app

    from .reports.background import Memo

    memo = current_app.extensions.setdefault("journey_map_measured", Memo(512))
    key = (experiment.id, experiment.updated_at, experiment.stopped_at)
    measured: Measured | None = memo.get(key, lambda: _measure(session, experiment))
    return measured


def _measure(session: Session, experiment: Any) -> Measured | None:
    from analysis import analyze
    from analysis.exceptions import AnalysisInputError

    from .aggregation import experiment_stats
    from .experiment_settings import experiment_settings
    from .reports.decisions import comparable
    from .reports.options import SEED as REPORT_SEED

    try:
        stats = experiment_stats(session, experiment)
        prior, rule = experiment_settings(experiment)
        result = analyze(stats, prior=prior, rule=rule, seed=REPORT_SEED)
    except AnalysisInputError:
        return None
    target = result.stage(result.target_stage).metric("conversion")
    treatments = []
    for c in target.comparisons:
        shown = c.has_data and comparable(stats, result.target_stage, c.treatment)
        treatments.append(
            TreatmentLift(
                c.treatment,
                c.relative_lift if shown else None,
                c.p_better if shown else None,
                c.decision if shown else None,
            )
        )
    recommendation = result.recommendation
    return Measured(recommendation.action, recommendation.summary, tuple(treatments))
