"""The report's plots, drawn on the server as inline SVG (no JavaScript, nothing
fetched from the network).

Each function takes plain numbers that the report already holds (every figure comes
from ``analysis``; the one computation here is evaluating Beta densities whose
parameters the analysis gives) and returns an ``<svg>`` string ready to sit inside
a page. Matplotlib is imported on first use only (it costs ~0.4 s), renders with
the Agg/SVG backend through ``Figure`` objects (no pyplot global state), and its
output is made deterministic and page-safe: no metadata, no global ``<style>``, no
ids except the hashed ones references need, salted per plot so that several plots
in one page never share an id, text kept as text (searchable, small).

Colours are per variant and the same in every plot (and in the page's tables): the
control is grey, treatments take the palette in their definition order.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

CONTROL_COLOR = "#6b7280"
PALETTE = ("#2952cc", "#d97706", "#0f9d58", "#9333ea", "#dc2626", "#0891b2", "#be185d", "#65a30d")
# Inches, chosen so that 9-point text shows at about 12 px in the page's full-width
# column (~1150 px) and at about 11 px in its half-width one.
_WIDE = 12.0
_HALF = 6.4
_render_lock = threading.Lock()  # matplotlib is not thread-safe; rcParams are process-wide
_configured = False


@dataclass(frozen=True)
class LiftRow:
    """One interval of the forest plot: a treatment's relative lift at a stage/metric."""

    stage: str
    metric: str
    variant: str
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class BetaCurve:
    """A variant's posterior of a rate, Beta(alpha, beta)."""

    variant: str
    alpha: float
    beta: float


@dataclass(frozen=True)
class DayPoint:
    """One day of the cumulative series for one treatment; None before there is data."""

    day: date
    variant: str
    lift: float | None
    low: float | None
    high: float | None
    p_better: float | None


def variant_colors(variants: Sequence[str], control: str) -> dict[str, str]:
    treatments = [v for v in variants if v != control]
    colors = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(treatments)}
    colors[control] = CONTROL_COLOR
    return colors


def _matplotlib():
    global _configured
    import matplotlib

    if not _configured:
        matplotlib.use("Agg", force=False)
        matplotlib.rcParams.update(
            {
                "svg.fonttype": "none",  # text as <text>, styled by the page's fonts
                "text.parse_math": False,  # a '$' in a name is a dollar, not TeX
                "font.family": "sans-serif",
                "font.size": 10,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.edgecolor": "#9aa3b2",
                "axes.labelcolor": "#1d2330",
                "xtick.color": "#5b6475",
                "ytick.color": "#5b6475",
                "axes.grid": True,
                "grid.color": "#e5e8ee",
                "grid.linewidth": 0.6,
                "legend.frameon": False,
                "figure.dpi": 100,
            }
        )
        _configured = True
    from matplotlib.figure import Figure

    return matplotlib, Figure


def warm_up() -> None:
    """Import matplotlib and draw one throw-away figure (font cache, SVG backend), so
    that a serving worker's first report page does not pay for it (see
    :func:`warm_up_after_fork`); the CLI never does."""
    with _render_lock:
        _module, figure_class = _matplotlib()
        figure = figure_class(figsize=(1, 1))
        figure.add_subplot().plot([0, 1], [0, 1])
        figure.savefig(io.BytesIO(), format="svg")


def warm_up_after_fork() -> None:
    """Warm up in a background thread of every process forked from this one from now
    on: gunicorn's workers, forked from the master that preloaded the app. Never in the
    master itself: a thread still importing matplotlib when the master forks leaves the
    worker an import lock that no thread of its own will release (its first report
    page hung for good), and importing it before the fork would delay every master
    restart by the import."""
    os.register_at_fork(
        after_in_child=lambda: threading.Thread(target=warm_up, name="plots-warm-up", daemon=True).start()
    )


_ID = re.compile(r'\sid="(?![mp][0-9a-f]{10}")[^"]*"')


def _svg(figure: Any, name: str, label: str) -> str:
    """Render ``figure`` as an inline-safe, deterministic ``<svg>`` element."""
    import matplotlib

    buffer = io.StringIO()
    matplotlib.rcParams["svg.hashsalt"] = f"expplatform-{name}"
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r"\s*<style[^>]*>.*?</style>", "", text, flags=re.S)
    text = re.sub(r"\s*<defs>\s*</defs>", "", text)
    text = _ID.sub("", text)
    attributes = (
        f'<svg class="plot plot-{name}" role="img" aria-label="{html.escape(label, quote=True)}" '
        'stroke-linejoin="round" stroke-linecap="butt" '
    )
    text = re.sub(
        r'<svg\s[^>]*?(viewBox="[^"]*")[^>]*>',
        lambda m: (
            f'{attributes}{m.group(1)} xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
        ),
        text,
        count=1,
    )
    return f"{text.rstrip()}\n"


def _margins(
    figure: Any, *, left: float, bottom: float, top: float = 0.12, right: float = 0.15, hspace: float = 0.0
) -> None:
    """Fixed margins in inches (a layout engine would double the render time)."""
    width, height = figure.get_size_inches()
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, hspace=hspace
    )


def _percent(ax: Any, axis: str = "x", decimals: int = 0) -> None:
    from matplotlib.ticker import PercentFormatter

    getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(1.0, decimals=decimals))


def forest(rows: Sequence[LiftRow], colors: Mapping[str, str], *, level: float) -> str:
    """Relative lift of each treatment with its credible interval, one line per stage
    x metric x treatment, grouped by stage in journey order, zero marked."""
    with _render_lock:
        _, Figure = _matplotlib()
        height = 0.75 + 0.24 * max(len(rows), 1)
        figure = Figure(figsize=(_WIDE, height))
        labels = [f"{row.stage} · {row.metric} · {row.variant}" for row in reversed(rows)]
        _margins(figure, left=0.25 + 0.08 * max((len(label) for label in labels), default=4), bottom=0.55)
        ax = figure.add_subplot()
        for y, row in enumerate(reversed(rows)):
            color = colors.get(row.variant, CONTROL_COLOR)
            ax.plot([row.low, row.high], [y, y], color=color, linewidth=2.2, solid_capstyle="butt")
            ax.plot([row.mean], [y], "o", color=color, markersize=5)
        ax.axvline(0, color="#1d2330", linewidth=0.9)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.7, max(len(labels), 1) - 0.3)
        ax.grid(axis="y", visible=False)
        _percent(ax)
        ax.set_xlabel(f"Relative lift against control (mean and {level:.0%} credible interval)")
        return _svg(figure, "forest", "Forest plot: relative lift with credible intervals per stage and metric")


def densities(curves: Sequence[BetaCurve], colors: Mapping[str, str], *, stage: str) -> str:
    """Posterior density of the conversion rate at ``stage`` per variant."""
    from scipy import stats

    with _render_lock:
        _, Figure = _matplotlib()
        figure = Figure(figsize=(_HALF, 2.8))
        _margins(figure, left=0.45, bottom=0.55)
        ax = figure.add_subplot()
        if curves:
            low = min(stats.beta.ppf(0.0005, c.alpha, c.beta) for c in curves)
            high = max(stats.beta.ppf(0.9995, c.alpha, c.beta) for c in curves)
            pad = (high - low) * 0.05 or 0.01
            import numpy as np

            x = np.linspace(max(low - pad, 0.0), min(high + pad, 1.0), 160)
            for curve in curves:
                color = colors.get(curve.variant, CONTROL_COLOR)
                y = stats.beta.pdf(x, curve.alpha, curve.beta)
                ax.plot(x, y, color=color, linewidth=1.8, label=curve.variant)
                ax.fill_between(x, y, color=color, alpha=0.12, linewidth=0)
            ax.legend(loc="upper right")
        _percent(ax, decimals=1)
        ax.set_ylim(bottom=0)
        ax.set_yticks([])
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"Conversion rate at {stage} (posterior)")
        ax.set_ylabel("Density")
        return _svg(figure, "densities", f"Posterior densities of the conversion rate at {stage} per variant")


def funnel(stages: Sequence[str], shares: Mapping[str, Sequence[float | None]], colors: Mapping[str, str]) -> str:
    """Share of each variant's exposed customers who converted at each stage, stages
    left to right as in the journey; None (nothing recorded) draws no bar, and a stage
    where no variant has data says so."""
    import numpy as np

    with _render_lock:
        _, Figure = _matplotlib()
        figure = Figure(figsize=(_HALF, 2.8))
        _margins(figure, left=0.75, bottom=0.55, top=0.3)
        ax = figure.add_subplot()
        count = max(len(shares), 1)
        width = 0.8 / count
        x = np.arange(len(stages))
        for i, (variant, values) in enumerate(shares.items()):
            ax.bar(
                x + (i - (count - 1) / 2) * width,
                [np.nan if value is None else value for value in values],
                width * 0.92,
                color=colors.get(variant, CONTROL_COLOR),
                label=variant,
            )
        for position, stage_values in enumerate(zip(*shares.values(), strict=True)):
            if all(value is None for value in stage_values):
                ax.text(position, 0, "no data", ha="center", va="bottom", color="#5b6475", fontsize=9)
        ax.set_xticks(x, list(stages))
        ax.grid(axis="x", visible=False)
        _percent(ax, "y")
        ax.set_ylabel("Share of exposed customers")
        ax.set_xlabel("Journey stage")
        ax.legend(loc="upper right", ncols=min(count, 4))
        return _svg(figure, "funnel", "Funnel: share of exposed customers converting at each stage, per variant")


def over_time(
    points: Sequence[DayPoint],
    colors: Mapping[str, str],
    *,
    stage: str,
    level: float,
    ship_probability: float,
    harm_probability: float,
) -> str:
    """Cumulative relative lift (with its interval) and P(better) of each treatment
    at ``stage`` by day, with the decision thresholds, to show whether a result is
    settling or still swinging."""
    import numpy as np

    with _render_lock:
        _, Figure = _matplotlib()
        figure = Figure(figsize=(_WIDE, 4.0))
        _margins(figure, left=0.9, bottom=0.55, top=0.15, right=0.3, hspace=0.12)
        top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
        by_variant: dict[str, list[DayPoint]] = {}
        for point in points:
            by_variant.setdefault(point.variant, []).append(point)

        def values(series: list[DayPoint], name: str):
            return np.array([math.nan if getattr(p, name) is None else getattr(p, name) for p in series], dtype=float)

        for variant, series in by_variant.items():
            color = colors.get(variant, CONTROL_COLOR)
            days = [p.day for p in series]
            lift, low, high = values(series, "lift"), values(series, "low"), values(series, "high")
            top.plot(days, lift, color=color, linewidth=1.8, marker="o", markersize=3.5, label=variant)
            if len(days) > 1:
                top.fill_between(days, low, high, color=color, alpha=0.15, linewidth=0)
            else:  # a band needs two days: one day's interval is a bar
                top.vlines(days, low, high, color=color, alpha=0.5, linewidth=4)
            bottom.plot(days, values(series, "p_better"), color=color, linewidth=1.8, marker="o", markersize=3.5)
        top.axhline(0, color="#1d2330", linewidth=0.9)
        _percent(top, "y")
        top.set_ylabel(f"Lift ({level:.0%} interval)")
        if by_variant:
            top.legend(loc="upper left", ncols=min(len(by_variant), 4))
        for threshold in (ship_probability, harm_probability):
            bottom.axhline(threshold, color="#9aa3b2", linewidth=0.9, linestyle="--")
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_ylabel("P(better)")
        bottom.set_xlabel("Day (UTC)")
        from datetime import datetime, time, timedelta

        from matplotlib.dates import DateFormatter, DayLocator

        if points:  # half a day of margin; a single day gets a readable span
            first, last = min(p.day for p in points), max(p.day for p in points)
            margin = timedelta(hours=12 if last > first else 36)
            bottom.set_xlim(datetime.combine(first, time()) - margin, datetime.combine(last, time()) + margin)
            span = (last - first).days + 1
            bottom.xaxis.set_major_locator(DayLocator(interval=max(1, math.ceil(span / 10))))
        bottom.xaxis.set_major_formatter(DateFormatter("%b %d"))
        return _svg(figure, "over-time", f"Cumulative lift and P(better) at {stage} by day")
