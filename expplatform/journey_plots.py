"""The journey map's plots, drawn on the server as inline SVG with the report plots'
machinery (``plots``: matplotlib on first use, deterministic page-safe SVG, the same
colours, fonts and sizes).

- ``funnel``: customers reaching each stage as a share of those reaching the first
  stage, one bar per stage (and per persona when two are compared), with a whisker
  for the credible interval of the step conversion from the previous stage;
- ``emotion_curve``: each stage's satisfaction on the common 0-1 axis (each question's
  mean rating rescaled from its lowest to its highest rating) with its interval;
  stages without a rating question have no point.

Each function takes plain numbers (the map already holds them) and returns an
``<svg>`` string; nothing is computed here but positions.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from .plots import _HALF, PALETTE, _margins, _matplotlib, _percent, _render_lock, _svg

GROUP_COLORS = (PALETTE[0], PALETTE[1])  # the first group, the persona compared with it
_HEIGHT = 3.2


@dataclass(frozen=True)
class FunnelBar:
    """A stage for one group: customers reaching it, and the interval of the step
    conversion into it from the previous stage (None at the first stage or without
    customers there). ``skipped``: more customers here than at the previous stage."""

    reached: int
    low: float | None = None
    high: float | None = None
    skipped: bool = False


@dataclass(frozen=True)
class FunnelSeries:
    label: str
    color: str
    bars: tuple[FunnelBar, ...]


@dataclass(frozen=True)
class CurvePoint:
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class CurveSeries:
    label: str
    color: str
    points: tuple[CurvePoint | None, ...]  # one per stage; None: no rating there


def _stage_labels(stages: Sequence[str]) -> list[str]:
    return ["\n".join(textwrap.wrap(name, 14, max_lines=2, placeholder="…")) or "?" for name in stages]


def compact(n: int) -> str:
    """A count in a few characters: 950, 12.3k, 4.56M."""
    if n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.2f}M"


def funnel(stages: Sequence[str], series: Sequence[FunnelSeries]) -> str:
    """Bars of customers reaching each stage, as a share of the group's first stage
    (of its busiest stage when nobody reached the first), with step-conversion
    whiskers: the previous bar times the interval of the step into this stage."""
    import numpy as np

    with _render_lock:
        _, Figure = _matplotlib()
        figure = Figure(figsize=(_HALF, _HEIGHT))
        _margins(figure, left=0.7, bottom=0.6, top=0.35)
        ax = figure.add_subplot()
        count = max(len(series), 1)
        width = 0.8 / count
        x = np.arange(len(stages))
        top = 1.0
        for i, group in enumerate(series):
            base = group.bars[0].reached if group.bars and group.bars[0].reached else 0
            base = base or max((bar.reached for bar in group.bars), default=0)
            if not base:
                continue
            shares = [bar.reached / base for bar in group.bars]
            positions = x + (i - (count - 1) / 2) * width
            bars = ax.bar(positions, shares, width * 0.9, color=group.color, label=group.label)
            for j, bar in enumerate(group.bars):
                if bar.skipped:  # lighter (a hatch would need an SVG pattern id, which _svg drops)
                    bars[j].set_alpha(0.5)
                label_at = shares[j]
                if j and bar.low is not None and bar.high is not None and not bar.skipped:
                    low, high = shares[j - 1] * bar.low, shares[j - 1] * bar.high
                    ax.vlines(positions[j], low, high, color="#1d2330", linewidth=1.2)
                    ax.hlines(
                        [low, high],
                        positions[j] - width * 0.18,
                        positions[j] + width * 0.18,
                        color="#1d2330",
                        linewidth=1.2,
                    )
                    label_at = max(label_at, high)
                ax.annotate(
                    compact(bar.reached) + (" skip" if bar.skipped else ""),
                    (positions[j], label_at),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8 if count == 1 else 7,
                    color="#5b6475",
                )
                top = max(top, label_at)
        if not any(group.bars and any(bar.reached for bar in group.bars) for group in series):
            ax.text(0.5, 0.5, "No customers in this period", transform=ax.transAxes, ha="center", color="#5b6475")
        ax.set_xticks(x, _stage_labels(stages))
        ax.set_ylim(0, top * 1.15)
        ax.set_axisbelow(True)
        ax.grid(axis="x", visible=False)
        _percent(ax, "y")
        ax.set_ylabel("Share of the first stage")
        if count > 1:
            ax.legend(loc="upper right", fontsize=8)
        return _svg(figure, "journey-funnel", "Funnel: customers reaching each stage, with step-conversion intervals")


def emotion_curve(stages: Sequence[str], series: Sequence[CurveSeries]) -> str:
    """Satisfaction per stage on the common 0-1 axis, with intervals; a line joins a
    group's rated stages, and stages without a question say so."""
    import numpy as np

    with _render_lock:
        _, Figure = _matplotlib()
        figure = Figure(figsize=(_HALF, _HEIGHT))
        _margins(figure, left=0.7, bottom=0.6, top=0.35)
        ax = figure.add_subplot()
        count = max(len(series), 1)
        offset = 0.12 if count > 1 else 0.0
        x = np.arange(len(stages))
        rated: set[int] = set()
        for i, group in enumerate(series):
            shift = (i - (count - 1) / 2) * offset
            known = [(j, p) for j, p in enumerate(group.points) if p is not None]
            rated.update(j for j, _ in known)
            if not known:
                continue
            xs = [x[j] + shift for j, _ in known]
            ax.plot(xs, [p.mean for _, p in known], color=group.color, linewidth=1.8, label=group.label)
            ax.vlines(xs, [p.low for _, p in known], [p.high for _, p in known], color=group.color, linewidth=3.5)
            ax.plot(xs, [p.mean for _, p in known], "o", color=group.color, markersize=6, markeredgecolor="#ffffff")
        for j in range(len(stages)):
            if j not in rated:
                ax.text(x[j], 0.04, "no rating", ha="center", fontsize=8, color="#9aa3b2")
        ax.set_xticks(x, _stage_labels(stages))
        ax.set_xlim(-0.5, max(len(stages), 1) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_axisbelow(True)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel("Satisfaction (0 lowest, 1 highest)")
        if count > 1 and rated:
            ax.legend(loc="upper right", fontsize=8)
        return _svg(figure, "emotion-curve", "Emotion curve: satisfaction at each stage on a 0-1 scale, with intervals")
