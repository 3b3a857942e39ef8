"""The report for a terminal (``expplatform report``): the recommendation and
warnings, then one block per journey stage with a line per variant (the ratings to
the stage's own question, and NPS on a 0-10 one; conversion only where there is no
question), the segments asked for and the latest full-model fit, in plain text that
fits 140 columns.
"""

from __future__ import annotations

import textwrap
from typing import Any

from .build import Report
from .decisions import headline, treatment_calls
from .exploratory import explore, segment_label
from .planning import forecasts
from .views import full_model_view, lift_map

WIDTH = 138


def format_table(report: Report) -> str:
    """The report for a terminal: the recommendation and warnings, then one block per
    stage with a line per variant."""
    result, stats = report.result, report.stats
    e = report.experiment
    level = f"{report.rule.credible_level:.0%}"
    head = headline(report)
    lines = [
        f"{e.name} ({e.key}, {e.status}) - testing {stats.target_stage}; {report.exposed_total:,} customers exposed",
        "",
        f"Recommendation: {head.text}",
    ]
    if head.interval is not None and head.level is not None:
        lines.append(f"  anytime-valid {head.level:.0%} interval (what the call rests on): {_lift_text(head.interval)}")
    lines += [f"  - {reason}" for reason in result.recommendation.reasons]
    lines += ["", f"The call at {stats.target_stage} conversion:"]
    calls = treatment_calls(report)
    for call in calls:
        if not call.has_data:
            lines.append(f"  {call.treatment}: no data at this stage - no call")
            continue
        anytime = _lift_text(call.anytime) if call.anytime is not None else "-"
        anytime_level = f"{call.anytime_level:.0%} " if call.anytime_level is not None else ""
        decision = (call.decision or "").replace("_", " ")
        lines.append(f"  {call.treatment}: {decision}; anytime-valid {anytime_level}interval {anytime}")
        lines += textwrap.wrap(call.basis or "", WIDTH, initial_indent="    ", subsequent_indent="    ")
    if calls:
        lines += textwrap.wrap(calls[0].rests_on, WIDTH, initial_indent="  ", subsequent_indent="  ")
    found = forecasts(report)
    if found is not None:
        lines.append(f"  At the current rate ({found.traffic.per_arm_per_day:,.0f} customers per arm a day):")
        for f in found.treatments:
            fc = f.forecast
            if fc.decided_now:
                lines.append(f"    {f.treatment}: already decided")
            elif fc.more_days is not None:
                lines.append(
                    f"    {f.treatment}: about {fc.more_days} more days; chance of a decision by then "
                    f"{fc.p_decision_by_then:.0%}"
                )
            else:
                lines.append(f"    {f.treatment}: probably not within {fc.horizon_days} days")
    if report.warnings:
        lines += ["", "Warnings:", *(f"  ! {w.message}" for w in report.warnings)]
    for stage in lift_map(report):
        marker = (
            "  <- under test"
            if stage.is_target
            else "  (before the tested step: a balance check)"
            if stage.before_target
            else "  (guardrail)"
        )
        lines += ["", f"{stage.stage}{marker}"]
        question = stage.question
        nps = any(cell.nps is not None for cell in stage.cells)
        if question is not None:
            lines.append(f"  rating question {question.key}: {question.label}")
        else:
            lines.append("  no rating question at this stage: conversion only")
        names = {
            cell.variant: cell.variant + (" (control)" if cell.is_control and cell.variant != "control" else "")
            for cell in stage.cells
        }
        columns = [
            ("variant", max(8, *(len(name) for name in names.values()))),
            ("exposed", 9),
            ("conv obs", 8),
            (f"lift [{level}]", 27),
            ("P(better)", 9),
            ("exp.loss", 8),
        ]
        if question is not None:
            columns += [("rating", 6), ("top-box", 7)]
        if nps:
            columns.append(("NPS", 5))
        columns.append(("decision", 24))
        widths = tuple(w for _, w in columns)
        lines.append("  " + _line(tuple(h for h, _ in columns), widths))
        for cell in stage.cells:
            lift = cell.lift
            name = names[cell.variant]
            if not cell.has_data:
                exposed = f"{cell.exposed:,}".rjust(widths[1])
                lines.append(f"  {name.ljust(widths[0])}  {exposed}  no data at this stage")
                continue
            broken = [m.replace("_", " ") for m, status in cell.guardrails if status == "broken"]
            verdict = (
                cell.decision.replace("_", " ")
                if cell.decision is not None
                else ("guardrail broken: " + ", ".join(broken))
                if broken
                else "guardrails hold"
                if cell.guardrails and all(status == "holds" for _, status in cell.guardrails)
                else ""
            )
            values = [
                name,
                f"{cell.exposed:,}",
                _pct(cell.conversion.observed),
                "" if lift is None else _lift_text(lift.relative_lift),
                "" if lift is None else _prob(lift.p_better),
                "" if lift is None else _pct(lift.expected_loss_relative, 2),
            ]
            if question is not None:
                rated = cell.rating_data and cell.mean_rating is not None and cell.mean_rating.observed is not None
                values += [
                    f"{cell.mean_rating.observed:.2f}" if rated and cell.mean_rating is not None else "-",
                    _pct(cell.top_box.observed, 0) if rated and cell.top_box is not None else "-",
                ]
            if nps:
                values.append(_nps(cell.nps.observed) if cell.rating_data and cell.nps is not None else "-")
            values.append(verdict)
            lines.append("  " + _line(tuple(values), widths))
    exploration = explore(report)
    if report.segments is not None and report.segments.status == "ready":
        looked = exploration.looked_at if exploration is not None else 0
        lines += [
            "",
            f"By {report.options.segment} (exploratory: {looked} segments looked at; no segment makes its own call):",
        ]
        for segment in report.segments.value:
            label = segment_label(segment.value)
            target = segment.result.stage(stats.target_stage).metric("conversion")
            lifts = ", ".join(
                f"{c.treatment} {_lift_text(c.relative_lift)} P(better) {_prob(c.p_better)}" for c in target.comparisons
            )
            lines.append(f"  {label}: {segment.exposed:,} exposed; {stats.target_stage} conversion {lifts}")
            for c in target.comparisons:
                flag = exploration.flag(label, c.treatment) if exploration is not None else None
                if flag is not None and flag.difference.flagged and flag.difference.difference is not None:
                    lines.append(
                        f"    flagged: {c.treatment}'s effect here differs from the other segments' "
                        f"({_lift_text(flag.difference.difference)})"
                    )
    job = report.job
    if job is not None:
        lines += ["", f"Full model: fit #{job.id} {job.status}" + (f" - {job.error}" if job.error else "")]
        view = full_model_view(report)
        if view is not None and view.rows:
            diagnostics = view.diagnostics or {}
            lines.append(
                f"  diagnostics {'passed' if diagnostics.get('passed') else 'FAILED'}: "
                f"max R-hat {diagnostics.get('r_hat_max')}, {diagnostics.get('divergences')} divergences"
            )
            for row in view.rows:
                if row.metric == "conversion":
                    lines.append(
                        f"  {row.stage:<14} {row.treatment:<10} conjugate {_lift_text(row.conjugate_lift):<28} "
                        f"full model {_lift_text(row.full_lift)}"
                    )
    return "\n".join(lines) + "\n"


def _line(values: tuple[str, ...], widths: tuple[int, ...]) -> str:
    """The first column left-aligned, the others right-aligned."""
    return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))


def _nps(value: float | None) -> str:
    return "-" if value is None else f"{round(value) + 0:+d}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _prob(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _lift_text(estimate: Any) -> str:
    if isinstance(estimate, dict):
        mean, low, high = estimate.get("mean"), estimate.get("low"), estimate.get("high")
    elif estimate is not None:
        mean, low, high = estimate.mean, estimate.low, estimate.high
    else:
        return "-"
    if mean is None:
        return "-"
    interval = "" if low is None or high is None else f" [{_signed(low)}, {_signed(high)}]"
    return f"{_signed(mean)}{interval}"


def _signed(value: float) -> str:
    return f"{round(value * 100, 1) + 0.0:+.1f}%"  # never "-0.0%"
