"""Typed inputs, settings and results of the analysis.

Inputs are summable sufficient statistics: per stage x variant, the exposed
customers, the customers who converted at that stage, and the histogram of their
latest satisfaction ratings over the stage's scale (each stage may have its own, or no
rating question and an empty histogram). Anything (days, segments) can be
combined by adding them. Results are frozen dataclasses whose ``to_dict()`` is
JSON-ready (no NaN or infinity: undefined numbers are None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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
            tuple(a + b for a, b in zip(self.ratings, other.ratings, strict=True)),
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

    @property
    def top_box_min(self) -> int:
        """Lowest rating in the top box: the top two ratings on scales of five or more
        (4-5 on 1-5, 9-10 on 0-10), the top one on shorter scales."""
        return self.max - 1 if self.categories >= 5 else self.max

    @property
    def has_nps(self) -> bool:
        """NPS is defined on the 0-10 recommendation scale only."""
        return (self.min, self.max) == (0, 10)


@dataclass(frozen=True)
class ExperimentStats:
    """Everything the analysis needs about one experiment (or one segment or day).

    ``cells[stage][variant]`` for every stage and variant listed; ``weights`` are the
    configured traffic shares of the variants (for the sample-ratio check);
    ``variants[0]`` need not be the control: ``control`` names it.

    Each stage may ask its own rating question on its own scale: ``stage_scales[stage]``
    is that stage's scale, or None when the stage has no rating question (its cells
    then have no histogram: ``ratings == ()``); a stage not in ``stage_scales`` uses
    ``scale``. ``scale_of(stage)`` says which applies.
    """

    stages: tuple[str, ...]
    target_stage: str
    variants: tuple[str, ...]
    control: str
    weights: tuple[float, ...]
    scale: Scale
    cells: Mapping[str, Mapping[str, CellStats]]
    stage_scales: Mapping[str, Scale | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target_stage not in self.stages:
            raise AnalysisInputError(f"target stage {self.target_stage!r} is not among the stages")
        if self.control not in self.variants:
            raise AnalysisInputError(f"control {self.control!r} is not among the variants")
        if len(self.weights) != len(self.variants):
            raise AnalysisInputError("one weight per variant is needed")
        unknown = [stage for stage in self.stage_scales if stage not in self.stages]
        if unknown:
            raise AnalysisInputError(f"stage_scales names stages that are not among the stages: {unknown!r}")
        for stage, scale in self.stage_scales.items():
            if scale is not None and not isinstance(scale, Scale):
                raise AnalysisInputError(f"the scale of stage {stage!r} must be a Scale or None, not {scale!r}")
        for stage in self.stages:
            scale = self.scale_of(stage)
            categories = scale.categories if scale is not None else 0
            for variant in self.variants:
                cell = self.cells.get(stage, {}).get(variant)
                if cell is None:
                    raise AnalysisInputError(f"no statistics for stage {stage!r}, variant {variant!r}")
                if len(cell.ratings) != categories:
                    if scale is None:
                        raise AnalysisInputError(
                            f"stage {stage!r} has no rating question, but the histogram of {stage}/{variant} "
                            f"has {len(cell.ratings)} bins (it must be empty)"
                        )
                    raise AnalysisInputError(
                        f"histogram of {stage}/{variant} has {len(cell.ratings)} bins, scale has {categories}"
                    )

    def scale_of(self, stage: str) -> Scale | None:
        """The rating scale of ``stage``: its entry in ``stage_scales`` (None: no rating
        question there), else the experiment's ``scale``."""
        if stage in self.stage_scales:
            return self.stage_scales[stage]
        return self.scale

    def __add__(self, other: object) -> ExperimentStats:
        if not isinstance(other, ExperimentStats):
            return NotImplemented
        if (self.stages, self.variants, self.scale) != (other.stages, other.variants, other.scale) or dict(
            self.stage_scales
        ) != dict(other.stage_scales):
            raise TypeError("cannot add statistics of differently shaped experiments")
        cells = {
            stage: {v: self.cells[stage][v] + other.cells[stage][v] for v in self.variants} for stage in self.stages
        }
        return ExperimentStats(
            self.stages,
            self.target_stage,
            self.variants,
            self.control,
            self.weights,
            self.scale,
            cells,
            stage_scales=self.stage_scales,
        )


_Settings = TypeVar("_Settings", bound="DataclassInstance")


def _settings_from_mapping(cls: type[_Settings], values: Mapping[str, Any] | None) -> _Settings:
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


# -- results ------------------------------------------------------------------------

Metric = Literal["conversion", "mean_rating", "top_box", "nps"]
Decision = Literal["ship", "harmful", "keep_running", "not_enough_data"]
Action = Literal["ship", "keep_control", "keep_running", "not_enough_data", "investigate"]
Method = Literal["conjugate", "hierarchical"]

DECIDING_METRICS: tuple[Metric, ...] = ("conversion", "mean_rating")
"""Metrics whose comparisons get a decision; top-box share and NPS are reported
alongside the mean rating but summarise the same histograms, so they do not vote."""


class _Serialisable:
    if TYPE_CHECKING:  # set on every subclass by @dataclass
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists); no NaN or infinity can be
        in here, since every float field is finite or None by construction."""
        return asdict(self)


@dataclass(frozen=True)
class Estimate(_Serialisable):
    """Posterior mean and equal-tailed credible interval at the rule's level."""

    mean: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Note(_Serialisable):
    """A status code from ``analysis.messages`` with its sentence and where it applies."""

    code: str
    message: str
    stage: str | None = None
    variant: str | None = None
    metric: str | None = None


@dataclass(frozen=True)
class ArmSummary(_Serialisable):
    """One variant's posterior for one stage and metric.

    ``n`` is exposed customers (conversion) or rated customers (satisfaction);
    ``observed`` the sample value (None without data). ``expected_loss`` is
    E[max over variants - this variant] (A/B/n), ``expected_loss_relative`` the same
    as a share of the best variant's value. ``conjugate_params`` are the Beta
    (alpha, beta) or Dirichlet alphas of the conjugate posterior (None for the full
    model).
    """

    variant: str
    n: int
    observed: float | None
    posterior: Estimate | None
    p_best: float | None
    expected_loss: float | None
    expected_loss_relative: float | None
    conjugate_params: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Comparison(_Serialisable):
    """A treatment against the control for one stage and metric.

    ``relative_lift`` is treatment/control - 1, ``absolute_difference`` treatment -
    control; ``p_better`` is P(treatment > control) and ``p_better_error`` its Monte
    Carlo standard error (0 when computed exactly, None for MCMC draws);
    ``expected_loss`` is E[max(control - treatment, 0)], the expected cost of shipping
    the treatment, and ``expected_loss_relative`` E[max(1 - treatment/control, 0)].
    ``decision`` is None for metrics that do not decide (top-box share, NPS).

    Peeking-safe fields (``analysis.sequential``), for the deciding metrics:
    ``always_valid_interval`` is the anytime-valid interval of the effect on
    ``always_valid_scale`` (``relative_lift`` for conversion, ``absolute_difference``
    for the mean rating): its mean is the point estimate, its ends hold at every look
    at once with probability ``always_valid_level`` (each end alone: the rule's ship
    or harm budget after the split over treatments). ``ship`` needs the low end above
    0, ``harmful`` the high end below 0. ``decision_basis`` says in words why the
    decision is what it is. ``has_data`` is False when an arm has no exposed customers
    (conversion) or no ratings (rating metrics): then no number here means anything
    (P(better) and the estimates are None) and there is no decision.
    """

    treatment: str
    status: str
    relative_lift: Estimate | None
    absolute_difference: Estimate | None
    p_better: float | None
    p_better_error: float | None
    expected_loss: float | None
    expected_loss_relative: float | None
    decision: Decision | None
    has_data: bool = True
    always_valid_interval: Estimate | None = None
    always_valid_scale: str | None = None
    always_valid_level: float | None = None
    decision_basis: str | None = None


@dataclass(frozen=True)
class MetricResult(_Serialisable):
    stage: str
    metric: Metric
    status: str
    arms: tuple[ArmSummary, ...]
    comparisons: tuple[Comparison, ...]

    def arm(self, variant: str) -> ArmSummary:
        return next(a for a in self.arms if a.variant == variant)

    def comparison(self, treatment: str) -> Comparison:
        return next(c for c in self.comparisons if c.treatment == treatment)


@dataclass(frozen=True)
class StageResult(_Serialisable):
    """One stage's metrics: ``conversion`` always; ``mean_rating`` and ``top_box`` only
    when the stage has a rating question (``scale`` is its scale, None without one);
    ``nps`` only on the 0-10 scale."""

    stage: str
    metrics: tuple[MetricResult, ...]
    scale: Scale | None

    def metric(self, name: str) -> MetricResult:
        return next(m for m in self.metrics if m.metric == name)

    def has(self, name: str) -> bool:
        """Whether the stage reports metric ``name`` (see the class docstring)."""
        return any(m.metric == name for m in self.metrics)


@dataclass(frozen=True)
class FunnelStep(_Serialisable):
    """Conversion into ``stage`` given the previous stage (given exposure for the
    first), as the ratio of the two stages' conversion rates; ``lift`` is this
    variant's step against the control's (None for the control)."""

    stage: str
    observed: float | None
    rate: Estimate | None
    lift: Estimate | None


@dataclass(frozen=True)
class JourneyVariant(_Serialisable):
    """One variant's journey: end-to-end conversion (customers converting at the final
    stage over exposed), its funnel, and for a treatment the step whose conditional
    conversion it lifts most (``largest_gain_stage``) and lowers most
    (``largest_loss_stage``, the journey's pain point), None when no step moves that way."""

    variant: str
    end_to_end: Estimate | None
    steps: tuple[FunnelStep, ...]
    largest_gain_stage: str | None
    largest_loss_stage: str | None


@dataclass(frozen=True)
class Journey(_Serialisable):
    final_stage: str
    variants: tuple[JourneyVariant, ...]
    end_to_end: tuple[Comparison, ...]  # lift of end-to-end conversion, per treatment


@dataclass(frozen=True)
class SampleRatio(_Serialisable):
    """Chi-square of exposed customers against the configured weights (on the stage
    with the most extreme counts, if stages differ); ``flagged`` at p < srm_alpha."""

    stage: str | None
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi_square: float | None
    p_value: float | None
    flagged: bool


@dataclass(frozen=True)
class Guardrail(_Serialisable):
    """A guardrail a treatment breaks: P(better) at or below guardrail_probability on
    a downstream stage's conversion or on the mean rating of a stage with a rating
    question, and (peeking-safe rule) the anytime-valid upper bound
    ``always_valid_high`` of the effect below 0 at level ``alpha``: the guardrail
    budget split over the treatment's guardrails."""

    variant: str
    stage: str
    metric: Metric
    p_better: float
    always_valid_high: float | None = None
    alpha: float | None = None


@dataclass(frozen=True)
class Recommendation(_Serialisable):
    action: Action
    variant: str | None
    summary: str
    reasons: tuple[str, ...]
    guardrails: tuple[Guardrail, ...]


@dataclass(frozen=True)
class Diagnostics(_Serialisable):
    """Sampler health of the full model (ArviZ): all must pass for status ``ok``."""

    r_hat_max: float | None
    ess_bulk_min: float | None
    ess_tail_min: float | None
    divergences: int
    draws: int
    chains: int
    sampler: str
    passed: bool
    seconds_compile: float | None = None
    seconds_sampling: float | None = None


@dataclass(frozen=True)
class ExperimentResult(_Serialisable):
    """Everything a report shows. ``status`` is the most serious experiment-level code
    (see ``analysis.messages``); ``notes`` lists every code raised, with sentences."""

    method: Method
    status: str
    control: str
    target_stage: str
    credible_level: float
    draws: int
    stages: tuple[StageResult, ...]
    journey: Journey
    sample_ratio: SampleRatio
    recommendation: Recommendation
    notes: tuple[Note, ...]
    diagnostics: Diagnostics | None = None

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.stage == name)
