"""Scenario files: who the synthetic customers are and what the variants truly do.

A scenario (``experiments/scenarios/*.toml``, read with :mod:`tomllib`) names

- the ``journey`` and its ``stages`` in order, the persona attribute;
- ``personas``: share of customers, and per stage the probability of converting
  there given the previous stage (the first stage: given arrival);
- ``platforms``: shares (sent as the ``platform`` attribute);
- ``questions``: the rating questions (key, stage, scale, response rate: the share
  of customers converting at the stage who answer) with a rating distribution per
  persona (``default`` for the others), as weights over the scale's values;
- ``experiments``: by key, the definition fields that ``--create`` sends to the
  admin API (name, target stage, variants...), or ``file``: a definition file to
  read them from (relative to the scenario file; fields given beside it win), and,
  apart, ``effects`` per variant:
  ``conversion`` multiplies a stage's conversion probability, ``rating`` moves a
  question's mean rating by so many points, and ``personas.<key>`` overrides either
  for one persona;
- ``faults``: shares of duplicate sends, late events, events before assignment,
  events of customers never assigned, and optionally a ``sample_ratio`` fault;
- ``arrivals``: the weekday rhythm of customers over the simulated days;
- per experiment, for backfills (``expplatform simulate --backfill``): ``days``, the
  first and last simulated day it ran (1-based; default: all of them; one that ends
  before the last day is stopped then), and ``cloned_from``, the experiment it is
  the next iteration of (``--create`` clones that one, then applies the fields).

A rating's shift is applied on the ordered-logit scale (every cumulative log-odds
moved by the same amount), solved per persona so that the persona's mean rating moves
by the points asked: the distribution keeps its shape and stays on its scale.

``extends = "<file stem>"`` reads another file of the same folder first and lays this
one over it (tables merged key by key), so the scenarios share one description of the
customers. Everything is checked on loading, and every problem is named.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ..bundled import bundled_dir

MAX_EXTENDS = 5


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``problems`` names each fault by its path."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Question:
    key: str
    stage: str
    scale: tuple[int, int]
    response_rate: float
    ratings: Mapping[str, tuple[float, ...]]  # persona -> probabilities over the scale, low to high

    @property
    def values(self) -> range:
        return range(self.scale[0], self.scale[1] + 1)


@dataclass(frozen=True)
class Effect:
    """What one variant truly does, for everyone and per persona: stage -> conversion
    multiplier, question -> shift of the mean rating in points."""

    conversion: Mapping[str, float] = field(default_factory=dict)
    rating: Mapping[str, float] = field(default_factory=dict)
    personas: Mapping[str, Effect] = field(default_factory=dict)

    def multiplier(self, stage: str, persona: str) -> float:
        own = self.personas.get(persona)
        if own is not None and stage in own.conversion:
            return own.conversion[stage]
        return self.conversion.get(stage, 1.0)

    def shift(self, question: str, persona: str) -> float:
        own = self.personas.get(persona)
        if own is not None and question in own.rating:
            return own.rating[question]
        return self.rating.get(question, 0.0)


NO_EFFECT = Effect()


@dataclass(frozen=True)
class Experiment:
    key: str
    definition: Mapping[str, Any]  # as the admin API takes it (without journey/stages/scale: added on create)
    variants: tuple[str, ...]
    weights: tuple[float, ...]  # normalised
    control: str
    effects: Mapping[str, Effect]
    days: tuple[int, int] | None = None  # first and last simulated day it ran (1-based); None: all
    cloned_from: str | None = None

    def effect(self, variant: str) -> Effect:
        return self.effects.get(variant, NO_EFFECT)

    def runs_on_last_day(self, days: int) -> bool:
        """Whether it still runs at the end of a run of ``days`` simulated days."""
        return self.days is None or self.days[1] >= days


@dataclass(frozen=True)
class SampleRatioFault:
    """A share of the customers whose variant (computed with the published bucketing)
    would be ``variant`` never call assign for ``experiment`` (say a cached page that
    skips the call): that variant's exposures fall short, as a broken split's would."""

    experiment: str
    variant: str
    skip_share: float


@dataclass(frozen=True)
class Faults:
    duplicate_rate: float = 0.0  # share of events sent a second time, later, with the same event_id
    late_rate: float = 0.0  # share of events held back and sent at the end of the run
    before_assignment_rate: float = 0.0  # share of customers who send an event before the assign call
    unknown_customer_rate: float = 0.0  # per customer, a customer never assigned who sends events
    sample_ratio: SampleRatioFault | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    journey: str
    persona_attribute: str
    stages: tuple[str, ...]
    personas: Mapping[str, float]  # key -> share (normalised)
    conversion: Mapping[str, Mapping[str, float]]  # persona -> stage -> P(convert | previous stage)
    platforms: Mapping[str, float]  # key -> share (normalised)
    questions: Mapping[str, Question]
    experiments: Mapping[str, Experiment]
    faults: Faults
    weekday_weights: tuple[float, ...]  # Monday first
    legacy_scale: tuple[int, int]
    source: str = ""

    def questions_at(self, stage: str) -> list[Question]:
        return [q for q in self.questions.values() if q.stage == stage]


# -- rating shifts ---------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def shifted(probabilities: Sequence[float], delta: float) -> tuple[float, ...]:
    """The distribution with every cumulative log-odds moved by ``delta`` (ordered
    logit): positive ``delta`` moves mass to higher ratings. Zero cumulative
    probabilities stay 0 and full ones 1, so impossible ratings stay impossible."""
    cumulative: list[float] = []
    running = 0.0
    for p in probabilities[:-1]:
        running += p
        if running <= 1e-12:
            cumulative.append(0.0)
        elif running >= 1.0 - 1e-12:
            cumulative.append(1.0)
        else:
            cumulative.append(_sigmoid(_logit(running) - delta))
    cumulative.append(1.0)
    out = []
    previous = 0.0
    for c in cumulative:
        out.append(max(c - previous, 0.0))
        previous = c
    total = sum(out)
    return tuple(p / total for p in out)


def mean_of(probabilities: Sequence[float], low: int) -> float:
    return sum((low + i) * p for i, p in enumerate(probabilities))


def shift_for_mean(probabilities: Sequence[float], low: int, points: float) -> float:
    """The ordered-logit ``delta`` that moves the mean rating by ``points``; raises
    ValueError when the scale cannot hold the moved mean."""
    if points == 0:
        return 0.0
    target = mean_of(probabilities, low) + points
    lo, hi = -40.0, 40.0
    if not mean_of(shifted(probabilities, lo), low) < target < mean_of(shifted(probabilities, hi), low):
        raise ValueError(f"a mean moved by {points:+g} points is outside what the scale can hold")
    for _ in range(100):
        mid = (lo + hi) / 2
        if mean_of(shifted(probabilities, mid), low) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# -- reading ----------------------------------------------------------------------------------


def scenarios_dir() -> Path:
    return bundled_dir("experiments") / "scenarios"


def available() -> list[str]:
    """The names of the bundled scenarios (files that drive experiments)."""
    names = []
    for path in sorted(scenarios_dir().glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if data.get("experiments"):
            names.append(path.stem)
    return names


def find(name_or_path: str) -> Path:
    """A scenario file: a path, or the name of a bundled scenario."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    bundled = scenarios_dir() / f"{name_or_path}.toml"
    if bundled.exists():
        return bundled
    raise ScenarioError(name_or_path, [f"no such scenario; the bundled ones are: {', '.join(available()) or 'none'}"])


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_data(path: Path, depth: int = 0) -> dict[str, Any]:
    """The file's tables, laid over the file it ``extends`` (if any)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), [f"not valid TOML: {exc}"]) from None
    _read_definition_files(path, data)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or depth >= MAX_EXTENDS:
        raise ScenarioError(str(path), ["extends: must name another file of the folder (at most 5 deep)"])
    return _merge(read_data(path.parent / f"{base}.toml", depth + 1), data)


def _read_definition_files(path: Path, data: dict[str, Any]) -> None:
    """Lay each experiment's fields over the definition file it names with ``file``."""
    experiments = data.get("experiments")
    if not isinstance(experiments, dict):
        return
    for key, spec in experiments.items():
        if not isinstance(spec, Mapping) or "file" not in spec:
            continue
        where = f"experiments.{key}.file"
        if not isinstance(spec["file"], str):
            raise ScenarioError(str(path), [f"{where}: must be the path of a definition file"])
        target = path.parent / spec["file"]
        try:
            definition = tomllib.loads(target.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(str(path), [f"{where}: cannot read {target}: {exc}"]) from None
        experiments[key] = _merge(definition, {k: v for k, v in spec.items() if k != "file"})


def load(name_or_path: str) -> Scenario:
    path = find(name_or_path)
    return parse(read_data(path), source=str(path), default_name=path.stem)


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, why: str) -> None:
        self.items.append(f"{where}: {why}")


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shares(problems: _Problems, where: str, raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping) or not raw:
        problems.add(where, "must be a table of key = share")
        return {}
    good = {}
    for key, share in raw.items():
        if not _number(share) or share <= 0:
            problems.add(f"{where}.{key}", "must be a positive number")
        else:
            good[key] = float(share)
    total = sum(good.values())
    return {k: v / total for k, v in good.items()} if total else {}


def _scale(raw: Any) -> tuple[int, int] | None:
    ok = isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    return (raw[0], raw[1]) if ok and raw[0] < raw[1] else None


def _rate(problems: _Problems, where: str, raw: Any, default: float = 0.0) -> float:
    if raw is None:
        return default
    if not _number(raw) or not 0 <= raw <= 1:
        problems.add(where, "must be a number from 0 to 1")
        return default
    return float(raw)


def parse(data: Mapping[str, Any], *, source: str = "scenario", default_name: str = "scenario") -> Scenario:
    """A checked :class:`Scenario` from a file's tables; ScenarioError names every problem."""
    problems = _Problems()
    known = {
        "name",
        "description",
        "journey",
        "persona_attribute",
        "stages",
        "personas",
        "platforms",
        "questions",
        "experiments",
        "faults",
        "arrivals",
        "legacy_scale",
    }
    for key in sorted(set(data) - known):
        problems.add(key, "unknown field")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or len(name) > 40 or not name.replace("-", "").isalnum():
        problems.add("name", "must be 1-40 letters, digits or '-'")
        name = "scenario"
    stages_raw = data.get("stages")
    if (
        not isinstance(stages_raw, list)
        or not stages_raw
        or not all(isinstance(s, str) and s for s in stages_raw)
        or len(set(stages_raw)) != len(stages_raw)
    ):
        problems.add("stages", "must list the journey's stage keys in order, each once")
        stages_raw = []
    stages = tuple(stages_raw)

    personas_raw = data.get("personas")
    shares: dict[str, float] = {}
    conversion: dict[str, dict[str, float]] = {}
    if not isinstance(personas_raw, Mapping) or not personas_raw:
        problems.add("personas", "must be a table of personas")
        personas_raw = {}
    for persona, spec in personas_raw.items():
        where = f"personas.{persona}"
        if not isinstance(spec, Mapping):
            problems.add(where, "must be a table with share and conversion")
            continue
        share = spec.get("share")
        if not _number(share) or share <= 0:
            problems.add(f"{where}.share", "must be a positive number")
            continue
        shares[persona] = float(share)
        steps = spec.get("conversion")
        if not isinstance(steps, Mapping):
            problems.add(f"{where}.conversion", "must give, per stage, the probability of converting there")
            continue
        for stage in sorted(set(steps) - set(stages)):
            problems.add(f"{where}.conversion.{stage}", "not a stage of the scenario")
        conversion[persona] = {}
        for stage in stages:
            if stage not in steps:
                problems.add(f"{where}.conversion.{stage}", "missing")
            else:
                conversion[persona][stage] = _rate(problems, f"{where}.conversion.{stage}", steps[stage])
    total = sum(shares.values())
    personas = {k: v / total for k, v in shares.items()} if total else {}

    platforms = _shares(problems, "platforms", data.get("platforms", {"web": 1.0}))

    questions: dict[str, Question] = {}
    questions_raw = data.get("questions", {})
    if not isinstance(questions_raw, Mapping):
        problems.add("questions", "must be a table of questions")
        questions_raw = {}
    for key, spec in questions_raw.items():
        question = _question(problems, f"questions.{key}", key, spec, stages, personas)
        if question is not None:
            questions[key] = question

    experiments: dict[str, Experiment] = {}
    experiments_raw = data.get("experiments")
    if not isinstance(experiments_raw, Mapping) or not experiments_raw:
        problems.add("experiments", "must be a table of the experiments the scenario drives, by key")
        experiments_raw = {}
    for key, spec in experiments_raw.items():
        experiment = _experiment(problems, f"experiments.{key}", key, spec, stages, personas, conversion, questions)
        if experiment is not None:
            experiments[key] = experiment

    for experiment in experiments.values():
        if experiment.cloned_from is not None and experiment.cloned_from not in experiments:
            problems.add(f"experiments.{experiment.key}.cloned_from", "must name another experiment of the scenario")
    faults = _faults(problems, data.get("faults", {}), experiments)

    arrivals = data.get("arrivals", {})
    weekday_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.5)
    if isinstance(arrivals, Mapping) and "weekday_weights" in arrivals:
        raw = arrivals["weekday_weights"]
        if isinstance(raw, list) and len(raw) == 7 and all(_number(w) and w > 0 for w in raw):
            weekday_weights = tuple(float(w) for w in raw)
        else:
            problems.add("arrivals.weekday_weights", "must be 7 positive numbers, Monday first")

    legacy_scale = _scale(data.get("legacy_scale", [1, 5]))
    if legacy_scale is None:
        problems.add("legacy_scale", "must be [min, max], integers")

    for text_field in ("description", "journey", "persona_attribute"):
        if text_field in data and not isinstance(data[text_field], str):
            problems.add(text_field, "must be text")
    if problems.items:
        raise ScenarioError(source, problems.items)
    return Scenario(
        name=name,
        description=str(data.get("description", "")),
        journey=str(data.get("journey", "default")),
        persona_attribute=str(data.get("persona_attribute", "persona")),
        stages=stages,
        personas=personas,
        conversion=conversion,
        platforms=platforms,
        questions=questions,
        experiments=experiments,
        faults=faults,
        weekday_weights=weekday_weights,
        legacy_scale=legacy_scale or (1, 5),
        source=source,
    )


def _question(
    problems: _Problems,
    where: str,
    key: str,
    spec: Any,
    stages: tuple[str, ...],
    personas: Mapping[str, float],
) -> Question | None:
    if not isinstance(spec, Mapping):
        problems.add(where, "must be a table with stage, scale and ratings")
        return None
    before = len(problems.items)
    stage = spec.get("stage")
    if stage not in stages:
        problems.add(f"{where}.stage", "must be one of the scenario's stages")
    scale = _scale(spec.get("scale"))
    if scale is None:
        problems.add(f"{where}.scale", "must be [min, max], integers")
        return None
    size = scale[1] - scale[0] + 1
    response_rate = _rate(problems, f"{where}.response_rate", spec.get("response_rate"), 1.0)
    ratings_raw = spec.get("ratings")
    if not isinstance(ratings_raw, Mapping):
        problems.add(f"{where}.ratings", "must give weights over the scale per persona (or default)")
        return None
    ratings: dict[str, tuple[float, ...]] = {}
    for persona, weights in ratings_raw.items():
        if persona != "default" and persona not in personas:
            problems.add(f"{where}.ratings.{persona}", "not a persona of the scenario")
        elif (
            not isinstance(weights, list)
            or len(weights) != size
            or not all(_number(w) and w >= 0 for w in weights)
            or not sum(weights) > 0
        ):
            problems.add(f"{where}.ratings.{persona}", f"must be {size} weights (>= 0, not all 0), lowest rating first")
        else:
            ratings[persona] = tuple(w / sum(weights) for w in weights)
    for persona in personas:
        if persona not in ratings:
            if "default" in ratings:
                ratings[persona] = ratings["default"]
            else:
                problems.add(f"{where}.ratings", f"no distribution for persona {persona!r} and no default")
    ratings.pop("default", None)
    if len(problems.items) > before:
        return None
    return Question(key, str(stage), scale, response_rate, ratings)


def _effect(
    problems: _Problems, where: str, raw: Any, stages: tuple[str, ...], questions: Mapping[str, Question]
) -> Effect:
    if not isinstance(raw, Mapping):
        problems.add(where, "must be a table with conversion and/or rating")
        return NO_EFFECT
    for key in sorted(set(raw) - {"conversion", "rating", "personas"}):
        problems.add(f"{where}.{key}", "unknown field")
    conversion: dict[str, float] = {}
    for stage, factor in (raw.get("conversion") or {}).items():
        if stage not in stages:
            problems.add(f"{where}.conversion.{stage}", "not a stage of the scenario")
        elif not _number(factor) or factor <= 0:
            problems.add(f"{where}.conversion.{stage}", "must be a positive multiplier")
        else:
            conversion[stage] = float(factor)
    rating: dict[str, float] = {}
    for question, points in (raw.get("rating") or {}).items():
        if question not in questions:
            problems.add(f"{where}.rating.{question}", "not a question of the scenario")
        elif not _number(points):
            problems.add(f"{where}.rating.{question}", "must be a number of points")
        else:
            rating[question] = float(points)
    return Effect(conversion, rating)


def _experiment(
    problems: _Problems,
    where: str,
    key: str,
    spec: Any,
    stages: tuple[str, ...],
    personas: Mapping[str, float],
    conversion: Mapping[str, Mapping[str, float]],
    questions: Mapping[str, Question],
) -> Experiment | None:
    if not isinstance(spec, Mapping):
        problems.add(where, "must be a table: the definition's fields and effects")
        return None
    definition = {k: v for k, v in spec.items() if k not in ("effects", "days", "cloned_from")}
    definition["key"] = key
    days = _days(problems, f"{where}.days", spec.get("days"))
    cloned_from = spec.get("cloned_from")
    if cloned_from is not None and not isinstance(cloned_from, str):
        problems.add(f"{where}.cloned_from", "must be the key of another experiment")
        cloned_from = None
    variants_raw = definition.get("variants")
    if not isinstance(variants_raw, list) or len(variants_raw) < 2:
        problems.add(f"{where}.variants", "must list at least two variants ({key, weight, control})")
        return None
    variants: list[str] = []
    weights: list[float] = []
    control = None
    for i, variant in enumerate(variants_raw):
        if not isinstance(variant, Mapping) or not isinstance(variant.get("key"), str):
            problems.add(f"{where}.variants.{i}", "must be a table with a key")
            return None
        variants.append(variant["key"])
        weight = variant.get("weight", 1)
        if not _number(weight) or weight <= 0:
            problems.add(f"{where}.variants.{i}.weight", "must be a positive number")
            return None
        weights.append(float(weight))
        if variant.get("control") is True:
            control = variant["key"]
    if "target_stage" in definition and definition["target_stage"] not in stages:
        problems.add(f"{where}.target_stage", "must be one of the scenario's stages")
    effects: dict[str, Effect] = {}
    effects_raw = spec.get("effects", {})
    if not isinstance(effects_raw, Mapping):
        problems.add(f"{where}.effects", "must be a table by variant")
        effects_raw = {}
    for variant, raw in effects_raw.items():
        at = f"{where}.effects.{variant}"
        if variant not in variants:
            problems.add(at, "not a variant of the experiment")
            continue
        effect = _effect(problems, at, raw, stages, questions)
        own: dict[str, Effect] = {}
        for persona, persona_raw in ((raw.get("personas") or {}) if isinstance(raw, Mapping) else {}).items():
            if persona not in personas:
                problems.add(f"{at}.personas.{persona}", "not a persona of the scenario")
            else:
                own[persona] = _effect(problems, f"{at}.personas.{persona}", persona_raw, stages, questions)
        effect = Effect(effect.conversion, effect.rating, own)
        for persona in personas:
            for stage in stages:
                p = conversion.get(persona, {}).get(stage, 0.0) * effect.multiplier(stage, persona)
                if p > 1:
                    problems.add(f"{at}.conversion.{stage}", f"makes {persona}'s conversion probability {p:.3g} > 1")
            for question in questions.values():
                points = effect.shift(question.key, persona)
                try:
                    shift_for_mean(question.ratings[persona], question.scale[0], points)
                except ValueError as exc:
                    problems.add(f"{at}.rating.{question.key}", f"for {persona}: {exc}")
        effects[variant] = effect
    total = sum(weights)
    return Experiment(
        key=key,
        definition=definition,
        variants=tuple(variants),
        weights=tuple(w / total for w in weights),
        control=control or variants[0],
        effects=effects,
        days=days,
        cloned_from=cloned_from,
    )


def _days(problems: _Problems, where: str, raw: Any) -> tuple[int, int] | None:
    if raw is None:
        return None
    ok = isinstance(raw, list) and len(raw) == 2 and all(isinstance(d, int) and not isinstance(d, bool) for d in raw)
    if not ok or not 1 <= raw[0] <= raw[1]:
        problems.add(where, "must be [first, last]: simulated days, 1-based, first <= last")
        return None
    return (raw[0], raw[1])


def _faults(problems: _Problems, raw: Any, experiments: Mapping[str, Experiment]) -> Faults:
    if not isinstance(raw, Mapping):
        problems.add("faults", "must be a table")
        return Faults()
    rates = ("duplicate_rate", "late_rate", "before_assignment_rate", "unknown_customer_rate")
    for key in sorted(set(raw) - {*rates, "sample_ratio"}):
        problems.add(f"faults.{key}", "unknown field")
    values = {name: _rate(problems, f"faults.{name}", raw.get(name)) for name in rates}
    sample_ratio = None
    srm = raw.get("sample_ratio")
    if srm is not None:
        experiment = experiments.get(srm.get("experiment", "")) if isinstance(srm, Mapping) else None
        if experiment is None or not isinstance(srm, Mapping):
            problems.add("faults.sample_ratio.experiment", "must name an experiment of the scenario")
        elif srm.get("variant") not in experiment.variants:
            problems.add("faults.sample_ratio.variant", f"must be a variant of {experiment.key!r}")
        elif experiment.definition.get("layer") is not None:
            problems.add("faults.sample_ratio", "needs an experiment outside any layer (its variant is computed here)")
        else:
            share = srm.get("skip_share")
            if not _number(share) or not 0 < share <= 1:
                problems.add("faults.sample_ratio.skip_share", "must be a number above 0, at most 1")
            else:
                sample_ratio = SampleRatioFault(experiment.key, str(srm["variant"]), float(share))
    return Faults(**values, sample_ratio=sample_ratio)
