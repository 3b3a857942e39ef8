"""What the experiment list and page show beside each experiment's definition: its
exposures (in all, per day as a sparkline), its latest recommendation and when its
latest outcome came; and the "Simulated data" badge of every page that shows data
the simulator wrote.

The list analyses nothing: its activity is one grouped query per page, kept for
``ACTIVITY_SECONDS`` (``activity.TimedMemo``), and each row's call is the latest one a
report or experiment page left (``reports.latest``). One experiment's page analyses
its own data, kept per data version as its report keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from markupsafe import Markup

from ..activity import SPARK_DAYS, Activity, TimedMemo, activity
from ..aggregation import experiment_stats
from ..db import get_session
from ..experiment_settings import experiment_settings
from ..models import Experiment, utcnow
from ..reports.build import live_result
from ..reports.latest import LatestCall, latest_calls
from . import bp

ACTIVITY_SECONDS = 30.0
SPARK_BAR, SPARK_HEIGHT = 4, 24


@dataclass(frozen=True)
class Overview:
    activity: Activity | None  # None: never started, so nothing to count
    call: LatestCall | None

    @property
    def sparkline(self) -> Markup:
        return sparkline(self.activity.daily) if self.activity is not None else Markup("")


def overviews(experiments: Sequence[Experiment], now: datetime) -> dict[int, Overview]:
    """Per experiment id, what its list row or page shows beside the definition."""
    started = [e.id for e in experiments if e.started_at is not None]
    memo: TimedMemo[int, Activity] = current_app.extensions.setdefault("activity_memo", TimedMemo(ACTIVITY_SECONDS))
    found = memo.get_many(started, lambda ids: activity(get_session(), ids, now))
    calls = latest_calls().of(started)
    return {e.id: Overview(found.get(e.id), calls.get(e.id)) for e in experiments}


def sparkline(daily: Sequence[int]) -> Markup:
    """Exposures per day as a small inline SVG bar chart, today on the right."""
    peak = max(daily, default=0)
    width = SPARK_BAR * len(daily)
    bars = []
    for n, count in enumerate(daily):
        if count:
            height = max(1.0, SPARK_HEIGHT * count / peak)  # a quiet day stays visible
            y = SPARK_HEIGHT - height
            bars.append(f'<rect x="{n * SPARK_BAR}" y="{y:.1f}" width="{SPARK_BAR - 1}" height="{height:.1f}"/>')
    label = f"Exposures per day over the last {len(daily)} days (UTC): {sum(daily):,} in all, at most {peak:,} a day"
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {SPARK_HEIGHT}" width="{width}" height="{SPARK_HEIGHT}" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
        f'<line x1="0" y1="{SPARK_HEIGHT - 0.5}" x2="{width}" y2="{SPARK_HEIGHT - 0.5}"/>{"".join(bars)}</svg>'
    )


@bp.app_template_filter("ago")
def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'3 s ago', '5 min ago', '2 h ago', '4 days ago' ('never' for None)."""
    if moment is None:
        return "never"
    seconds = max(0, int(((now or utcnow()) - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    return f"{days} day{'s' if days != 1 else ''} ago"


@bp.app_template_filter("thousands")
def thousands(value: int) -> str:
    return f"{value:,}"


bp.add_app_template_global(lambda: SPARK_DAYS, "spark_days")


def current_call(experiment: Experiment, now: datetime) -> LatestCall | None:
    """The recommendation now, for one experiment's page: its live analysis (kept per
    data version, as the report keeps it), None before it started."""
    if experiment.started_at is None:
        return None
    stats = experiment_stats(get_session(), experiment)
    prior, rule = experiment_settings(experiment)
    live_result(experiment, stats, prior, rule, now)
    return latest_calls().of([experiment.id]).get(experiment.id)
