"""An experiment's analysis settings, read from its stored definition.

Both the live report and the full-model fit analyse with these, so they live apart
from either: the report must not import the fit runner to learn them.
"""

from __future__ import annotations

from dataclasses import replace

from analysis.types import DecisionRule, Prior

from .models import Experiment


def experiment_settings(experiment: Experiment, credible_level: float | None = None) -> tuple[Prior, DecisionRule]:
    """The experiment's own prior and decision rule (validated when it was defined),
    with the credible level overridden if asked."""
    rule = DecisionRule.from_mapping(experiment.decision)
    if credible_level is not None:
        rule = replace(rule, credible_level=credible_level)
    return Prior.from_mapping(experiment.prior), rule
