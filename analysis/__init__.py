"""Bayesian analysis of journey experiments, from sufficient statistics only.

Pure functions on frozen dataclasses: nothing here imports Flask or SQLAlchemy, and
PyMC is imported only by the opt-in full model, ``analysis.hierarchical``.

``analyze(stats, prior=..., rule=..., seed=..., draws=...)`` is the fast conjugate
path behind every live report; ``analysis.hierarchical.fit_full_model`` returns the
same result types from a partially pooled PyMC model.
"""

from .conjugate import DEFAULT_DRAWS, FAST_DRAWS, MAX_P_BETTER_ERROR, analyze
from .exceptions import AnalysisInputError
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
    "FunnelStep",
    "Guardrail",
    "Journey",
    "JourneyVariant",
    "MetricResult",
    "Note",
    "Prior",
    "Recommendation",
    "SampleRatio",
    "Scale",
    "SequentialDesign",
    "StageResult",
    "analyze",
]
