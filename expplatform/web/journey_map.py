"""The live journey map for product teams (viewers and up): the journeys list, each
journey's map for a period and persona (or two personas side by side), and the map's
stylesheet.

Everything travels in the query string (GET links and a GET form), so the persona
switch works without JavaScript. A bad parameter is named in a flash and left out,
as the report page does; the JSON API refuses it instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from flask import Response, abort, current_app, flash, render_template, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import journey_plots
from ..activity import simulated_on_journey
from ..auth import current_principal, login_required, public, role_at_least
from ..db import get_session
from ..errors import MalformedRequest, NotFound
from ..journey_map import (
    ALL,
    DEFAULT_DAYS,
    MIN_CUSTOMERS,
    MIN_RATINGS,
    UNKNOWN,
    JourneyMap,
    MapOptions,
    StageTests,
    journey_map,
    measure_stopped,
    persona_word,
    stage_tests,
    today_utc,
)
from ..journeys import get_journey, journey_audit_log, list_journeys
from ..models import Experiment
from ..reports.background import Memo
from . import bp
from .reports import DECISIONS, Format

PERIODS = (7, 28, 90, 182, 365)
ACTIONS = {
    "ship": "Shipped the treatment",
    "keep_control": "Kept the control",
    "keep_running": "No call",
    "not_enough_data": "Not enough data",
    "investigate": "Investigate",
}


class MapFormat(Format):
    """The report's number formats, plus the map's intervals and differences."""

    @staticmethod
    def pct_interval(estimate: Any, digits: int = 1) -> str:
        if estimate is None or estimate.low is None or estimate.high is None:
            return "—"
        return f"[{Format.pct(estimate.low, digits)}, {Format.pct(estimate.high, digits)}]"

    @staticmethod
    def num_interval(estimate: Any, digits: int = 2) -> str:
        if estimate is None or estimate.low is None or estimate.high is None:
            return "—"
        return f"[{Format.num(estimate.low, digits)}, {Format.num(estimate.high, digits)}]"

    @staticmethod
    def points(value: float | None, digits: int = 1) -> str:
        """A difference of shares in percentage points, signed."""
        return "—" if value is None else f"{round(value * 100, digits) + 0.0:+.{digits}f} pp"

    @staticmethod
    def points_interval(estimate: Any, digits: int = 1) -> str:
        if estimate is None or estimate.low is None or estimate.high is None:
            return "—"
        return f"[{MapFormat.points(estimate.low, digits)}, {MapFormat.points(estimate.high, digits)}]"

    @staticmethod
    def signed(value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{round(value, digits) + 0.0:+.{digits}f}"

    @staticmethod
    def signed_interval(estimate: Any, digits: int = 2) -> str:
        if estimate is None or estimate.low is None or estimate.high is None:
            return "—"
        return f"[{MapFormat.signed(estimate.low, digits)}, {MapFormat.signed(estimate.high, digits)}]"


@bp.get("/journeys")
@login_required("viewer")
def journeys():
    session = get_session()
    rows = sorted(list_journeys(session), key=lambda j: (j.name.lower(), j.key))
    return render_template(
        "journeys/list.html", journeys=rows, counts=_experiment_counts(session), can_edit=_can_edit()
    )


def _can_edit() -> bool:
    principal = current_principal()
    return principal is not None and role_at_least(principal.role, "editor")


def _experiment_counts(session: Session) -> dict[int, dict[str, int]]:
    """Experiments per journey id and status, in one grouped statement."""
    counts: dict[int, dict[str, int]] = {}
    statement = select(Experiment.journey_id, Experiment.status, func.count()).group_by(
        Experiment.journey_id, Experiment.status
    )
    for journey_id, status, n in session.execute(statement):
        counts.setdefault(journey_id, {})[status] = int(n)
    return counts


@bp.get("/journeys/<key>")
@login_required("viewer")
def journey(key: str):
    session = get_session()
    try:
        found = get_journey(session, key)
    except NotFound:
        abort(404)
    today = today_utc()
    options = _options(request.args, [p.key for p in found.personas], today)
    built = journey_map(session, found, options)
    tests = stage_tests(session, found, lambda experiment: measure_stopped(session, experiment))
    return render_template(
        "journeys/map.html",
        can_edit=_can_edit(),
        simulated=simulated_on_journey(session, found.id),
        audit=journey_audit_log(session, found),
        **_context(built, tests, today),
    )


@bp.get("/journeys.css")
@public
def journey_stylesheet():
    """The journey pages' styles (served from the templates folder: the pages allow
    no inline <style>, only our own stylesheets)."""
    response = Response(render_template("journeys/journeys.css"), mimetype="text/css")
    response.cache_control.public = True
    response.cache_control.max_age = 3600
    response.add_etag()
    return response.make_conditional(request)


def _options(args: Mapping[str, str], personas: list[str], today: date) -> MapOptions:
    """The options asked for; a bad field is named in a flash and dropped."""
    try:
        return MapOptions.parse(args, personas, today)
    except MalformedRequest as exc:
        flash("Ignored: " + exc.message, "error")
        kept = {name: value for name, value in args.items() if name not in exc.fields}
        try:
            return MapOptions.parse(kept, personas, today)
        except MalformedRequest:
            return MapOptions.parse({}, personas, today)


def _context(built: JourneyMap, tests: Mapping[str, StageTests], today: date) -> dict[str, Any]:
    shape, options = built.shape, built.options
    colors = journey_plots.GROUP_COLORS
    personas = [(p.key, p.name) for p in shape.personas] + [(UNKNOWN, shape.persona_name(""))]
    counts = {persona_word(value): n for value, n in built.first_stage_customers.items()}
    return {
        "map": built,
        "shape": shape,
        "options": options,
        "tests": tests,
        "today": today,
        "colors": colors,
        "groups": list(zip(built.groups, colors, strict=False)),
        "personas": personas,
        "persona_counts": counts,
        "persona_word": persona_word,
        "selected_persona": persona_word(options.persona),
        "selected_compare": persona_word(options.compare) if options.compare is not None else "",
        "periods": PERIODS,
        "default_days": DEFAULT_DAYS,
        "all_word": ALL,
        "plots": _plots(built),
        "fmt": MapFormat,
        "decisions": DECISIONS,
        "actions": ACTIONS,
        "min_customers": MIN_CUSTOMERS,
        "min_ratings": MIN_RATINGS,
        "query": lambda **changes: options.query(today, **changes),
    }


def _plots(built: JourneyMap) -> dict[str, str]:
    """The funnel and the emotion curve, kept per worker by their inputs."""
    names = [s.name for s in built.shape.stages]
    funnel = []
    curve = []
    for group, color in zip(built.groups, journey_plots.GROUP_COLORS, strict=False):
        bars = []
        for index, stage in enumerate(group.stages):
            step = group.stages[index - 1].step if index else None
            conversion = step.conversion if step is not None else None
            bars.append(
                journey_plots.FunnelBar(
                    stage.reached,
                    conversion.low if conversion else None,
                    conversion.high if conversion else None,
                    step.skipped if step is not None else False,
                )
            )
        funnel.append(journey_plots.FunnelSeries(group.group.label, color, tuple(bars)))
        # The observed satisfaction (as the cards show it) with its posterior interval.
        points = tuple(
            journey_plots.CurvePoint(s.observed_satisfaction, s.satisfaction.low, s.satisfaction.high)
            if s.satisfaction is not None
            and s.observed_satisfaction is not None
            and s.satisfaction.low is not None
            and s.satisfaction.high is not None
            else None
            for s in group.stages
        )
        curve.append(journey_plots.CurveSeries(group.group.label, color, points))
    memo: Memo[dict[str, str]] = current_app.extensions.setdefault("journey_map_plots", Memo(64))
    key = (tuple(names), tuple(funnel), tuple(curve))
    return memo.get(
        key,
        lambda: {
            "funnel": journey_plots.funnel(names, funnel),
            "emotion_curve": journey_plots.emotion_curve(names, curve),
        },
    )
