"""Bayesian analysis of journey experiments, from sufficient statistics only.

Pure functions on frozen dataclasses: nothing here imports Flask or SQLAlchemy, and
PyMC is imported only by the opt-in full model, ``analysis.hierarchical``.

``analyze(stats, prior=..., rule=..., seed=..., draws=...)`` is the fast conjugate
path behind every live report; ``analysis.hierarchical.fit_full_model`` returns the
same result types from a partially pooled PyMC model.

Peeking-safe decisions (``analysis.sequential``): ``ship`` and ``harmful`` also need an
anytime-valid bound of the effect past 0, so they stay valid however often a report is
looked at. ``plan``/``forecast`` estimate the days until such a call;
``segment_differences`` flags segments whose effect differs from the rest (exploratory,
no ship call per segment); ``analysis.operating`` simulates the rule over daily looks.
"""

from .conjugate import DEFAULT_DRAWS, FAST_DRAWS, MAX_P_BETTER_ERROR, analyze
from .exceptions import AnalysisInputError
from .planning import Forecast, Plan, forecast, plan
from .segments import SegmentDifference, segment_differences
from .sequential import SequentialDesign
from .types import (
    ArmSummary,
    CellStats,
    Comparison,
    DecisionRule,
    Diagnostics,
    Estimate,
    ExperimentResult,
    ExperimentStats,
    FunnelStep,
    Guardrail,
    Journey,
    JourneyVariant,
    MetricResult,
    Note,
    Prior,
    Recommendation,
    SampleRatio,
    Scale,
    StageResult,
)

__all__ = [
    "DEFAULT_DRAWS",
    "FAST_DRAWS",
    "MAX_P_BETTER_ERROR",
    "AnalysisInputError",
    "ArmSummary",
    "CellStats",
    "Comparison",
    "DecisionRule",
    "Diagnostics",
    "Estimate",
    "ExperimentResult",
    "ExperimentStats",
    "Forecast",
    "FunnelStep",
    "Guardrail",
    "Journey",
    "JourneyVariant",
    "MetricResult",
    "Note",
    "Plan",
    "Prior",
    "Recommendation",
    "SampleRatio",
    "Scale",
    "SegmentDifference",
    "SequentialDesign",
    "StageResult",
    "analyze",
    "forecast",
    "plan",
    "segment_differences",
]
