"""The report for a terminal (``expplatform report``): the recommendation and
warnings, then one block per journey stage with a line per variant, the segments
asked for and the latest full-model fit, in plain text that fits 140 columns.
"""

from __future__ import annotations

from typing import Any

from .build import Report
from .views import full_model_view, lift_map


def format_table(report: Report) -> str:
    """The report for a terminal: the recommendation and warnings, then one block per
    stage with a line per variant."""
    result, stats = report.result, report.stats
    e = report.experiment
    level = f"{report.rule.credible_level:.0%}"
    lines = [
        f"{e.name} ({e.key}, {e.status}) - testing {stats.target_stage}; {report.exposed_total:,} customers exposed",
        "",
        f"Recommendation: {result.recommendation.summary}",
        *(f"  - {reason}" for reason in result.recommendation.reasons),
    ]
    if report.warnings:
        lines += ["", "Warnings:", *(f"  ! {w.message}" for w in report.warnings)]
    header = ("variant", "exposed", "conv", f"lift [{level}]", "P(better)", "exp.loss", "rating", "top-box", "decision")
    widths = (max(8, *(len(v) for v in stats.variants)), 9, 7, 27, 9, 8, 6, 7, 15)
    for stage in lift_map(stats, result, report.rule, report.colors):
        marker = (
            "  <- under test"
            if stage.is_target
            else "  (before the tested step: a balance check)"
            if stage.before_target
            else ""
        )
        lines += ["", f"{stage.stage}{marker}"]
        lines.append(
            "  "
            + "  ".join(
                h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
            )
        )
        for cell in stage.cells:
            lift = cell.lift
            values = (
                cell.variant + (" (control)" if cell.is_control and cell.variant != "control" else ""),
                f"{cell.exposed:,}",
                _pct(cell.conversion.observed),
                "" if lift is None else _lift_text(lift.relative_lift),
                "" if lift is None else _prob(lift.p_better),
                "" if lift is None else _pct(lift.expected_loss_relative, 2),
                "-" if cell.mean_rating.observed is None else f"{cell.mean_rating.observed:.2f}",
                _pct(cell.top_box.observed, 0),
                "" if lift is None or lift.decision is None or stage.before_target else lift.decision.replace("_", " "),
            )
            lines.append(
                "  "
                + "  ".join(
                    v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
                )
            )
    if report.segments is not None and report.segments.status == "ready":
        lines += ["", f"By {report.options.segment}:"]
        for segment in report.segments.value:
            label = "(not recorded)" if segment.value is None else segment.value
            target = segment.result.stage(stats.target_stage).metric("conversion")
            lifts = ", ".join(
                f"{c.treatment} {_lift_text(c.relative_lift)} P(better) {_prob(c.p_better)}" for c in target.comparisons
            )
            lines.append(f"  {label}: {segment.exposed:,} exposed; {stats.target_stage} conversion {lifts}")
            lines.append(f"    {segment.result.recommendation.summary}")
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
