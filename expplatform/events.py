"""Stage outcomes in: validation, idempotent storage, attribution to exposures, and
the outcome rows and counters that reports read.

Client apps send what a customer did at a stage without knowing which experiments
the customer is in. Each stored event counts for every experiment E such that:

- the customer has an exposure to E that is not forced (QA customers never count);
- the exposure came before the event: ``exposed_at <= min(occurred_at + clock skew,
  received_at)`` (an event cannot have happened after it reached us, so a late-made
  exposure never captures an event with a clock running ahead);
- E measures the event's stage, and the event names E or no experiment;
- E had not stopped when the event occurred (once stopped, customers are no longer
  served the variants, so later outcomes say nothing about them).

Per experiment x customer x stage one ``outcomes`` row keeps the first conversion and
the latest rating (by event time; on equal times the one stored last: the later
request, or within one request the greater event_id), and
``outcome_counts`` keeps the per-cell customer counts those rows sum to, moved in the
same transaction from each row's old state to its new one. Events that count
nowhere are stored all the same and counted as data quality: per experiment and
stage when an exposure exists but does not qualify (``before_exposure``,
``after_stop``, ``forced``) or when the event named an experiment that never exposed
the customer (``not_exposed``), and per day and stage when no experiment measuring
the stage ever exposed the customer (``unmatched_event_counts``).

A batch is attributed from a read of the exposures, then stored in one write
transaction (all of it or, on a failure, none). Events are inserted with ``ON CONFLICT (event_id) DO
NOTHING RETURNING``, so only rows this transaction really inserted move outcomes:
a re-sent event, or the same batch racing in another worker, is reported as a
duplicate and counts once. Locks are taken phase by phase, each in key order (events
by event_id, then new outcome rows, then existing outcome rows, then counters), so
concurrent batches wait for each other instead of deadlocking, and the whole
transaction is safe to retry.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Date, and_, case, cast, delete, func, insert, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from .config import Settings
from .db import Database, retry_on_lock
from .errors import MalformedRequest, TooLarge
from .models import (
    Event,
    EventQualityCount,
    Experiment,
    Exposure,
    Outcome,
    OutcomeCount,
    utcnow,
)

EventType = Literal["conversion", "satisfaction"]
EVENT_TYPES: tuple[EventType, ...] = ("conversion", "satisfaction")
QualityKind = Literal["before_exposure", "after_stop", "forced", "not_exposed"]

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FIELDS = frozenset({"event_id", "customer_id", "stage", "type", "value", "timestamp", "experiment"})
REQUIRED = ("event_id", "customer_id", "stage", "type")
MAX_LENGTHS = {"event_id": 128, "customer_id": 256}
INT32 = (-(2**31), 2**31 - 1)


# -- validation ---------------------------------------------------------------------


@dataclass(frozen=True)
class EventIn:
    """A syntactically valid event; ``occurred_at`` None means "when it reached us"."""

    index: int
    event_id: str
    customer_id: str
    stage: str
    type: EventType
    value: int | None
    occurred_at: datetime | None
    experiment: str | None


@dataclass(frozen=True)
class Rejection:
    index: int
    error: str
    message: str


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    rejected: tuple[Rejection, ...] = field(default=())


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
        if not SLUG.match(value):
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
    stage = _string(raw, "stage", slug=True)
    kind = raw["type"]
    if not isinstance(kind, str):
        raise _Invalid("invalid_type", "type must be a string")
    if kind not in EVENT_TYPES:
        raise _Invalid("invalid_value", "type must be 'conversion' or 'satisfaction'")
    value = raw.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("invalid_type", "value must be an integer")
        if not INT32[0] <= value <= INT32[1]:
            raise _Invalid("invalid_value", "value is out of range")
        if kind == "conversion":
            raise _Invalid("value_not_allowed", "a conversion carries no value")
    elif kind == "satisfaction":
        raise _Invalid("value_required", "a satisfaction event needs an integer value (the rating)")
    experiment = raw.get("experiment")
    if experiment is not None:
        if not isinstance(experiment, str):
            raise _Invalid("invalid_type", "experiment must be a string")
        if not SLUG.match(experiment):
            raise _Invalid("unknown_experiment", f"no experiment has the key {experiment!r}")
    occurred_at = _timestamp(raw["timestamp"], now, max_future) if raw.get("timestamp") is not None else None
    return EventIn(index, event_id, customer_id, stage, kind, value, occurred_at, experiment)


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


# -- the hot path's SQL ----------------------------------------------------------------


class _Driver:
    """The ingest statements, sent straight to the DB-API driver on the session's
    connection (same transaction).

    Going through SQLAlchemy's per-value bind and result processing cost more than
    the database itself at thousands of events per request, so values are converted
    here to exactly what the ORM stores (on SQLite, UTC timestamps as
    'YYYY-MM-DD HH:MM:SS.ffffff'). Row sets travel as multi-row VALUES on SQLite and
    as one JSON parameter on PostgreSQL: psycopg would otherwise re-parse a statement
    with thousands of placeholders, or escape array elements one by one, on every
    request, while the server unpacks JSON rows at C speed.
    """

    # Bound parameters per SQLite statement (its limit is 32,766).
    MAX_PARAMS = 30_000
    PAD_ROWS = 64

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        self.sqlite = self.connection.dialect.name == "sqlite"
        self.lock = "" if self.sqlite else " FOR UPDATE"

    def time_in(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if not self.sqlite:
            return value.isoformat()  # read back by ::timestamptz, zone included
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def time_out(self, value: Any) -> datetime | None:
        if value is None or not isinstance(value, str):
            return value
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def _run(self, statement: str, params: Sequence[Any], fetch: bool) -> list[tuple]:
        result = self.connection.exec_driver_sql(statement, tuple(params))
        return result.fetchall() if fetch else []

    def rows(
        self,
        template: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[tuple],
        *,
        fetch: bool = False,
        idempotent: bool = True,
    ) -> list[tuple]:
        """Run ``template`` with ``{rows}`` replaced by a row source of ``rows``
        (columns named and, for PostgreSQL, typed by ``columns``)."""
        if not rows:
            return []
        if not self.sqlite:
            fields = ", ".join(f"(r->>{i})::{kind} AS {name}" for i, (name, kind) in enumerate(columns))
            # In list order (the lock order the caller chose); jsonb is parsed once, where
            # json would be re-parsed for every field read.
            source = f"SELECT {fields} FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(r, n) ORDER BY n"
            return self._run(template.format(rows=source), [json.dumps(rows)], fetch)
        # Row counts are padded (repeating the last row) to a multiple of PAD_ROWS, so a
        # few statement shapes serve every batch size: sqlite3's statement cache then
        # reuses them instead of filling with big one-off compiled statements (which
        # grew each worker by tens of MiB). Only for statements where a repeated row
        # changes nothing (``idempotent``).
        width = len(columns)
        row = "(" + ", ".join(["?"] * width) + ")"
        largest = max(1, self.MAX_PARAMS // width // self.PAD_ROWS) * self.PAD_ROWS
        found: list[tuple] = []
        for start in range(0, len(rows), largest):
            chunk = list(rows[start : start + largest])
            if idempotent:
                chunk += chunk[-1:] * (-len(chunk) % self.PAD_ROWS)
            source = "VALUES " + ", ".join([row] * len(chunk))
            found.extend(self._run(template.format(rows=source), [v for r in chunk for v in r], fetch))
        return found


# -- attribution ---------------------------------------------------------------------


@dataclass(frozen=True)
class _ExperimentInfo:
    id: int
    key: str
    stages: frozenset[str]
    scale_min: int
    scale_max: int
    stopped_at: datetime | None


@dataclass(frozen=True)
class _ExposureInfo:
    experiment_id: int
    variant_id: int
    exposed_at: datetime
    forced: bool


@dataclass
class _Decision:
    """What one event does: the experiments it counts for (experiment id -> the
    exposure it follows), and data-quality marks for the others."""

    counted: dict[int, _ExposureInfo] = field(default_factory=dict)
    quality: list[tuple[int, QualityKind]] = field(default_factory=list)
    unmatched: bool = False


def _load_context(
    session: Session, sql: _Driver, events: Sequence[EventIn]
) -> tuple[dict[str, list[_ExposureInfo]], dict[int, _ExperimentInfo]]:
    customers = sorted({e.customer_id for e in events})
    exposures: dict[str, list[_ExposureInfo]] = defaultdict(list)
    experiment_ids: set[int] = set()
    rows = sql.rows(
        "SELECT customer_id, experiment_id, variant_id, exposed_at, forced FROM exposures "
        "WHERE customer_id IN ({rows})",
        [("customer_id", "text")],
        [(c,) for c in customers],
        fetch=True,
    )
    for customer_id, experiment_id, variant_id, exposed_at, forced in rows:
        exposures[customer_id].append(_ExposureInfo(experiment_id, variant_id, sql.time_out(exposed_at), bool(forced)))
        experiment_ids.add(experiment_id)
    named = sorted({e.experiment for e in events if e.experiment is not None})
    condition = Experiment.id.in_(sorted(experiment_ids))
    if named:
        condition = or_(condition, Experiment.key.in_(named))
    experiments = {
        row.id: _ExperimentInfo(row.id, row.key, frozenset(row.stages), row.scale_min, row.scale_max, row.stopped_at)
        for row in session.execute(
            select(
                Experiment.id,
                Experiment.key,
                Experiment.stages,
                Experiment.scale_min,
                Experiment.scale_max,
                Experiment.stopped_at,
            ).where(condition)
        )
    }
    return exposures, experiments


def _decide(
    event: EventIn,
    occurred_at: datetime,
    cutoff: datetime,
    received_at: datetime,
    exposures: list[_ExposureInfo],
    experiments: dict[int, _ExperimentInfo],
    by_key: dict[str, _ExperimentInfo],
) -> _Decision | Rejection:
    named = by_key.get(event.experiment) if event.experiment is not None else None
    if event.experiment is not None:
        if named is None:
            return Rejection(event.index, "unknown_experiment", f"no experiment has the key {event.experiment!r}")
        if event.stage not in named.stages:
            return Rejection(
                event.index, "stage_not_measured", f"experiment {named.key!r} does not measure stage {event.stage!r}"
            )
    decision = _Decision()
    candidates = 0
    for exposure in exposures:
        experiment = experiments[exposure.experiment_id]
        if event.stage not in experiment.stages or (named is not None and experiment.id != named.id):
            continue
        if exposure.exposed_at > received_at:
            continue  # made after the event reached us: as if it did not exist yet
        candidates += 1
        if exposure.forced:
            decision.quality.append((experiment.id, "forced"))
        elif exposure.exposed_at > cutoff:
            decision.quality.append((experiment.id, "before_exposure"))
        elif experiment.stopped_at is not None and occurred_at > experiment.stopped_at:
            decision.quality.append((experiment.id, "after_stop"))
        else:
            if event.type == "satisfaction" and not experiment.scale_min <= event.value <= experiment.scale_max:  # type: ignore[operator]
                return Rejection(
                    event.index,
                    "value_out_of_scale",
                    f"rating {event.value} is outside the {experiment.scale_min}-{experiment.scale_max} scale "
                    f"of experiment {experiment.key!r} it counts for",
                )
            decision.counted[experiment.id] = exposure
    if candidates == 0:
        if named is not None:
            decision.quality.append((named.id, "not_exposed"))
        else:
            decision.unmatched = True
    return decision


# -- outcome rows and counters -------------------------------------------------------


@dataclass
class _Fold:
    """The batch's contribution to one outcome row: earliest conversion and latest
    rating, ordered by (time, events.id)."""

    variant_id: int
    exposed_at: datetime
    converted_at: datetime | None = None
    rating: int | None = None
    rated_at: datetime | None = None
    rating_event_id: int | None = None

    def add(self, kind: EventType, value: int | None, at: datetime, row_id: int) -> None:
        if kind == "conversion":
            if self.converted_at is None or at < self.converted_at:
                self.converted_at = at
        elif self.rated_at is None or (at, row_id) > (self.rated_at, self.rating_event_id):
            self.rating, self.rated_at, self.rating_event_id = value, at, row_id


OutcomeKey = tuple[int, str, str]  # experiment id, customer id, stage
CountKey = tuple[int, str, int, str, str, int]  # experiment id, stage, variant id, day, kind, value


def _day(moment: datetime, exposed_at: datetime) -> str:
    """The UTC day an outcome counts from: never before its exposure (clock skew may
    date it a moment earlier), so no day has more converters than exposed."""
    return max(moment, exposed_at).date().isoformat()


_OUTCOME_COLUMNS = (
    ("experiment_id", "integer"),
    ("customer_id", "text"),
    ("stage", "text"),
    ("variant_id", "integer"),
    ("converted_at", "timestamptz"),
    ("rating", "integer"),
    ("rated_at", "timestamptz"),
    ("rating_event_id", "bigint"),
)
_OUTCOME_NAMES = ", ".join(name for name, _kind in _OUTCOME_COLUMNS)


def _apply_outcomes(sql: _Driver, folds: dict[OutcomeKey, _Fold]) -> dict[CountKey, int]:
    """Write the folds into ``outcomes`` and return the counter deltas of every row's
    transition (new conversion: +1; rating a -> b: -1 on a, +1 on b).

    New rows are inserted (ON CONFLICT DO NOTHING RETURNING says which were new); the
    others are locked in key order, merged and updated. A row another transaction is
    inserting makes the insert wait for it, so the lock-and-merge sees it committed.
    """
    deltas: dict[CountKey, int] = defaultdict(int)
    keys = sorted(folds)
    rows = [
        (
            k[0],
            k[1],
            k[2],
            f.variant_id,
            sql.time_in(f.converted_at),
            f.rating,
            sql.time_in(f.rated_at),
            f.rating_event_id,
        )
        for k in keys
        for f in (folds[k],)
    ]
    inserted = {
        tuple(r)
        for r in sql.rows(
            f"INSERT INTO outcomes ({_OUTCOME_NAMES}) {{rows}} "
            "ON CONFLICT (experiment_id, customer_id, stage) DO NOTHING RETURNING experiment_id, customer_id, stage",
            _OUTCOME_COLUMNS,
            rows,
            fetch=True,
        )
    }
    for key in inserted:
        fold = folds[key]
        if fold.converted_at is not None:
            deltas[(key[0], key[2], fold.variant_id, _day(fold.converted_at, fold.exposed_at), "converted", 0)] += 1
        if fold.rating is not None and fold.rated_at is not None:
            deltas[(key[0], key[2], fold.variant_id, _day(fold.rated_at, fold.exposed_at), "rating", fold.rating)] += 1
    existing = [k for k in keys if k not in inserted]
    updates: list[tuple] = []
    current = sql.rows(
        f"SELECT {_OUTCOME_NAMES} FROM outcomes WHERE (experiment_id, customer_id, stage) IN ({{rows}}) "
        f"ORDER BY experiment_id, customer_id, stage{sql.lock}",
        _OUTCOME_COLUMNS[:3],
        existing,
        fetch=True,
    )
    for experiment_id, customer_id, stage, variant_id, converted_at, rating, rated_at, rating_event_id in current:
        key = (experiment_id, customer_id, stage)
        change = _merge(
            key,
            variant_id,
            sql.time_out(converted_at),
            rating,
            sql.time_out(rated_at),
            rating_event_id,
            folds[key],
            deltas,
        )
        if change is not None:
            converted_at, rating, rated_at, rating_event_id = change
            updates.append(
                (*key, variant_id, sql.time_in(converted_at), rating, sql.time_in(rated_at), rating_event_id)
            )
    # Rewrites each changed row whole (same key and variant), from one row source.
    sql.rows(
        f"INSERT INTO outcomes ({_OUTCOME_NAMES}) {{rows}} ON CONFLICT (experiment_id, customer_id, stage) DO UPDATE "
        "SET converted_at = excluded.converted_at, rating = excluded.rating, rated_at = excluded.rated_at, "
        "rating_event_id = excluded.rating_event_id",
        _OUTCOME_COLUMNS,
        updates,
    )
    return deltas


def _merge(
    key: OutcomeKey,
    variant_id: int,
    converted_at: datetime | None,
    rating: int | None,
    rated_at: datetime | None,
    rating_event_id: int | None,
    fold: _Fold,
    deltas: dict[CountKey, int],
) -> tuple | None:
    """The row after the batch, or None if unchanged; records the counter moves
    (an earlier conversion may move it to another day; a newer rating moves the
    customer from the old (day, rating) cell to the new one)."""
    changed = False
    experiment_id, _customer, stage = key
    cell = (experiment_id, stage, variant_id)
    if fold.converted_at is not None and (converted_at is None or fold.converted_at < converted_at):
        if converted_at is not None:
            deltas[(*cell, _day(converted_at, fold.exposed_at), "converted", 0)] -= 1
        deltas[(*cell, _day(fold.converted_at, fold.exposed_at), "converted", 0)] += 1
        converted_at, changed = fold.converted_at, True
    if fold.rated_at is not None and (
        rated_at is None or (fold.rated_at, fold.rating_event_id) > (rated_at, rating_event_id)
    ):
        if rating is not None and rated_at is not None:
            deltas[(*cell, _day(rated_at, fold.exposed_at), "rating", rating)] -= 1
        deltas[(*cell, _day(fold.rated_at, fold.exposed_at), "rating", fold.rating)] += 1  # type: ignore[arg-type]
        rating, rated_at, rating_event_id, changed = fold.rating, fold.rated_at, fold.rating_event_id, True
    return (converted_at, rating, rated_at, rating_event_id) if changed else None


def _add_counts(
    sql: _Driver, table: str, keys: Sequence[tuple[str, str]], column: str, counts: dict[tuple, int]
) -> None:
    """Upsert ``column += n`` for each key, in key order (lock order across workers)."""
    names = ", ".join(name for name, _kind in keys)
    sql.rows(
        f"INSERT INTO {table} ({names}, {column}) {{rows}} "
        f"ON CONFLICT ({names}) DO UPDATE SET {column} = {table}.{column} + excluded.{column}",
        (*keys, (column, "bigint")),
        [(*key, n) for key, n in sorted(counts.items()) if n],
        idempotent=False,
    )


# -- the ingest transaction ----------------------------------------------------------

_EVENT_COLUMNS = (
    ("event_id", "text"),
    ("customer_id", "text"),
    ("stage", "text"),
    ("type", "text"),
    ("value", "integer"),
    ("occurred_at", "timestamptz"),
    ("received_at", "timestamptz"),
    ("experiment_key", "text"),
    ("attributed", "integer"),
    ("exposure_cutoff", "timestamptz"),
)
_EVENT_NAMES = ", ".join(name for name, _kind in _EVENT_COLUMNS)


@dataclass
class _Plan:
    """A batch attributed and ready to store."""

    received_at: datetime
    rows: list[tuple]  # events rows, in event_id order
    decisions: dict[str, tuple[EventIn, datetime, _Decision]]
    rejected: list[Rejection]


def _plan(session: Session, events: Sequence[EventIn], *, clock_skew_seconds: float) -> _Plan:
    """Attribute each event to the exposures as they are when the batch arrives, and
    reject those that break a rule needing the database (experiment, stage, scale).

    This reads only, before the write transaction: on SQLite, where one writer works
    at a time, the write lock is then held for the writes alone. An exposure
    committed while this runs may be missed, as it would be by a batch that arrived
    a moment earlier; a client that sends events after its assign call returned
    never meets that (the exposure was committed before the event was sent)."""
    sql = _Driver(session)
    received_at = utcnow()
    skew = timedelta(seconds=clock_skew_seconds)
    exposures, experiments = _load_context(session, sql, events)
    by_key = {info.key: info for info in experiments.values()}
    rejected: list[Rejection] = []
    rows: list[tuple] = []
    decisions: dict[str, tuple[EventIn, datetime, _Decision]] = {}
    received = sql.time_in(received_at)
    for event in events:
        occurred_at = event.occurred_at or received_at
        cutoff = min(occurred_at + skew, received_at)
        decision = _decide(
            event, occurred_at, cutoff, received_at, exposures.get(event.customer_id, []), experiments, by_key
        )
        if isinstance(decision, Rejection):
            rejected.append(decision)
            continue
        decisions[event.event_id] = (event, occurred_at, decision)
        rows.append(
            (
                event.event_id,
                event.customer_id,
                event.stage,
                event.type,
                event.value,
                sql.time_in(occurred_at),
                received,
                event.experiment,
                len(decision.counted),
                sql.time_in(cutoff),
            )
        )
    # In event_id order: two batches sharing events then wait for each other instead of
    # deadlocking on PostgreSQL (each waits on the other's uncommitted duplicates).
    rows.sort(key=lambda row: row[0])
    return _Plan(received_at, rows, decisions, rejected)


def _store(session: Session, plan: _Plan) -> IngestResult:
    """Insert the planned events in the caller's write transaction (if absent) and
    move outcomes and counters for those really inserted."""
    sql = _Driver(session)
    received_at, rows, decisions = plan.received_at, plan.rows, plan.decisions
    inserted = dict(
        (event_id, row_id)
        for row_id, event_id in sql.rows(
            f"INSERT INTO events ({_EVENT_NAMES}) {{rows}} ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id",
            _EVENT_COLUMNS,
            rows,
            fetch=True,
        )
    )

    folds: dict[OutcomeKey, _Fold] = {}
    quality: dict[tuple[int, str, str], int] = defaultdict(int)
    unmatched: dict[tuple[Any, str], int] = defaultdict(int)
    for event_id, row_id in inserted.items():
        event, occurred_at, decision = decisions[event_id]
        for experiment_id, exposure in decision.counted.items():
            key = (experiment_id, event.customer_id, event.stage)
            fold = folds.get(key)
            if fold is None:
                fold = folds[key] = _Fold(exposure.variant_id, exposure.exposed_at)
            fold.add(event.type, event.value, occurred_at, row_id)
        for experiment_id, kind in decision.quality:
            quality[(experiment_id, event.stage, kind)] += 1
        if decision.unmatched:
            unmatched[(received_at.date().isoformat(), event.stage)] += 1
    deltas = _apply_outcomes(sql, folds)
    _add_counts(
        sql,
        "outcome_counts",
        (
            ("experiment_id", "integer"),
            ("stage", "text"),
            ("variant_id", "integer"),
            ("day", "date"),
            ("kind", "text"),
            ("value", "integer"),
        ),
        "customers",
        deltas,
    )
    _add_counts(
        sql,
        "event_quality_counts",
        (("experiment_id", "integer"), ("stage", "text"), ("kind", "text")),
        "events",
        quality,
    )
    _add_counts(sql, "unmatched_event_counts", (("day", "date"), ("stage", "text")), "events", unmatched)
    return IngestResult(len(inserted), len(rows) - len(inserted))


@contextmanager
def _writer_turn(database: Database) -> Iterator[None]:
    """On a SQLite file, wait for the write lock in a kernel queue (``flock`` on a
    file beside the database) before ``BEGIN IMMEDIATE``.

    SQLite's own busy handler polls with sleeps growing to 100 ms, so under a steady
    stream of batches a waiting worker mostly sleeps through the moments the lock is
    free: measured, the workers then used about a third of the CPU. A blocked
    ``flock`` wakes as soon as the holder lets go. PostgreSQL needs none of this.
    """
    path = database.engine.url.database if database.settings.is_sqlite else None
    if not path or path == ":memory:" or "mode=memory" in str(database.engine.url):
        yield
        return
    with open(f"{path}-ingest.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_events(database: Database, items: Sequence[Any], settings: Settings) -> IngestResult:
    """Validate raw events and store the valid ones in one write transaction,
    retried as a whole on lock timeouts (safe: event_id makes it
    idempotent). Database failures propagate, with nothing stored."""
    valid, rejected = validate_events(items, now=utcnow(), max_future_seconds=settings.max_future_seconds)
    if not valid:
        return IngestResult(0, 0, tuple(rejected))
    with database.sessionmaker() as reader:
        plan = _plan(reader, valid, clock_skew_seconds=settings.clock_skew_seconds)
    rejected = sorted(rejected + plan.rejected, key=lambda r: r.index)
    if not plan.rows:
        return IngestResult(0, 0, tuple(rejected))

    def attempt() -> IngestResult:
        with _writer_turn(database), database.write() as session:
            return _store(session, plan)

    stored = retry_on_lock(attempt)
    return IngestResult(stored.accepted, stored.duplicates, tuple(rejected))


# -- rebuild -------------------------------------------------------------------------


def utc_day(session: Session, column: Any) -> Any:
    """SQL for the UTC date of a timestamp column, on either database."""
    if session.get_bind().dialect.name == "sqlite":
        return func.date(column)  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC
    return cast(func.timezone("UTC", column), Date)


def not_before(moment: Any, exposed_at: Any) -> Any:
    """SQL for the time an outcome is dated: never before its exposure (as ``_day``)."""
    return case((moment < exposed_at, exposed_at), else_=moment)


def rebuild_outcomes(session: Session, experiment: Experiment) -> None:
    """Recompute the experiment's outcome rows, outcome counts and data-quality
    counts from the raw events and exposures, in SQL, by the same rules as ingest.

    Ingest maintains them incrementally; this is the independent recomputation that
    proves them (tests compare both) and repairs them after an incident.
    """
    for model in (OutcomeCount, EventQualityCount, Outcome):
        session.execute(delete(model).where(model.experiment_id == experiment.id))
    stages = list(experiment.stages)
    candidates = (
        select(
            Event.id,
            Event.customer_id,
            Event.stage,
            Event.type,
            Event.value,
            Event.occurred_at,
            Event.exposure_cutoff,
            Exposure.variant_id,
            Exposure.exposed_at,
            Exposure.forced,
        )
        .join(Exposure, and_(Exposure.customer_id == Event.customer_id, Exposure.experiment_id == experiment.id))
        .where(
            Event.stage.in_(stages),
            or_(Event.experiment_key.is_(None), Event.experiment_key == experiment.key),
            Exposure.exposed_at <= Event.received_at,
        )
    )
    counted = candidates.where(Exposure.forced.is_(False), Exposure.exposed_at <= Event.exposure_cutoff)
    if experiment.stopped_at is not None:
        counted = counted.where(Event.occurred_at <= experiment.stopped_at)
    counted = counted.where(
        or_(Event.type == "conversion", Event.value.between(experiment.scale_min, experiment.scale_max))
    ).subquery()
    latest = func.row_number().over(
        partition_by=(counted.c.customer_id, counted.c.stage, counted.c.type),
        order_by=(counted.c.occurred_at.desc(), counted.c.id.desc()),
    )
    ranked = select(counted, latest.label("rn")).subquery()
    is_latest_rating = and_(ranked.c.type == "satisfaction", ranked.c.rn == 1)
    per_row = select(
        literal(experiment.id).label("experiment_id"),
        ranked.c.customer_id,
        ranked.c.stage,
        ranked.c.variant_id,
        func.min(case((ranked.c.type == "conversion", ranked.c.occurred_at))).label("converted_at"),
        func.max(case((is_latest_rating, ranked.c.value))).label("rating"),
        func.max(case((is_latest_rating, ranked.c.occurred_at))).label("rated_at"),
        func.max(case((is_latest_rating, ranked.c.id))).label("rating_event_id"),
    ).group_by(ranked.c.customer_id, ranked.c.stage, ranked.c.variant_id)
    session.execute(
        insert(Outcome).from_select(
            [
                "experiment_id",
                "customer_id",
                "stage",
                "variant_id",
                "converted_at",
                "rating",
                "rated_at",
                "rating_event_id",
            ],
            per_row,
        )
    )
    exposure = and_(Exposure.experiment_id == Outcome.experiment_id, Exposure.customer_id == Outcome.customer_id)
    for kind, value_column, moment in (
        ("converted", literal(0), Outcome.converted_at),
        ("rating", Outcome.rating, Outcome.rated_at),
    ):
        day = utc_day(session, not_before(moment, Exposure.exposed_at))
        session.execute(
            insert(OutcomeCount).from_select(
                ["experiment_id", "stage", "variant_id", "day", "kind", "value", "customers"],
                select(
                    Outcome.experiment_id,
                    Outcome.stage,
                    Outcome.variant_id,
                    day,
                    literal(kind),
                    value_column,
                    func.count(),
                )
                .join(Exposure, exposure)
                .where(Outcome.experiment_id == experiment.id, moment.is_not(None))
                .group_by(Outcome.experiment_id, Outcome.stage, Outcome.variant_id, day, value_column),
            )
        )
    _rebuild_quality(session, experiment, candidates)


def _rebuild_quality(session: Session, experiment: Experiment, candidates: Select) -> None:
    c = candidates.subquery()
    reason = case(
        (c.c.forced.is_(True), literal("forced")),
        (c.c.exposed_at > c.c.exposure_cutoff, literal("before_exposure")),
        else_=literal("after_stop"),
    )
    held_back = or_(c.c.forced.is_(True), c.c.exposed_at > c.c.exposure_cutoff)
    if experiment.stopped_at is not None:
        held_back = or_(held_back, c.c.occurred_at > experiment.stopped_at)
    session.execute(
        insert(EventQualityCount).from_select(
            ["experiment_id", "stage", "kind", "events"],
            select(literal(experiment.id), c.c.stage, reason, func.count())
            .where(held_back)
            .group_by(c.c.stage, reason),
        )
    )
    exposed_then = (
        select(Exposure.id)
        .where(
            Exposure.experiment_id == experiment.id,
            Exposure.customer_id == Event.customer_id,
            Exposure.exposed_at <= Event.received_at,
        )
        .exists()
    )
    session.execute(
        insert(EventQualityCount).from_select(
            ["experiment_id", "stage", "kind", "events"],
            select(literal(experiment.id), Event.stage, literal("not_exposed"), func.count())
            .where(Event.experiment_key == experiment.key, ~exposed_then)
            .group_by(Event.stage),
        )
    )


def stored_outcomes(session: Session, experiment_id: int) -> list[tuple]:
    """Every outcome row of an experiment, in key order (for comparisons and exports)."""
    return [
        tuple(row)
        for row in session.execute(
            select(
                Outcome.customer_id,
                Outcome.stage,
                Outcome.variant_id,
                Outcome.converted_at,
                Outcome.rating,
                Outcome.rated_at,
                Outcome.rating_event_id,
            )
            .where(Outcome.experiment_id == experiment_id)
            .order_by(Outcome.customer_id, Outcome.stage)
        )
    ]
