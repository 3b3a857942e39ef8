"""How long until a decision under the peeking-safe rule.

- ``forecasts``: for a running experiment, per treatment, 'about N more days at the
  current rate' and the chance of a call by then (``analysis.forecast``), from the
  customers exposed per arm per day measured since the start and the current
  estimate at the stage under test;
- ``parse_plan`` / ``plan_estimate``: the duration estimate of the experiment page,
  from a baseline rate, the smallest lift worth detecting and the expected traffic
  (``analysis.plan``); ``read_panel`` is that panel for any number of variants and
  decision rule, which the experiment form uses for what is typed in it before it is
  saved (``web.form_planning``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from analysis import Forecast, Plan, forecast, plan
from analysis.types import DecisionRule, ExperimentStats

from ..aggregation import experiment_stats
from ..errors import MalformedRequest
from ..experiment_settings import experiment_settings
from ..models import Experiment
from .background import report_cache
from .build import Report, data_version
from .decisions import comparable

HORIZON_DAYS = 90
PLAN_FIELDS = ("baseline", "lift", "per_day")  # the duration estimate's boxes
MIN_HOURS = 1.0  # below an hour of traffic, a rate per day means nothing yet


@dataclass(frozen=True)
class Traffic:
    """Customers exposed per arm per day (the smallest arm), measured over ``days``."""

    per_arm_per_day: float
    per_day: float
    days: float


def measured_traffic(experiment: Experiment, stats: ExperimentStats, now: datetime) -> Traffic | None:
    """The exposure rate since the start (to the stop, for a stopped experiment); None
    before an hour of traffic or without exposures."""
    if experiment.started_at is None:
        return None
    started = _aware(experiment.started_at)
    end = _aware(experiment.stopped_at) if experiment.stopped_at is not None else now
    days = (end - started).total_seconds() / 86400
    exposed = [stats.cells[stats.stages[0]][v].exposed for v in stats.variants]
    if days * 24 < MIN_HOURS or min(exposed) == 0:
        return None
    return Traffic(min(exposed) / days, sum(exposed) / days, days)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TreatmentForecast:
    treatment: str
    forecast: Forecast


@dataclass(frozen=True)
class Forecasts:
    traffic: Traffic
    treatments: tuple[TreatmentForecast, ...]


def forecasts(report: Report) -> Forecasts | None:
    """Per treatment at the stage under test, for a running experiment with outcome
    data there; kept per data version and rounded rate in the report cache."""
    experiment, stats = report.experiment, report.stats
    if experiment.status != "running":
        return None
    traffic = measured_traffic(experiment, stats, report.generated_at)
    if traffic is None:
        return None
    rate = float(f"{traffic.per_arm_per_day:.2g}")  # two significant digits: a stable cache key
    key = ("forecast", experiment.id, data_version(experiment, stats), report.rule, rate)
    computed = report_cache().forecasts.get(key, lambda: _forecast_all(stats, report.rule, rate))
    if not computed:
        return None
    return Forecasts(traffic, computed)


def _forecast_all(stats: ExperimentStats, rule: DecisionRule, rate: float) -> tuple[TreatmentForecast, ...]:
    cells = stats.cells[stats.target_stage]
    control = cells[stats.control]
    out = []
    for treatment in (v for v in stats.variants if v != stats.control):
        if not comparable(stats, stats.target_stage, treatment):
            continue
        t = cells[treatment]
        out.append(
            TreatmentForecast(
                treatment,
                forecast(
                    exposed_t=t.exposed,
                    converted_t=t.converted,
                    exposed_c=control.exposed,
                    converted_c=control.converted,
                    per_arm_per_day=rate,
                    arms=len(stats.variants),
                    rule=rule,
                    horizon_days=HORIZON_DAYS,
                ),
            )
        )
    return tuple(out)


def forecast_dict(found: Forecasts | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "per_arm_per_day": found.traffic.per_arm_per_day,
        "per_day": found.traffic.per_day,
        "measured_over_days": found.traffic.days,
        "treatments": [{"treatment": f.treatment, **f.forecast.to_dict()} for f in found.treatments],
    }


# -- the duration estimate of the experiment page -----------------------------------------------


@dataclass(frozen=True)
class PlanInput:
    baseline: float  # a share, 0-1
    lift: float  # relative, e.g. 0.1 for +10%
    per_day: float  # customers a day, all arms together
    arms: int


def parse_plan(args: Mapping[str, Any], arms: int) -> PlanInput | None:
    """The panel's GET form (``baseline`` %, ``lift`` %, ``per_day`` customers); None
    when it was not filled in, MalformedRequest naming each bad field."""
    if all(args.get(n) in (None, "") for n in PLAN_FIELDS):
        return None
    errors: dict[str, str] = {}
    values: dict[str, float] = {}
    for name in PLAN_FIELDS:
        try:
            values[name] = float(args.get(name) or "nan")
        except ValueError:
            values[name] = float("nan")
    baseline, lift, per_day = values["baseline"], values["lift"], values["per_day"]
    if not 0 < baseline < 100:
        errors["baseline"] = "must be a percentage above 0 and below 100"
    if not (-100 < lift <= 1000) or lift == 0:
        errors["lift"] = "must be a non-zero percentage above -100 (e.g. 10 for +10%)"
    elif 0 < baseline < 100 and baseline * (1 + lift / 100) >= 100:
        errors["lift"] = "takes the rate to 100% or more"
    if not 0 < per_day <= 1e9:
        errors["per_day"] = "must be a positive number of customers a day"
    if errors:
        raise MalformedRequest(fields=errors)
    return PlanInput(baseline / 100, lift / 100, per_day, arms)


def plan_estimate(given: PlanInput, rule: DecisionRule) -> Plan:
    """Days and customers until a call if the lift is true (equal arms assumed)."""
    return plan(
        baseline=given.baseline,
        lift=given.lift,
        per_arm_per_day=given.per_day / given.arms,
        arms=given.arms,
        rule=rule,
    )


@dataclass(frozen=True)
class DurationPanel:
    """The experiment page's duration estimate: the form's values (as entered, or
    prefilled from the running experiment), the plan when the form was sent, and the
    errors of a bad form."""

    values: dict[str, str]
    plan: Plan | None
    errors: dict[str, str]
    traffic: Traffic | None
    arms: int
    prefilled: bool


def duration_panel(session: Session, experiment: Experiment, args: Mapping[str, Any], now: datetime) -> DurationPanel:
    """Read the panel's GET form; prefill traffic (and the baseline: the control's
    rate at the stage under test) from a started experiment's exposures."""
    traffic, defaults = measured_defaults(session, experiment, now)
    return read_panel(args, len(experiment.variants), experiment_settings(experiment)[1], defaults, traffic)


def measured_defaults(session: Session, experiment: Experiment, now: datetime) -> tuple[Traffic | None, dict[str, str]]:
    """The traffic measured so far and the panel's boxes it fills (customers a day, and
    the control's rate at the stage under test as the baseline); nothing before the start."""
    defaults: dict[str, str] = {}
    if experiment.started_at is None:
        return None, defaults
    stats = experiment_stats(session, experiment)
    traffic = measured_traffic(experiment, stats, now)
    control = stats.cells[stats.target_stage][stats.control]
    if traffic is not None:
        defaults["per_day"] = f"{traffic.per_day:.0f}"
    if control.exposed and control.converted:
        defaults["baseline"] = f"{100 * control.converted / control.exposed:.3g}"
    return traffic, defaults


def read_panel(
    args: Mapping[str, Any],
    arms: int,
    rule: DecisionRule,
    defaults: Mapping[str, str] | None = None,
    traffic: Traffic | None = None,
) -> DurationPanel:
    """The panel for ``args`` (the boxes as entered, else ``defaults``): the plan when
    they were filled in, the errors by box when they are wrong."""
    defaults = defaults or {}
    values = {name: str(args.get(name) or defaults.get(name, "")) for name in PLAN_FIELDS}
    try:
        given = parse_plan(args, arms)
    except MalformedRequest as exc:
        return DurationPanel(values, None, exc.fields, traffic, arms, bool(defaults))
    found = plan_estimate(given, rule) if given is not None else None
    return DurationPanel(values, found, {}, traffic, arms, bool(defaults))
