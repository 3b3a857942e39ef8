"""A warehouse experiment's statistics: computed in its warehouse by ``query``, in
the background, and kept per experiment (``WarehouseStats``) with when they were
computed, so a report reads a few hundred cells from the platform's own database and
never waits on (or fails with) the warehouse.

The fit worker (``expplatform worker``) refreshes them: whenever one is asked for
(the report's "Refresh now", the API, ``expplatform warehouse refresh``) and, for a
running or paused experiment, when the last is older than
``warehouse_refresh_seconds``. A refresh first copies the experiment's new exposures
into the warehouse when the source takes the platform's ledger
(``export_exposures``), then runs one statement. A failure is stored as the
experiment's message and the last good statistics stay shown, dated; a cancel asked
for while the query runs interrupts it (DuckDB ``interrupt``, PostgreSQL's cancel,
ClickHouse's ``max_execution_time`` bounds it) and keeps the earlier statistics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, column, func, insert, or_, select, table
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql import TableClause

from ..db import Database
from ..ingest.rebuild import experiment_rules
from ..models import Experiment, Exposure, WarehouseSource, WarehouseStats, utcnow
from . import query
from .engines import WarehouseUnavailable, dialect_of, warehouse_engine

log = logging.getLogger(__name__)

EXPORT_BATCH = 5_000


class RefreshCancelled(Exception):
    """The refresh was cancelled while its query ran."""


@dataclass(frozen=True)
class Outcome:
    """What a refresh did: the cells stored, or why none were."""

    experiment_key: str
    cells: int | None
    seconds: float
    error: str | None = None


def table_of(name: str, columns: Iterable[str]) -> TableClause:
    """A (possibly schema-qualified) table with just the columns the mapping names."""
    schema, _, bare = name.rpartition(".")
    return table(bare, *(column(c) for c in sorted(set(columns))), schema=schema or None)


def relations(source: WarehouseSource, rules: query.Rules, started_at: datetime | None) -> tuple[Any, Any]:
    """The source's events (first copies, pruned to the experiment's time) and the
    experiment's exposures, both with columns named by role."""
    dialect = dialect_of(source.url)
    events_table = table_of(source.events_table, source.events_columns.values())
    exposures_table = table_of(source.exposures_table, source.exposures_columns.values())
    pruning = None if started_at is None else query.Pruning(started_at, max(source.clock_skew_seconds, 0.0))
    events = query.role_events(
        dialect, events_table, source.events_columns, skew_seconds=source.clock_skew_seconds, pruning=pruning
    )
    exposures = query.role_exposures(exposures_table, source.exposures_columns, rules.experiment_key)
    return events, exposures


def compute_cells(
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    cancel: threading.Event | None = None,
    memory_limit_mb: int | None = None,
) -> list[list[Any]]:
    """Run the statistics statement in the warehouse: ``[kind, stage, variant key,
    value, ISO day, customers]`` per non-empty cell, sorted."""
    dialect = dialect_of(source.url)
    events, exposures = relations(source, rules, started_at)
    statements = query.statistics(dialect, events, exposures, rules)
    with warehouse_engine(source.url, memory_limit_mb=memory_limit_mb).connect() as connection:
        exposed = _run_cancellable(connection, statements.exposures, dialect, cancel)
        outcomes = _run_cancellable(connection, statements.outcomes, dialect, cancel)
    totals: Counter[tuple[Any, ...]] = Counter()
    for _kind, _stage, variant, _value, day, n in exposed:
        totals["exposed", "", str(variant), 0, _iso(day)] += int(n)
    for stage, variant, converted_day, rating, rated_day, n in outcomes:
        if converted_day is not None:
            totals["converted", stage, str(variant), 0, _iso(converted_day)] += int(n)
        if rated_day is not None and rating is not None:
            totals["rating", stage, str(variant), int(rating), _iso(rated_day)] += int(n)
    return sorted([*cell, n] for cell, n in totals.items() if n)


def _iso(day: Any) -> str:
    if isinstance(day, datetime):
        return day.date().isoformat()
    if isinstance(day, date):
        return day.isoformat()
    return str(day)[:10]


def _run_cancellable(connection: Connection, statement: Any, dialect: str, cancel: threading.Event | None) -> list[Any]:
    if cancel is None:
        return list(connection.execute(statement))
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(0.2):
            if cancel.is_set():
                _interrupt(connection, dialect)
                return

    watcher = threading.Thread(target=watch, name="warehouse-cancel", daemon=True)
    watcher.start()
    try:
        return list(connection.execute(statement))
    except DBAPIError as exc:
        if cancel.is_set():
            raise RefreshCancelled() from exc
        raise
    finally:
        finished.set()
        watcher.join()


def _interrupt(connection: Connection, dialect: str) -> None:
    raw = connection.connection.dbapi_connection
    if dialect == "duckdb":
        raw.interrupt()  # type: ignore[union-attr]
    elif dialect == "postgresql":
        raw.cancel()  # type: ignore[union-attr]


def export_exposures(
    session: Session, experiment: Experiment, source: WarehouseSource, *, memory_limit_mb: int | None = None
) -> int:
    """Copy the experiment's exposures made since the last copy into the source's
    exposures table; returns how many rows were written. Exposures at the last
    copied instant are written again: the statistics keep one per customer, so a
    copy twice is harmless and none is ever missed."""
    columns = source.exposures_columns
    target = table_of(source.exposures_table, columns.values())
    engine = warehouse_engine(source.url, memory_limit_mb=memory_limit_mb)
    with engine.connect() as connection:
        last = connection.execute(
            select(func.max(target.c[columns["exposed_at"]])).where(target.c[columns["experiment"]] == experiment.key)
        ).scalar()
    variants = {v.id: v.key for v in experiment.variants}
    rows = select(Exposure.customer_id, Exposure.variant_id, Exposure.exposed_at, Exposure.forced).where(
        Exposure.experiment_id == experiment.id
    )
    if last is not None:
        rows = rows.where(Exposure.exposed_at >= _aware(last))
    written = 0
    batch: list[dict[str, Any]] = []
    for customer_id, variant_id, exposed_at, forced in session.execute(rows.order_by(Exposure.exposed_at)):
        row = {
            columns["experiment"]: experiment.key,
            columns["customer_id"]: customer_id,
            columns["variant"]: variants[variant_id],
            columns["exposed_at"]: exposed_at,
        }
        if "forced" in columns:
            row[columns["forced"]] = bool(forced)
        batch.append(row)
        if len(batch) == EXPORT_BATCH:
            written += _write(engine, target, batch)
            batch = []
    if batch:
        written += _write(engine, target, batch)
    return written


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _write(engine: Any, target: TableClause, rows: list[dict[str, Any]]) -> int:
    with engine.begin() as connection:
        connection.execute(insert(target), rows)
    return len(rows)


def refresh(
    database: Database, experiment_key: str, *, cancel: threading.Event | None = None, now: datetime | None = None
) -> Outcome:
    """Export, compute and store one experiment's warehouse statistics. A failure is
    stored (and returned), never raised: the report shows it beside the last good
    statistics."""
    began = time.perf_counter()
    with database.sessionmaker() as session:
        experiment = session.scalar(
            select(Experiment)
            .where(Experiment.key == experiment_key)
            .options(selectinload(Experiment.variants), selectinload(Experiment.warehouse_source))
        )
        if experiment is None or experiment.warehouse_source is None:
            raise LookupError(f"experiment {experiment_key!r} has no warehouse source")
        source = experiment.warehouse_source
        rules = experiment_rules(session, experiment)
        experiment_id, source_id, started_at = experiment.id, source.id, experiment.started_at
        error: str | None = None
        cells: list[list[Any]] = []
        try:
            limit = database.settings.warehouse_memory_limit_mb
            if source.export_exposures:
                export_exposures(session, experiment, source, memory_limit_mb=limit)
            cells = compute_cells(source, rules, started_at, cancel=cancel, memory_limit_mb=limit)
        except RefreshCancelled:
            error = "cancelled while the warehouse query ran; the statistics shown are the earlier ones"
        except (WarehouseUnavailable, SQLAlchemyError, OSError, RuntimeError) as exc:
            error = _explain(exc)
            log.warning("warehouse refresh of %s failed: %s", experiment_key, error)
    seconds = time.perf_counter() - began
    moment = now or utcnow()
    with database.write() as session:
        stats = session.get(WarehouseStats, experiment_id) or WarehouseStats(
            experiment_id=experiment_id, source_id=source_id
        )
        session.add(stats)
        stats.source_id = source_id
        stats.running_since = None
        stats.requested_at = None
        stats.cancel_requested = False
        if error is None:
            stats.cells, stats.computed_at, stats.seconds = cells, moment, seconds
            stats.error = stats.failed_at = None
        else:
            stats.error, stats.failed_at = error, moment
    return Outcome(experiment_key, None if error else len(cells), seconds, error)


def _explain(exc: BaseException) -> str:
    """One line an analyst can act on; the driver's first line, never a traceback."""
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"the warehouse query failed: {first[:500]}"


def request_refresh(session: Session, experiment: Experiment) -> WarehouseStats:
    """Ask the fit worker for a refresh (kept once however often asked)."""
    stats = session.get(WarehouseStats, experiment.id)
    if stats is None:
        assert experiment.warehouse_source_id is not None
        stats = WarehouseStats(experiment_id=experiment.id, source_id=experiment.warehouse_source_id)
        session.add(stats)
    if stats.requested_at is None:
        stats.requested_at = utcnow()
    return stats


def request_cancel(session: Session, experiment: Experiment) -> bool:
    """Ask a running refresh to stop; False when none is running."""
    stats = session.get(WarehouseStats, experiment.id)
    if stats is None or stats.running_since is None:
        return False
    stats.cancel_requested = True
    return True


def claim_next(database: Database, *, stale_after: float, now: datetime | None = None) -> str | None:
    """The key of the experiment whose refresh is due, marked running: asked for
    first (oldest first), then running experiments whose statistics are older than
    ``stale_after`` seconds (or missing). None when none is due."""
    moment = now or utcnow()
    with database.write() as session:
        # A refresh running longer than a refresh period belongs to a worker that died.
        abandoned = moment - timedelta(seconds=stale_after)
        idle = or_(WarehouseStats.running_since.is_(None), WarehouseStats.running_since < abandoned)
        asked = session.scalar(
            select(Experiment.key)
            .join(WarehouseStats, WarehouseStats.experiment_id == Experiment.id)
            .where(WarehouseStats.requested_at.is_not(None), idle)
            .order_by(WarehouseStats.requested_at)
            .limit(1)
        )
        key = asked or _stale(session, abandoned)
        if key is None:
            return None
        experiment = session.scalar(select(Experiment).where(Experiment.key == key))
        assert experiment is not None
        stats = request_refresh(session, experiment)
        stats.running_since = moment
        return key


def _stale(session: Session, before: datetime) -> str | None:
    candidates = session.execute(
        select(Experiment.key, WarehouseStats.computed_at, WarehouseStats.failed_at, WarehouseStats.running_since)
        .outerjoin(WarehouseStats, WarehouseStats.experiment_id == Experiment.id)
        .where(Experiment.warehouse_source_id.is_not(None), Experiment.status.in_(("running", "paused")))
        .order_by(Experiment.id)
    ).all()
    for key, computed_at, failed_at, running_since in candidates:
        last = max((m for m in (computed_at, failed_at) if m is not None), default=None)
        if (running_since is None or running_since < before) and (last is None or last < before):
            return key
    return None


def cancel_watch(database: Database, experiment_key: str, stop: threading.Event) -> threading.Event:
    """An event set when someone asks to cancel this refresh (polled once a second
    until ``stop``)."""
    cancelled = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            with database.sessionmaker() as session:
                asked = session.scalar(
                    select(WarehouseStats.cancel_requested)
                    .join(Experiment, Experiment.id == WarehouseStats.experiment_id)
                    .where(Experiment.key == experiment_key)
                )
            if asked:
                cancelled.set()
                return

    threading.Thread(target=poll, name="warehouse-cancel-poll", daemon=True).start()
    return cancelled


def run_due(database: Database, *, stale_after: float) -> Outcome | None:
    """Refresh the experiment whose refresh is due, if any (the worker's duty)."""
    key = claim_next(database, stale_after=stale_after)
    if key is None:
        return None
    stop = threading.Event()
    try:
        return refresh(database, key, cancel=cancel_watch(database, key, stop))
    finally:
        stop.set()
