"""The last step of ingest, and its entry point: :func:`record_events` validates a
batch, attributes it, then stores it in one write transaction (all of it or, on a
failure, none).

Events are inserted with ``INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING``,
so only rows this transaction really inserted move outcomes and counters: a re-sent
event, or the same batch racing in another worker, is reported as a duplicate and
counts once. Locks are taken phase by phase, each in key order (events by event_id,
then new and existing outcome rows, then new and existing journey outcome rows, then
the counters: outcome, journey, data quality, unmatched), so concurrent batches wait
for each other instead of deadlocking, and the whole transaction is safe to retry.
The journey counters (every stored event, whatever experiment it counts for) and the
data-quality counts (per experiment and stage, and per day and stage for
``unmatched`` events) move in the same transaction.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from .. import request_budget
from ..config import Settings
from ..db import Database, retry_on_lock
from ..models import utcnow
from ..rawsql import RawConnection, RawDialect
from .attribution import Attributed, Attribution, attribute
from .catalog import cached_catalog
from .outcomes import JOURNEY_OUTCOMES, OUTCOMES, Fold, JourneyOutcomeKey, OutcomeKey, apply_outcomes
from .validation import Rejection, validate_events


@dataclass(frozen=True)
class IngestResult:
    """What a request did: events stored, events already stored before (by
    event_id), and the rejected ones by index."""

    accepted: int
    duplicates: int
    rejected: tuple[Rejection, ...] = field(default=())


def record_events(database: Database, items: Sequence[Any], settings: Settings) -> IngestResult:
    """Validate raw events and store the valid ones in one write transaction,
    retried as a whole on lock timeouts (safe: event_id makes it
    idempotent). Database failures propagate, with nothing stored."""
    valid, rejected = validate_events(items, now=utcnow(), max_future_seconds=settings.max_future_seconds)
    if not valid:
        return IngestResult(0, 0, tuple(rejected))
    catalog = cached_catalog(database)
    with database.sessionmaker() as reader:
        attribution = attribute(reader, valid, catalog, clock_skew_seconds=settings.clock_skew_seconds)
    rejected = sorted(rejected + attribution.rejected, key=lambda r: r.index)
    batch = _Batch.of(RawDialect(database.engine.dialect), attribution)
    if not batch.rows:
        return IngestResult(0, 0, tuple(rejected))

    def attempt() -> IngestResult:
        with _writer_turn(database) as lock_wait_ms, database.write(lock_wait_ms=lock_wait_ms) as session:
            return _store(RawConnection(session.connection()), batch)

    stored = retry_on_lock(attempt)
    return IngestResult(stored.accepted, stored.duplicates, tuple(rejected))


_EVENT_COLUMNS = (
    ("event_id", "text"),
    ("customer_id", "text"),
    ("stage", "text"),
    ("type", "text"),
    ("metric", "text"),
    ("value", "integer"),
    ("occurred_at", "timestamptz"),
    ("received_at", "timestamptz"),
    ("experiment_key", "text"),
    ("attributed", "integer"),
    ("exposure_cutoff", "timestamptz"),
)
_EVENT_NAMES = ", ".join(name for name, _kind in _EVENT_COLUMNS)


@dataclass(frozen=True)
class _Batch:
    """An attributed batch as ``events`` rows, made before the write transaction so
    that the write lock is held for the writes alone."""

    received_day: str
    rows: list[tuple[Any, ...]]  # in event_id order
    attributed: dict[str, Attributed]  # by event_id

    @classmethod
    def of(cls, dialect: RawDialect, attribution: Attribution) -> _Batch:
        time_in = dialect.time_in
        received = time_in(attribution.received_at)
        rows = [
            (
                a.event.event_id,
                a.event.customer_id,
                a.stage,
                a.event.type,
                a.metric,
                a.event.value,
                time_in(a.occurred_at),
                received,
                a.event.experiment,
                len(a.decision.counted),
                time_in(a.cutoff),
            )
            for a in attribution.events
        ]
        # In event_id order: two batches sharing events then wait for each other instead of
        # deadlocking on PostgreSQL (each waits on the other's uncommitted duplicates).
        rows.sort(key=lambda row: row[0])
        by_id = {a.event.event_id: a for a in attribution.events}
        return cls(attribution.received_at.date().isoformat(), rows, by_id)


def _store(sql: RawConnection, batch: _Batch) -> IngestResult:
    """Insert the batch's events in the caller's write transaction (if absent) and
    move outcomes and counters for those really inserted."""
    inserted = dict(
        (event_id, row_id)
        for row_id, event_id in sql.rows(
            f"INSERT INTO events ({_EVENT_NAMES}) {{rows}} ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id",
            _EVENT_COLUMNS,
            batch.rows,
            fetch=True,
        )
    )

    folds: dict[OutcomeKey, Fold] = {}
    journey_folds: dict[JourneyOutcomeKey, Fold] = {}
    quality: dict[tuple[int, str, str], int] = defaultdict(int)
    unmatched: dict[tuple[str, str], int] = defaultdict(int)
    for event_id, row_id in inserted.items():
        attributed = batch.attributed[event_id]
        event, decision, stage = attributed.event, attributed.decision, attributed.stage
        for experiment_id, exposure in decision.counted.items():
            key = (experiment_id, event.customer_id, stage)
            fold = folds.get(key)
            if fold is None:
                fold = folds[key] = Fold(exposure.variant_id, exposure.exposed_at)
            fold.add(event.type, event.value, attributed.occurred_at, row_id)
        for journey_id, metric, persona in attributed.journeys:
            journey_key = (journey_id, event.customer_id, stage, metric)
            fold = journey_folds.get(journey_key)
            if fold is None:
                fold = journey_folds[journey_key] = Fold(persona, None)
            fold.add(event.type, event.value, attributed.occurred_at, row_id)
        for experiment_id, kind in decision.quality:
            quality[(experiment_id, stage, kind)] += 1
        if decision.unmatched:
            unmatched[(batch.received_day, stage)] += 1
    deltas = apply_outcomes(sql, OUTCOMES, folds)
    journey_deltas = apply_outcomes(sql, JOURNEY_OUTCOMES, journey_folds)
    _add_counts(sql, OUTCOMES.counts, OUTCOMES.count_columns, "customers", deltas)
    _add_counts(sql, JOURNEY_OUTCOMES.counts, JOURNEY_OUTCOMES.count_columns, "customers", journey_deltas)
    _add_counts(
        sql,
        "event_quality_counts",
        (("experiment_id", "integer"), ("stage", "text"), ("kind", "text")),
        "events",
        quality,
    )
    _add_counts(sql, "unmatched_event_counts", (("day", "date"), ("stage", "text")), "events", unmatched)
    return IngestResult(len(inserted), len(batch.rows) - len(inserted))


def _add_counts(
    sql: RawConnection, table: str, keys: Sequence[tuple[str, str]], column: str, counts: dict[Any, int]
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


@contextmanager
def _writer_turn(database: Database) -> Iterator[int | None]:
    """On a SQLite file, take turns for the write lock on a ``flock`` beside the
    database before ``BEGIN IMMEDIATE``; yields the milliseconds left of the busy
    timeout for that BEGIN, so the turn and the BEGIN together never wait longer than
    the busy timeout, or what the request has left of it (``request_budget``): a
    request stuck behind a lock answers 503 in time.

    SQLite's own busy handler polls with sleeps growing to 100 ms, so under a steady
    stream of batches a waiting worker mostly sleeps through the moments the lock is
    free: measured, the workers then used about a third of the CPU. The turn is polled
    every few milliseconds instead. PostgreSQL needs none of this (it yields None).
    """
    path = database.engine.url.database if database.settings.is_sqlite else None
    if not path or path == ":memory:" or "mode=memory" in str(database.engine.url):
        yield None
        return
    busy_ms = database.settings.sqlite_busy_timeout_ms
    budget = (request_budget.wait_left_ms(busy_ms) or busy_ms) / 1000  # what the request has left
    deadline = time.monotonic() + budget
    with open(f"{path}-ingest.lock", "a") as handle:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() + delay > deadline:
                    raise OperationalError(
                        "ingest turn", None, sqlite3.OperationalError("database is locked (waiting for the write turn)")
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
        try:
            yield max(1, int((deadline - time.monotonic()) * 1000))
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
