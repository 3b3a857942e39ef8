"""The duration estimate on the experiment form (new and edit): how many customers and
days until the peeking-safe rule makes a call, before the experiment is saved.

Its boxes (baseline %, smallest lift worth detecting %, customers a day) sit inside
the experiment form, so every submit keeps them; the "Estimate duration" button
shows the form again, unchanged and unsaved, with the estimate. The site's CSP allows
no script, hence a button rather than a live figure. The estimate is the experiment
page's (``reports.planning``) for what the form says now: the number of variant rows
filled in, and the decision rule as entered (its defaults where blank), checked by
the definition parser so a bad rule is named beside its box, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from analysis.types import DecisionRule

from ..definitions import parse_definition
from ..errors import InvalidInput
from ..models import Experiment, utcnow
from ..reports.planning import DurationPanel, measured_defaults, read_panel
from .experiment_form import ExperimentForm, form_to_mapping

ESTIMATE_BUTTON = "estimate"


@dataclass(frozen=True)
class FormDuration:
    """The panel, plus the decision-rule errors to show beside the rule's boxes."""

    panel: DurationPanel
    rule_errors: dict[str, str]

    @property
    def failed(self) -> bool:
        return bool(self.panel.errors or self.rule_errors)


def form_duration(
    session: Session, form: ExperimentForm, args: Mapping[str, Any], experiment: Experiment | None = None
) -> FormDuration:
    """The estimate for the form as entered; a started experiment's edit form has its
    traffic and baseline prefilled from the exposures so far, as on its page."""
    traffic, defaults = (None, {}) if experiment is None else measured_defaults(session, experiment, utcnow())
    mapping = form_to_mapping(form)
    arms = len(mapping["variants"])
    rule, rule_errors = _entered_rule(form, mapping)
    panel = read_panel(args, max(arms, 2), rule or DecisionRule(), defaults, traffic)
    if arms < 2:
        panel = _with_error(panel, "variants", "needs at least two variant rows filled in")
    elif rule is None and any(args.get(name) for name in panel.values):
        panel = _with_error(panel, "decision", "the decision rule has errors: correct them to estimate")
    return FormDuration(panel, rule_errors)


def _entered_rule(form: ExperimentForm, mapping: dict[str, Any]) -> tuple[DecisionRule | None, dict[str, str]]:
    """The decision rule as entered, validated by the definition parser (only its
    decision fields count here: the rest of the form may still be unfinished)."""
    try:
        parse_definition(mapping)
    except InvalidInput as exc:
        bad = {path: message for path, message in exc.fields.items() if path.split(".")[0] == "decision"}
        if bad:
            return None, form.errors_by_name(bad)
    return DecisionRule.from_mapping(mapping["decision"]), {}


def _with_error(panel: DurationPanel, name: str, message: str) -> DurationPanel:
    return DurationPanel(
        panel.values, None, {**panel.errors, name: message}, panel.traffic, panel.arms, panel.prefilled
    )
