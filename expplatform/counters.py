"""The calendar of the stored counters, shared by the code that writes them
(``ingest``: incrementally in Python, and by ``rebuild`` in SQL) and the code that
reads them (``aggregation``).

A report's daily series adds the per-day ``outcome_counts`` to exposures grouped by
day, so both sides must mean the same thing by "the day": the UTC date, and for an
outcome never a day before its exposure (clock skew may date an event a moment
earlier, and a day with more converters than exposed customers would be nonsense).
Keeping the Python rule and its SQL twins here, side by side, is what keeps ingest,
rebuild, warehouse statistics and reports in agreement; they depend on SQLAlchemy
expressions only.

The journey counters have no exposure to clamp to (a customer may be in no
experiment): their day is the event's own UTC date (:func:`event_day`, and
:func:`utc_day` in SQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case
from sqlalchemy.orm import Session

from .warehouse import dialects


def outcome_day(moment: datetime, exposed_at: datetime) -> str:
    """The UTC day (ISO date) an outcome counts from: never before its exposure."""
    return max(moment, exposed_at).date().isoformat()


def event_day(moment: datetime) -> str:
    """The UTC day (ISO date) of an event's time, for the journey counters."""
    return moment.astimezone(UTC).date().isoformat()


def utc_day(session: Session, column: Any) -> Any:
    """SQL for the UTC date of a timestamp column, on the session's database (the
    spellings, warehouses' included, are ``warehouse.dialects.utc_day``)."""
    return dialects.utc_day(session.get_bind().dialect.name, column)


def not_before(moment: Any, exposed_at: Any) -> Any:
    """SQL for the time an outcome is dated: never before its exposure (as
    :func:`outcome_day`)."""
    return case((moment < exposed_at, exposed_at), else_=moment)
