"""The first step of ingest, with no database: the request body into raw events,
and each raw event into a typed :class:`EventIn` or a :class:`Rejection` by index.

Request-level problems (a body that is not an event or a batch, too many events)
raise domain errors and store nothing; a bad event is rejected with a stable code
(``missing_field``, ``unknown_field``, ``invalid_type``, ``invalid_value``,
``invalid_timestamp``, ``timestamp_in_future``, ``value_required``,
``value_not_allowed``, ``metric_not_allowed``, ``unknown_experiment``,
``unknown_metric``, ``duplicate_in_batch``, ``invalid_event``) while the others of
its batch go on.

A conversion names its stage. A rating (``type`` ``rating``, or its older synonym
``satisfaction``: both are stored as ``satisfaction``) names its question
(``metric``) and may omit the stage, which the question gives, or names only its
stage when that stage has a single question. Rules that need the journeys or the
experiments (the stage and the question exist and agree, the question's scale, the
experiment measures them) are attribution's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..definitions import SLUG
from ..errors import MalformedRequest, TooLarge
from ..models import EventType

# The wire's event types, and the stored type each one is.
WIRE_TYPES: dict[str, EventType] = {
    "conversion": "conversion",
    "rating": "satisfaction",
    "satisfaction": "satisfaction",
}

FIELDS = frozenset({"event_id", "customer_id", "stage", "type", "metric", "value", "timestamp", "experiment"})
REQUIRED = ("event_id", "customer_id", "type")
MAX_LENGTHS = {"event_id": 128, "customer_id": 256}
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class EventIn:
    """A syntactically valid event; ``occurred_at`` None means "when it reached us".
    ``stage`` is None only for a rating that names its question (``metric``)."""

    index: int
    event_id: str
    customer_id: str
    stage: str | None
    type: EventType
    metric: str | None
    value: int | None
    occurred_at: datetime | None
    experiment: str | None


@dataclass(frozen=True)
class Rejection:
    """An event refused, by its index in the request, with a stable ``error`` code."""

    index: int
    error: str
    message: str


def batch_items(payload: Any, *, max_events: int) -> list[Any]:
    """The request body as a list of raw events: one event object or
    ``{"events": [...]}``. Anything else is a request-level error."""
    if isinstance(payload, dict) and "events" in payload:
        extra = sorted(set(payload) - {"events"})
        if extra:
            raise MalformedRequest(
                code="invalid_body", message=f"A batch has only 'events'; unexpected: {', '.join(extra)}."
            )
        items = payload["events"]
        if not isinstance(items, list):
            raise MalformedRequest(code="invalid_body", message="'events' must be a list of event objects.")
    elif isinstance(payload, dict):
        items = [payload]
    else:
        raise MalformedRequest(code="invalid_body", message='The body must be an event object or {"events": [...]}.')
    if len(items) > max_events:
        raise TooLarge(
            code="too_many_events", message=f"A batch may hold at most {max_events} events; this one has {len(items)}."
        )
    return items


class _Invalid(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


def _string(raw: dict[str, Any], name: str, *, slug: bool = False) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise _Invalid("invalid_type", f"{name} must be a string")
    if slug:
        if not SLUG.fullmatch(value):
            raise _Invalid("invalid_value", f"{name} must be a slug: lowercase letters, digits, '-' or '_' (1-64)")
    elif not value or len(value) > MAX_LENGTHS[name] or "\x00" in value:
        raise _Invalid("invalid_value", f"{name} must be 1-{MAX_LENGTHS[name]} characters, without NUL")
    else:
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") that JSON let through
            raise _Invalid("invalid_value", f"{name} must be valid Unicode text") from None
    return value


def _timestamp(raw: Any, now: datetime, max_future: timedelta) -> datetime:
    if not isinstance(raw, str):
        raise _Invalid("invalid_type", "timestamp must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(raw) if len(raw) <= 64 else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _Invalid("invalid_timestamp", "timestamp must be ISO 8601, e.g. 2024-05-01T12:30:00Z")
    if parsed.tzinfo is None:
        raise _Invalid("invalid_timestamp", "timestamp must carry a zone (Z or +hh:mm)")
    try:
        occurred = parsed.astimezone(UTC)
    except OverflowError:
        raise _Invalid("invalid_timestamp", "timestamp is out of range") from None
    if occurred > now + max_future:
        raise _Invalid("timestamp_in_future", f"timestamp is more than {max_future} in the future")
    return occurred


def _parse(raw: Any, index: int, now: datetime, max_future: timedelta) -> EventIn:
    if not isinstance(raw, dict):
        raise _Invalid("invalid_event", "each event must be a JSON object")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise _Invalid("unknown_field", f"unknown field(s): {', '.join(map(str, unknown))}")
    missing = [name for name in REQUIRED if raw.get(name) is None]
    if missing:
        raise _Invalid("missing_field", f"missing field(s): {', '.join(missing)}")
    event_id = _string(raw, "event_id")
    customer_id = _string(raw, "customer_id")
    wire_type = raw["type"]
    if not isinstance(wire_type, str):
        raise _Invalid("invalid_type", "type must be a string")
    kind = WIRE_TYPES.get(wire_type)
    if kind is None:
        raise _Invalid("invalid_value", "type must be 'conversion', 'rating' or 'satisfaction'")
    metric = raw.get("metric")
    if metric is not None:
        if not isinstance(metric, str):
            raise _Invalid("invalid_type", "metric must be a string")
        if kind == "conversion":
            raise _Invalid("metric_not_allowed", "a conversion names no metric (a rating question)")
        if not SLUG.fullmatch(metric):
            raise _Invalid("unknown_metric", f"no rating question has the key {metric!r}")
    if raw.get("stage") is not None:
        stage: str | None = _string(raw, "stage", slug=True)
    elif metric is None:
        what = "a conversion" if kind == "conversion" else "a rating without metric"
        raise _Invalid("missing_field", f"missing field(s): stage ({what} names its stage)")
    else:
        stage = None
    value = raw.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("invalid_type", "value must be an integer")
        if not INT32[0] <= value <= INT32[1]:
            raise _Invalid("invalid_value", "value is out of range")
        if kind == "conversion":
            raise _Invalid("value_not_allowed", "a conversion carries no value")
    elif kind == "satisfaction":
        raise _Invalid("value_required", "a rating needs an integer value")
    experiment = raw.get("experiment")
    if experiment is not None:
        if not isinstance(experiment, str):
            raise _Invalid("invalid_type", "experiment must be a string")
        if not SLUG.fullmatch(experiment):
            raise _Invalid("unknown_experiment", f"no experiment has the key {experiment!r}")
    occurred_at = _timestamp(raw["timestamp"], now, max_future) if raw.get("timestamp") is not None else None
    return EventIn(index, event_id, customer_id, stage, kind, metric, value, occurred_at, experiment)


def validate_events(
    items: Sequence[Any], *, now: datetime, max_future_seconds: float
) -> tuple[list[EventIn], list[Rejection]]:
    """Check each event on its own (database-free rules), by index. The first valid
    event with a given ``event_id`` wins; later ones in the same batch are rejected
    as ``duplicate_in_batch`` rather than silently merged."""
    max_future = timedelta(seconds=max_future_seconds)
    valid: list[EventIn] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for index, raw in enumerate(items):
        try:
            event = _parse(raw, index, now, max_future)
        except _Invalid as problem:
            rejected.append(Rejection(index, problem.error, problem.message))
            continue
        if event.event_id in seen:
            rejected.append(Rejection(index, "duplicate_in_batch", "an earlier event in this batch has this event_id"))
            continue
        seen.add(event.event_id)
        valid.append(event)
    return valid, rejected
