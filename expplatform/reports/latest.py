"""The latest call of each experiment, for the lists: the experiment list shows each
row's recommendation without analysing anything itself.

Every live analysis at the experiment's own settings (a report, the experiment page)
leaves its recommendation here, per worker; a list row shows the newest one this
worker saw, with when it was made, or nothing until a report has been looked at.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from flask import current_app

from analysis.types import ExperimentStats, Recommendation

ACTION_WORDS = {
    "ship": "Ship",
    "keep_control": "Keep control",
    "keep_running": "Keep running",
    "not_enough_data": "Not enough data",
    "investigate": "Investigate",
    "no_outcomes": "No outcomes yet",
}


@dataclass(frozen=True)
class LatestCall:
    action: str
    variant: str | None
    summary: str
    at: datetime

    @property
    def label(self) -> str:
        word = ACTION_WORDS.get(self.action, self.action)
        return f"{word} {self.variant}" if self.action == "ship" and self.variant else word


class LatestCalls:
    def __init__(self) -> None:
        self._calls: dict[int, LatestCall] = {}
        self._lock = threading.Lock()

    def remember(
        self, experiment_id: int, stats: ExperimentStats, recommendation: Recommendation, at: datetime
    ) -> None:
        """Keep the call of an analysis made at ``at``; without any conversion or
        rating yet, the call would rest on exposures alone, so it is kept as
        ``no_outcomes`` instead."""
        if _outcome_seen(stats):
            call = LatestCall(recommendation.action, recommendation.variant, recommendation.summary, at)
        else:
            call = LatestCall("no_outcomes", None, "Customers are exposed; no conversion or rating came yet.", at)
        with self._lock:
            known = self._calls.get(experiment_id)
            if known is None or known.at <= at:
                self._calls[experiment_id] = call

    def of(self, experiment_ids: Iterable[int]) -> dict[int, LatestCall]:
        with self._lock:
            return {i: self._calls[i] for i in experiment_ids if i in self._calls}


def _outcome_seen(stats: ExperimentStats) -> bool:
    return any(cell.converted or any(cell.ratings) for s in stats.stages for cell in stats.cells[s].values())


def latest_calls() -> LatestCalls:
    """The current app's (inside an app context)."""
    return current_app.extensions.setdefault("latest_calls", LatestCalls())
