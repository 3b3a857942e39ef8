"""Is traffic arriving? Exposure counts by day, the latest exposure and the latest
outcome of experiments, for the pages that guide a team from a draft to a report
(the experiment list and page, the Integrate page's live status).

Exposures have no index on their time, so a question about "when" reads each of the
experiment's exposures through the (experiment, variant) index: one grouped query per
page of experiments, answering every question at once, kept by the caller for a while
(``TimedMemo``) rather than asked on every view. That is milliseconds for the demo's
50,000 customers and up to seconds for millions (SQLite, 2 busy cores: the live status
of 100,000 exposures 0.4 s, of 600,000 0.8 s; a list of experiments with 1,000,000 2.8 s),
so the memo keeps a slow answer ten times as long as it took. An index on
(experiment_id, exposed_at) would make them range scans. Forced (QA) customers are
left out, as every report leaves them out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy import case, false, func, select
from sqlalchemy.orm import Session

from .counters import utc_day
from .models import Experiment, Exposure, Outcome

SPARK_DAYS = 28
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True)
class Activity:
    """One experiment's exposures: in all, per UTC day of the last ``SPARK_DAYS``
    (oldest first, today last), and the latest; and its latest outcome event."""

    total: int
    daily: tuple[int, ...]
    last_exposure_at: datetime | None
    last_outcome_at: datetime | None

    @property
    def today(self) -> int:
        return self.daily[-1] if self.daily else 0


def activity(session: Session, experiment_ids: Iterable[int], now: datetime) -> dict[int, Activity]:
    """The activity of each experiment (every id gets one, empty when nothing came)."""
    ids = sorted(set(experiment_ids))
    if not ids:
        return {}
    first_day = now.astimezone(UTC).date() - timedelta(days=SPARK_DAYS - 1)
    day = utc_day(session, Exposure.exposed_at).label("day")
    totals: dict[int, int] = dict.fromkeys(ids, 0)
    daily: dict[int, dict[date, int]] = {i: {} for i in ids}
    last: dict[int, datetime | None] = dict.fromkeys(ids)
    rows = session.execute(
        select(Exposure.experiment_id, day, func.count(), func.max(Exposure.exposed_at))
        .where(Exposure.experiment_id.in_(ids), Exposure.forced == false())
        .group_by(Exposure.experiment_id, day)
    )
    for experiment_id, on, count, latest in rows:
        on = _as_date(on)
        totals[experiment_id] += count
        if on >= first_day:
            daily[experiment_id][on] = count
        if latest is not None and (last[experiment_id] is None or latest > last[experiment_id]):
            last[experiment_id] = latest
    outcomes = last_outcomes(session, ids)
    days = [first_day + timedelta(days=n) for n in range(SPARK_DAYS)]
    return {
        i: Activity(totals[i], tuple(daily[i].get(d, 0) for d in days), _aware(last[i]), outcomes.get(i)) for i in ids
    }


def last_outcomes(session: Session, experiment_ids: list[int]) -> dict[int, datetime]:
    """The time of each experiment's latest counted outcome: a conversion or a rating."""
    rows = session.execute(
        select(Outcome.experiment_id, func.max(Outcome.converted_at), func.max(Outcome.rated_at))
        .where(Outcome.experiment_id.in_(experiment_ids))
        .group_by(Outcome.experiment_id)
    )
    found: dict[int, datetime] = {}
    for experiment_id, converted, rated in rows:
        times = [t for t in (_aware(converted), _aware(rated)) if t is not None]
        if times:
            found[experiment_id] = max(times)
    return found


@dataclass(frozen=True)
class LiveStatus:
    """The Integrate page's status line: the latest exposure and how many today."""

    last_exposure_at: datetime | None
    exposed_today: int


def live_status(session: Session, experiment: Experiment | None, now: datetime) -> LiveStatus:
    """Of one experiment, or of the whole service (``experiment`` None)."""
    midnight = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)
    today = func.count(case((Exposure.exposed_at >= midnight, 1)))  # COUNT skips the NULLs of other days
    query = select(func.max(Exposure.exposed_at), today).where(Exposure.forced == false())
    if experiment is not None:
        query = query.where(Exposure.experiment_id == experiment.id)
    latest, exposed_today = session.execute(query).one()
    return LiveStatus(_aware(latest), exposed_today or 0)


def simulated_on_journey(session: Session, journey_id: int) -> bool:
    """Whether the simulator wrote data of any experiment on the journey."""
    found = session.scalar(
        select(Experiment.id).where(Experiment.journey_id == journey_id, Experiment.simulated.is_(True)).limit(1)
    )
    return found is not None


class TimedMemo(Generic[K, T]):
    """Values kept per worker for ``seconds``, or for ``cost_factor`` times as long as
    they took to compute if that is longer: a page viewed by many, or refreshing
    itself, asks the database once per period however many look, and the time spent
    answering stays under 1/``cost_factor`` of one thread however large the data."""

    def __init__(self, seconds: float, *, cost_factor: float = 10.0, size: int = 512) -> None:
        self._seconds, self._cost_factor, self._size = seconds, cost_factor, size
        self._items: dict[K, tuple[float, T]] = {}  # key -> (expires at, value)
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[K], compute: Callable[[list[K]], dict[K, T]]) -> dict[K, T]:
        """The values of ``keys``; ``compute`` is called once with the missing or stale ones."""
        started = time.monotonic()
        wanted = list(dict.fromkeys(keys))
        with self._lock:
            kept = {k: self._items[k] for k in wanted if k in self._items}
        fresh = {k: value for k, (expires, value) in kept.items() if started < expires}
        missing = [k for k in wanted if k not in fresh]
        if missing:
            computed = compute(missing)
            finished = time.monotonic()
            expires = finished + max(self._seconds, self._cost_factor * (finished - started))
            with self._lock:
                if len(self._items) + len(computed) > self._size:
                    self._items.clear()
                self._items.update((k, (expires, v)) for k, v in computed.items())
            fresh.update(computed)
        return fresh


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
