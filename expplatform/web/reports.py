"""The journey lift map: an experiment's report page for analysts (viewers and up),
and the editors' button that queues a full-model fit.

The page is server-rendered with its plots inline as SVG, so it needs no JavaScript
and nothing from the network; options travel in the query string (a plain GET form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flask import Flask, abort, current_app, flash, redirect, render_template, request, url_for

from ..aggregation import experiment_stats
from ..auth import current_principal, login_required, role_at_least
from ..db import get_session
from ..errors import MalformedRequest, NotFound
from ..jobs import FitParams, get_runner
from ..reports.build import Report, build_report
from ..reports.decisions import SCALE_WORDS, full_model_refusal, headline, journey_rows, treatment_calls
from ..reports.exploratory import explore, segment_label
from ..reports.figures import render_plots
from ..reports.options import ReportOptions
from ..reports.planning import Traffic, forecasts, measured_traffic
from ..reports.views import METRIC_LABELS, full_model_view, lift_map
from ..warehouse.refresh import request_cancel, request_refresh
from . import bp, experiment_or_404
from .forms import ConfirmForm

CREDIBLE_LEVELS = (0.8, 0.9, 0.95, 0.99)


class Format:
    """Number formatting for the templates: one place decides digits and signs."""

    @staticmethod
    def pct(value: float | None, digits: int = 1) -> str:
        return "—" if value is None else f"{value * 100:.{digits}f}%"

    @staticmethod
    def lift(value: float | None, digits: int = 1) -> str:
        # "+ 0.0" rounds a tiny negative lift to zero instead of showing "-0.0%".
        return "—" if value is None else f"{round(value * 100, digits) + 0.0:+.{digits}f}%"

    @staticmethod
    def lift_of(estimate: Any, digits: int = 1) -> str:
        """The mean of a relative Estimate (or its JSON form) as a signed percentage."""
        mean = estimate.get("mean") if isinstance(estimate, dict) else getattr(estimate, "mean", None)
        return Format.lift(mean, digits)

    @staticmethod
    def interval(estimate: Any, digits: int = 1) -> str:
        """A relative interval, from an analysis Estimate or its JSON form."""
        if estimate is None:
            return "—"
        low, high = (
            (estimate.get("low"), estimate.get("high")) if isinstance(estimate, dict) else (estimate.low, estimate.high)
        )
        if low is None or high is None:
            return "—"
        return f"[{Format.lift(low, digits)}, {Format.lift(high, digits)}]"

    @staticmethod
    def prob(value: float | None) -> str:
        if value is None:
            return "—"
        if value > 0.999:
            return "> 0.999"
        if value < 0.001:
            return "< 0.001"
        return f"{value:.3f}"

    @staticmethod
    def num(value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    @staticmethod
    def nps(value: float | None, digits: int = 0) -> str:
        """An NPS (or a difference of NPS) in points, signed: ``+23``."""
        return "—" if value is None else f"{round(value, digits) + 0.0:+.{digits}f}"

    @staticmethod
    def nps_interval(estimate: Any, digits: int = 0) -> str:
        if estimate is None or estimate.low is None or estimate.high is None:
            return "—"
        return f"[{Format.nps(estimate.low, digits)}, {Format.nps(estimate.high, digits)}]"

    @staticmethod
    def count(value: int | None) -> str:
        return "—" if value is None else f"{value:,}"


GUARDRAIL_WORDS = {"holds": "holds", "broken": "broken", "no_data": "no data yet"}

DECISIONS = {
    "ship": "Ship",
    "harmful": "Harmful",
    "keep_running": "Keep running",
    "not_enough_data": "Not enough data",
}


@bp.get("/experiments/<key>/report")
@login_required("viewer")
def report(key: str):
    session = get_session()
    experiment = experiment_or_404(key)
    try:
        options = ReportOptions.parse(request.args)
    except MalformedRequest as exc:
        flash("Ignored: " + exc.message, "error")
        options = ReportOptions()
    try:
        built = build_report(session, experiment, options)
    except MalformedRequest as exc:  # e.g. an attribute with too many values to break down by
        flash("Ignored: " + exc.message, "error")
        built = build_report(session, experiment, replace(options, segment=None))
    principal = current_principal()
    can_fit = principal is not None and role_at_least(principal.role, "editor")
    return render_template(
        "reports/report.html", guide=guide(built), can_edit=can_fit, **_context(built, can_fit=can_fit)
    )


@dataclass(frozen=True)
class Guide:
    """What a report without enough data says instead of (or above) its numbers.

    ``state``: ``draft`` (start it) and ``no_exposures`` (send traffic: assign)
    replace the report, which would be all zeros; ``no_outcomes`` (send events) and
    ``too_few`` (a call needs more customers) stand above it, as the exposed counts
    are real."""

    state: str
    exposed: dict[str, int]
    needed_per_variant: int
    traffic: Traffic | None

    @property
    def replaces_report(self) -> bool:
        return self.state in ("draft", "no_exposures")

    @property
    def smallest(self) -> int:
        return min(self.exposed.values(), default=0)

    @property
    def needed_in_all(self) -> int:
        return self.needed_per_variant * len(self.exposed)

    @property
    def more_days(self) -> int | None:
        """Days until the smallest variant has enough customers at the measured rate."""
        if self.traffic is None or self.traffic.per_arm_per_day <= 0:
            return None
        return max(1, math.ceil((self.needed_per_variant - self.smallest) / self.traffic.per_arm_per_day))


def guide(built: Report) -> Guide | None:
    """The guide of a report that cannot show a call yet (None when it can)."""
    stats, experiment = built.stats, built.experiment
    exposed = {v: stats.cells[stats.stages[0]][v].exposed for v in stats.variants}
    needed = built.rule.min_exposed
    traffic = measured_traffic(experiment, stats, built.generated_at) if experiment.status == "running" else None
    if experiment.status == "draft":
        state = "draft"
    elif built.warehouse is not None and built.warehouse.computed_at is None:
        return None  # nothing computed in the warehouse yet: its panel says so, and nothing else can
    elif sum(exposed.values()) == 0:
        state = "no_exposures"
    elif full_model_refusal(stats) is not None:
        state = "no_outcomes"
    elif min(exposed.values()) < needed:
        state = "too_few"
    else:
        return None
    return Guide(state, exposed, needed, traffic)


def _context(built: Report, *, can_fit: bool) -> dict[str, Any]:
    refusal = full_model_refusal(built.stats)
    return {
        "report": built,
        "headline": headline(built),
        "calls": treatment_calls(built),
        "lift_map": lift_map(built),
        "journey": journey_rows(built),
        "exploration": explore(built),
        "segment_label": segment_label,
        "forecasts": forecasts(built),
        "plots": render_plots(built),
        "full_model": full_model_view(built),
        "full_model_refusal": refusal,
        "fmt": Format,
        "decisions": DECISIONS,
        "guardrail_words": GUARDRAIL_WORDS,
        "scale_words": SCALE_WORDS,
        "metric_labels": METRIC_LABELS,
        "levels": CREDIBLE_LEVELS,
        "can_fit": can_fit and refusal is None,
        "confirm": ConfirmForm() if can_fit else None,
    }


def render_standalone(app: Flask, built: Report) -> str:
    """The report as one self-contained HTML file (styles inline, plots inline), for
    ``expplatform report --format html`` (inside an app context, for the plot cache).

    No request is needed: the template is rendered by the app's Jinja environment,
    with the links the page has (root-relative, as ``url_for`` gives them in a
    request) built from the app's URL map."""
    static = Path(app.static_folder or "")
    stylesheet = "\n".join((static / name).read_text(encoding="utf-8") for name in ("app.css", "reports.css"))
    # The host name only matters to absolute URLs, which these links are not.
    urls = app.url_map.bind("localhost", script_name=app.config["APPLICATION_ROOT"])

    def link(endpoint: str, **values: Any) -> str:
        return urls.build(endpoint, values)

    template = app.jinja_env.get_template("reports/standalone.html")
    return template.render(url_for=link, stylesheet=stylesheet, **_context(built, can_fit=False))


@bp.post("/experiments/<key>/report/full-model")
@login_required("editor")
def run_full_model(key: str):
    principal = current_principal()
    assert principal is not None
    reason = full_model_refusal(experiment_stats(get_session(), experiment_or_404(key)))
    if reason is not None:
        flash("The full model was not started: " + reason, "error")
        return redirect(url_for("web.report", key=key) + "#full-model")
    try:
        job, created = get_runner(current_app).queue(
            key, principal.actor, FitParams.defaults(current_app.extensions["settings"])
        )
    except NotFound:
        abort(404)
    if created:
        flash(f"Full-model fit #{job.id} queued; this page shows its progress until it is done.", "info")
    else:
        flash(f"A full-model fit (#{job.id}) is already {job.status}.", "info")
    return redirect(url_for("web.report", key=key) + "#full-model")


@bp.post("/experiments/<key>/report/warehouse-refresh")
@login_required("editor")
def refresh_warehouse(key: str):
    session = get_session()
    experiment = experiment_or_404(key)
    if experiment.warehouse_source_id is None:
        abort(404)
    if request.form.get("cancel"):
        cancelled = request_cancel(session, experiment)
        message = "Cancelling the running warehouse query." if cancelled else "No warehouse query was running."
    else:
        request_refresh(session, experiment)
        message = "Refresh asked for: the worker recomputes the statistics in the warehouse; this page updates."
    session.commit()
    flash(message, "info")
    return redirect(url_for("web.report", key=key) + "#warehouse")
