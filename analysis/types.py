"""Typed inputs, settings and results of the analysis.

Inputs are summable sufficient statistics: per stage x variant, the exposed
customers, the customers who converted at that stage, and the histogram of their
latest satisfaction ratings over the scale. Anything (days, segments) can be
combined by adding them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .exceptions import AnalysisInputError


@dataclass(frozen=True)
class CellStats:
    """One stage x variant: exposed customers, converters, rating histogram.

    ``ratings[i]`` counts customers whose latest rating is ``scale_min + i``.
    """

    exposed: int
    converted: int
    ratings: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.exposed < 0 or self.converted < 0 or any(c < 0 for c in self.ratings):
            raise AnalysisInputError(f"counts must not be negative: {self}")
        if self.converted > self.exposed:
            raise AnalysisInputError(f"converted ({self.converted}) exceeds exposed ({self.exposed})")
        if sum(self.ratings) > self.exposed:
            raise AnalysisInputError(f"ratings ({sum(self.ratings)}) exceed exposed ({self.exposed})")

    def __add__(self, other: object) -> CellStats:
        if not isinstance(other, CellStats):
            return NotImplemented
        if len(self.ratings) != len(other.ratings):
            raise TypeError("cannot add rating histograms over different scales")
        return CellStats(
            self.exposed + other.exposed,
            self.converted + other.converted,
            tuple(a + b for a, b in zip(self.ratings, other.ratings)),
        )

    @classmethod
    def empty(cls, categories: int) -> CellStats:
        return cls(0, 0, (0,) * categories)


@dataclass(frozen=True)
class Scale:
    """An integer satisfaction scale, both ends included (1-5 CSAT, 0-10 NPS...)."""

    min: int = 1
    max: int = 5

    def __post_init__(self) -> None:
        if self.max <= self.min:
            raise AnalysisInputError(f"scale max ({self.max}) must exceed min ({self.min})")

    @property
    def categories(self) -> int:
        return self.max - self.min + 1


@dataclass(frozen=True)
class ExperimentStats:
    """Everything the analysis needs about one experiment (or one segment or day).

    ``cells[stage][variant]`` for every stage and variant listed; ``weights`` are the
    configured traffic shares of the variants (for the sample-ratio check);
    ``variants[0]`` need not be the control: ``control`` names it.
    """

    stages: tuple[str, ...]
    target_stage: str
    variants: tuple[str, ...]
    control: str
    weights: tuple[float, ...]
    scale: Scale
    cells: Mapping[str, Mapping[str, CellStats]]

    def __post_init__(self) -> None:
        if self.target_stage not in self.stages:
            raise AnalysisInputError(f"target stage {self.target_stage!r} is not among the stages")
        if self.control not in self.variants:
            raise AnalysisInputError(f"control {self.control!r} is not among the variants")
        if len(self.weights) != len(self.variants):
            raise AnalysisInputError("one weight per variant is needed")
        for stage in self.stages:
            for variant in self.variants:
                cell = self.cells.get(stage, {}).get(variant)
                if cell is None:
                    raise AnalysisInputError(f"no statistics for stage {stage!r}, variant {variant!r}")
                if len(cell.ratings) != self.scale.categories:
                    raise AnalysisInputError(
                        f"histogram of {stage}/{variant} has {len(cell.ratings)} bins, scale has {self.scale.categories}"
                    )

    def __add__(self, other: object) -> ExperimentStats:
        if not isinstance(other, ExperimentStats):
            return NotImplemented
        if (self.stages, self.variants, self.scale) != (other.stages, other.variants, other.scale):
            raise TypeError("cannot add statistics of differently shaped experiments")
        cells = {
            stage: {v: self.cells[stage][v] + other.cells[stage][v] for v in self.variants} for stage in self.stages
        }
        return ExperimentStats(
            self.stages, self.target_stage, self.variants, self.control, self.weights, self.scale, cells
        )


def _settings_from_mapping(cls, values: Mapping[str, Any] | None):
    """Build a settings dataclass from a plain mapping, rejecting unknown keys and
    values of the wrong type, so stored experiment settings fail loudly."""
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise AnalysisInputError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(cls, name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise AnalysisInputError(f"{name} must be true or false")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AnalysisInputError(f"{name} must be a number")
            if isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
                raise AnalysisInputError(f"{name} must be a whole number")
            value = type(default)(value)
        parsed[name] = value
    return cls(**parsed)


@dataclass(frozen=True)
class Prior:
    """Priors of the conjugate models.

    Beta(conversion_alpha, conversion_beta) on each conversion rate and a symmetric
    Dirichlet(rating_concentration) on each rating distribution.
    """

    conversion_alpha: float = 1.0
    conversion_beta: float = 1.0
    rating_concentration: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise AnalysisInputError(f"{f.name} must be positive")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Prior:
        return _settings_from_mapping(cls, values)


@dataclass(frozen=True)
class DecisionRule:
    """When a stage's result says ship, harmful, keep running or not enough data.

    - ``not_enough_data``: fewer than ``min_exposed`` customers in some variant;
    - ``ship``: P(better) >= ``ship_probability`` and the expected relative loss of
      choosing the treatment is below ``max_expected_loss``;
    - ``harmful``: P(better) <= ``harm_probability``;
    - otherwise ``keep_running``.
    Downstream stages and satisfaction act as guardrails: a treatment is not
    recommended when any of them is ``harmful`` at ``guardrail_probability``.
    """

    ship_probability: float = 0.95
    harm_probability: float = 0.05
    max_expected_loss: float = 0.01
    min_exposed: int = 100
    guardrail_probability: float = 0.05
    credible_level: float = 0.95
    srm_alpha: float = 0.001

    def __post_init__(self) -> None:
        for name in ("ship_probability", "harm_probability", "guardrail_probability", "credible_level", "srm_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise AnalysisInputError(f"{name} must be between 0 and 1")
        if self.harm_probability >= self.ship_probability:
            raise AnalysisInputError("harm_probability must be below ship_probability")
        if self.max_expected_loss < 0:
            raise AnalysisInputError("max_expected_loss must not be negative")
        if self.min_exposed < 0:
            raise AnalysisInputError("min_exposed must not be negative")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> DecisionRule:
        return _settings_from_mapping(cls, values)
