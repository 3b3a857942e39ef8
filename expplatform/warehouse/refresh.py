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

import contextlib
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, column, func, insert, or_, select, table, text, union_all
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql import Select, TableClause

from ..db import Database
from ..ingest.rebuild import experiment_rules
from ..models import Experiment, Exposure, WarehouseSource, WarehouseStats, utcnow
from . import dialects, query
from .engines import WarehouseUnavailable, bucket_settings, dialect_of, warehouse_engine

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
    mode: str = "full"  # or "incremental": added what changed since the last refresh


def table_of(name: str, columns: Iterable[str]) -> TableClause:
    """A (possibly schema-qualified) table with just the columns the mapping names."""
    schema, _, bare = name.rpartition(".")
    return table(bare, *(column(c) for c in sorted(set(columns))), schema=schema or None)


def _pruning(source: WarehouseSource, started_at: datetime | None) -> query.Pruning | None:
    return None if started_at is None else query.Pruning(started_at, max(source.clock_skew_seconds, 0.0))


def _event_copies(
    source: WarehouseSource, started_at: datetime | None, *, received_before: datetime | None, event_ids: Any = None
) -> Select[Any]:
    """``query.event_copies`` of the source's events table."""
    return query.event_copies(
        dialect_of(source.url),
        table_of(source.events_table, source.events_columns.values()),
        source.events_columns,
        skew_seconds=source.clock_skew_seconds,
        pruning=_pruning(source, started_at),
        received_before=received_before,
        event_ids=event_ids,
    )


def relations(
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    received_before: datetime | None = None,
    event_ids: Any = None,
) -> tuple[Any, Any]:
    """The source's events (first copies, pruned to the experiment's time, as held
    at ``received_before``, only ``event_ids`` when given) and the experiment's
    exposures, both with columns named by role."""
    dialect = dialect_of(source.url)
    copies = _event_copies(source, started_at, received_before=received_before, event_ids=event_ids)
    sequenced = "sequence" in source.events_columns
    events = query.role_events(dialect, copies, sequenced=sequenced, subset=event_ids is not None)
    exposures_table = table_of(source.exposures_table, source.exposures_columns.values())
    exposures = query.role_exposures(dialect, exposures_table, source.exposures_columns, rules.experiment_key)
    return events, exposures


Cells = Counter[tuple[Any, ...]]


def compute_cells(
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    received_before: datetime | None = None,
    cancel: threading.Event | None = None,
    memory_limit_mb: int | None = None,
) -> list[list[Any]]:
    """The whole statistics, computed in the warehouse as it held the events
    received before ``received_before`` (all of them: None): ``[kind, stage,
    variant key, value, ISO day, customers]`` per non-empty cell, sorted."""
    dialect = dialect_of(source.url)
    engine = warehouse_engine(source.url, memory_limit_mb=memory_limit_mb)
    with engine.connect() as connection, contextlib.ExitStack() as cleanup:
        if dialects.computes_by_bucket(dialect):
            cleanup.enter_context(bucket_settings(connection, memory_limit_mb))
            totals = _bucketed_cells(
                connection,
                source,
                rules,
                started_at,
                received_before=received_before,
                cancel=cancel,
                memory_limit_mb=memory_limit_mb,
                cleanup=cleanup,
            )
        else:
            events, exposures = relations(source, rules, started_at, received_before=received_before)
            statements = query.statistics(dialect, events, exposures, rules, exposed_before=received_before)
            totals = _cells(connection, statements, dialect, cancel)
    return as_list(totals)


# Event rows in one bucket of customers per MB of the memory limit: at 2 GB, 50M
# events took 66-82 s in three buckets, 85 s in four, 117 s in seven and 165 s in
# thirteen (each bucket reads every event to pick its own), and 10M took 12-14 s in
# one to three.
ROWS_PER_BUCKET_PER_MB = 10_000
# Event rows whose ids are searched for repeats in one part per MB: at 2 GB, 50M
# events took 4.5 s in two parts, 5.8 s in three, and 7.1-7.5 s in one, which spilled.
IDS_PER_PART_PER_MB = 13_000


def _bucketed_cells(
    connection: Connection,
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    received_before: datetime | None,
    cancel: threading.Event | None,
    memory_limit_mb: int | None,
    cleanup: contextlib.ExitStack,
) -> Cells:
    """The statistics computed for one bucket of customers at a time
    (``query.Bucket``), as many as the events need under the memory limit, each
    allowed to aggregate in a larger share of it (``engines.bucket_settings``):
    one statement over all the customers at 2 GB had to spill its aggregation at an
    eighth of the bound, and took 107-122 s at 50M events. The repeated events (in
    parts of their ids' hashes, for the same reason) and their first copies are
    found once for all buckets, into temporary tables (where the warehouse refuses
    those, each bucket computes them again)."""
    dialect = dialect_of(source.url)
    copies = _event_copies(source, started_at, received_before=received_before).subquery("copies")
    buckets = parts = 1
    if memory_limit_mb:
        rows = int(connection.execute(select(func.count()).select_from(copies)).scalar() or 0)
        buckets = max(1, math.ceil(rows / (ROWS_PER_BUCKET_PER_MB * memory_limit_mb)))
        parts = max(1, math.ceil(rows / (IDS_PER_PART_PER_MB * memory_limit_mb)))
    found = [query.repeated_ids(dialect, copies, part=query.Bucket(index, parts)) for index in range(parts)]
    repeated = _hold(connection, dialect, found[0], cleanup, name="repeated", more=found[1:])
    sequenced = "sequence" in source.events_columns
    first = query.repeated_first_copies(dialect, copies, repeated, source.events_columns, sequenced=sequenced)
    firsts = _hold(connection, dialect, first, cleanup, name="firsts")
    exposures_table = table_of(source.exposures_table, source.exposures_columns.values())
    exposures = query.role_exposures(dialect, exposures_table, source.exposures_columns, rules.experiment_key)
    totals: Cells = Counter()
    exposed = query.exposure_cells(dialect, exposures, before=received_before)
    _add_exposed(totals, run_cancellable(connection, exposed, dialect, cancel))
    for index in range(buckets):
        bucket = query.Bucket(index, buckets)
        events = query.bucket_events(dialect, copies, repeated, firsts, bucket)
        theirs = query.role_exposures(
            dialect, exposures_table, source.exposures_columns, rules.experiment_key, bucket=bucket
        )
        outcomes = query.statistics(dialect, events, theirs, rules, exposed_before=received_before).outcomes
        _add_outcomes(totals, run_cancellable(connection, outcomes, dialect, cancel))
    return totals


@dataclass(frozen=True)
class Increment:
    """What a refresh adds to the statistics of ``since``: the outcomes' change,
    and the exposures as of ``since`` (to tell that none arrived late: exposures
    are counted in full each time, they are few) and as of ``before``."""

    outcomes: Cells
    exposed_then: Cells
    exposed_now: Cells


def compute_increment(
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    since: datetime,
    before: datetime,
    cancel: threading.Event | None = None,
    memory_limit_mb: int | None = None,
) -> Increment:
    """What the events received in [since, before) change in the outcomes: for the
    customers they concern, their outcomes as of ``before`` minus as of ``since``,
    both from one reading of their own events. Added to the outcomes as of
    ``since`` it gives those as of ``before``, at a cost in proportion to those
    customers' events rather than to the experiment's."""
    dialect = dialect_of(source.url)
    exposures_table = table_of(source.exposures_table, source.exposures_columns.values())
    exposures = query.role_exposures(dialect, exposures_table, source.exposures_columns, rules.experiment_key)
    then: Cells = Counter()
    now: Cells = Counter()
    outcomes: Cells = Counter()
    engine = warehouse_engine(source.url, memory_limit_mb=memory_limit_mb)
    with engine.connect() as connection, contextlib.ExitStack() as cleanup:
        exposed = query.exposure_changes(dialect, exposures, since=since, before=before)
        for variant, day, n_then, n_now in run_cancellable(connection, exposed, dialect, cancel):
            then["exposed", "", str(variant), 0, _iso(day)] += int(n_then)
            now["exposed", "", str(variant), 0, _iso(day)] += int(n_now)
        touched = _touched(connection, source, rules, started_at, since=since, before=before, cleanup=cleanup)
        if touched is not None:
            customers, bound = touched
            events_table = table_of(source.events_table, source.events_columns.values())
            ids = query.events_of(
                dialect, events_table, source.events_columns, customers, pruning=_pruning(source, bound)
            )
            events, _ = relations(source, rules, bound, received_before=before, event_ids=ids)
            theirs = query.role_exposures(
                dialect, exposures_table, source.exposures_columns, rules.experiment_key, customers=customers
            )
            changed = query.outcome_changes(dialect, events, theirs, rules, since=since)
            for stage, variant, *days, n in run_cancellable(connection, changed, dialect, cancel):
                for sign, (converted_day, rating, rated_day) in ((1, days[:3]), (-1, days[3:])):
                    if converted_day is not None:
                        outcomes["converted", stage, str(variant), 0, _iso(converted_day)] += sign * int(n)
                    if rated_day is not None and rating is not None:
                        outcomes["rating", stage, str(variant), int(rating), _iso(rated_day)] += sign * int(n)
    return Increment(outcomes, +then, +now)


def _touched(
    connection: Connection,
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    since: datetime,
    before: datetime,
    cleanup: contextlib.ExitStack,
) -> tuple[Any, datetime] | None:
    """The customers whose outcomes the events received in [since, before) may
    change, and the earliest of their exposures (none: None). Each step narrows what
    the next reads by event time, which an events table kept in time order (as
    warehouses append them) skips to cheaply: the copies received then and their
    earlier copies, the customers they concern, and (the caller) those customers'
    events since the earliest of their exposures."""
    dialect = dialect_of(source.url)
    events_table = table_of(source.events_table, source.events_columns.values())
    exposures_table = table_of(source.exposures_table, source.exposures_columns.values())
    earliest = query.arrived_from(dialect, events_table, source.events_columns, since=since, before=before)
    arrived_from = _utc(connection.execute(earliest).scalar())
    if arrived_from is None:
        return None
    copies = query.arrival_copies(
        dialect,
        events_table,
        source.events_columns,
        before=before,
        arrived_from=arrived_from,
        pruning=_pruning(source, started_at),
    ).subquery("copies")
    repeated = None
    if dialects.windows_repeated_ids_only(dialect):
        # Read twice by the next statement (those stored once, and the first
        # copies of the others): found once (on chdb at 50M events, 1.0 s in
        # all rather than 1.4 s).
        repeated = _hold(connection, dialect, query.repeated_ids(dialect, copies), cleanup, name="repeated")
    touched = query.touched_customers(
        dialect,
        copies,
        exposures_table,
        source.exposures_columns,
        rules.experiment_key,
        since=since,
        skew_seconds=source.clock_skew_seconds,
        sequenced="sequence" in source.events_columns,
        repeated=repeated,
    )
    held = _hold(connection, dialect, touched, cleanup, name="touched")
    first_exposed = _utc(connection.execute(select(func.min(held.c.exposed_at))).scalar())
    if first_exposed is None:
        return None
    customers = select(held.c.customer_id)
    return customers, first_exposed if started_at is None else max(started_at, first_exposed)


def _hold(
    connection: Connection,
    dialect: str,
    statement: Select[Any],
    cleanup: contextlib.ExitStack,
    *,
    name: str,
    more: Sequence[Select[Any]] = (),
) -> Any:
    """The rows of the statement (and of ``more``, statements with the same columns,
    run one after the other) in a temporary table of the session (dropped by
    ``cleanup``), which the next statements read as a table, or (where the
    warehouse refuses one, e.g. a read-only ClickHouse user) the statements
    themselves, which they compute again."""
    held = f"expplatform_{uuid.uuid4().hex[:16]}"
    try:
        connection.execute(dialects.TemporaryTable(dialect, held, statement))
    except DBAPIError as exc:
        # A read-only user's refusal, or any other failure (a memory bound): the
        # statement itself, read where the table would have been, fails again then.
        log.info("creating a temporary table failed (%s); its statement is recomputed where read", explain(exc))
        if connection.in_transaction():  # PostgreSQL and DuckDB refuse all else until then
            connection.rollback()
        return union_all(statement, *more).subquery(name) if more else statement.subquery(name)
    names = [c.name for c in statement.selected_columns]
    target = table(held, *(column(n) for n in names))
    for part in more:
        connection.execute(insert(target).from_select(names, part))

    def drop() -> None:
        # PostgreSQL and DuckDB drop it with the transaction too; ClickHouse keeps
        # it for the session, which the pool keeps.
        with contextlib.suppress(DBAPIError):
            connection.execute(text(f"DROP TABLE IF EXISTS {held}"))

    cleanup.callback(drop)
    return target


def _cells(
    connection: Connection,
    statements: query.Statistics,
    dialect: str,
    cancel: threading.Event | None,
) -> Cells:
    totals: Cells = Counter()
    _add_exposed(totals, run_cancellable(connection, statements.exposures, dialect, cancel))
    _add_outcomes(totals, run_cancellable(connection, statements.outcomes, dialect, cancel))
    return totals


def _add_exposed(totals: Cells, rows: Iterable[Any]) -> None:
    """Add ``query.exposure_cells`` rows to ``totals``."""
    for _kind, _stage, variant, _value, day, n in rows:
        totals["exposed", "", str(variant), 0, _iso(day)] += int(n)


def _add_outcomes(totals: Cells, rows: Iterable[Any]) -> None:
    """Add ``query.outcome_days`` rows to ``totals``."""
    for stage, variant, converted_day, rating, rated_day, n in rows:
        if converted_day is not None:
            totals["converted", stage, str(variant), 0, _iso(converted_day)] += int(n)
        if rated_day is not None and rating is not None:
            totals["rating", stage, str(variant), int(rating), _iso(rated_day)] += int(n)


def as_list(totals: Cells) -> list[list[Any]]:
    return sorted([*cell, n] for cell, n in totals.items() if n)


def rules_key(source: WarehouseSource, rules: query.Rules, started_at: datetime | None) -> str:
    """What stored statistics were computed under: an increment may only be added
    to statistics of the same rules, source mapping and start."""
    described = {
        "rules": asdict(rules),
        "started_at": started_at,
        "source": [source.url, source.events_table, source.events_columns, source.exposures_table],
        "exposures": [source.exposures_columns, source.clock_skew_seconds],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _utc(moment: Any) -> datetime | None:
    """A time read back from a warehouse, as an aware UTC datetime (engines give it
    naive or in the session's zone)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(day: Any) -> str:
    if isinstance(day, datetime):
        return day.date().isoformat()
    if isinstance(day, date):
        return day.isoformat()
    return str(day)[:10]


def run_cancellable(connection: Connection, statement: Any, dialect: str, cancel: threading.Event | None) -> list[Any]:
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
    session: Session,
    experiment: Experiment,
    source: WarehouseSource,
    *,
    after_id: int | None = None,
    memory_limit_mb: int | None = None,
) -> tuple[int, int | None]:
    """Copy the experiment's exposures stored after the exposure ``after_id`` (all:
    None) into the source's exposures table, in storage order; returns how many rows
    were written and the last one's id. By storage order, not by time: an exposure
    dated in the past (a backfill) is copied all the same. A row copied twice is
    harmless (the statistics keep one exposure per customer). The attributes, when
    the source maps them, are written as JSON text (the segments read them)."""
    columns = source.exposures_columns
    target = table_of(source.exposures_table, columns.values())
    engine = warehouse_engine(source.url, memory_limit_mb=memory_limit_mb)
    variants = {v.id: v.key for v in experiment.variants}
    rows = select(
        Exposure.id,
        Exposure.customer_id,
        Exposure.variant_id,
        Exposure.exposed_at,
        Exposure.forced,
        Exposure.attributes,
    ).where(Exposure.experiment_id == experiment.id)
    if after_id is not None:
        rows = rows.where(Exposure.id > after_id)
    written, last = 0, after_id
    batch: list[dict[str, Any]] = []
    for exposure_id, customer_id, variant_id, exposed_at, forced, attributes in session.execute(
        rows.order_by(Exposure.id)
    ):
        row = {
            columns["experiment"]: experiment.key,
            columns["customer_id"]: customer_id,
            columns["variant"]: variants[variant_id],
            columns["exposed_at"]: exposed_at,
        }
        if "forced" in columns:
            row[columns["forced"]] = bool(forced)
        if "attributes" in columns:
            row[columns["attributes"]] = json.dumps(attributes or {})
        batch.append(row)
        last = exposure_id
        if len(batch) == EXPORT_BATCH:
            written += _write(engine, target, batch)
            batch = []
    if batch:
        written += _write(engine, target, batch)
    return written, last


def _write(engine: Any, target: TableClause, rows: list[dict[str, Any]]) -> int:
    with engine.begin() as connection:
        connection.execute(insert(target), rows)
    return len(rows)


def refresh(
    database: Database,
    experiment_key: str,
    *,
    full: bool = False,
    cancel: threading.Event | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Export, compute and store one experiment's warehouse statistics: by adding
    what changed since the last refresh where it can, in full when asked (``full``)
    or when it cannot. A failure is stored (and returned), never raised: the report
    shows it beside the last good statistics."""
    began = time.perf_counter()
    moment = now or utcnow()
    settings = database.settings
    limit = settings.warehouse_memory_limit_mb
    # Rows received up to the load lag ago are in the warehouse by now.
    watermark = moment - timedelta(seconds=settings.warehouse_load_lag_seconds)
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
        key = rules_key(source, rules, started_at)
        stored = session.get(WarehouseStats, experiment_id)
        exported = stored.exported_through if stored is not None and stored.source_id == source_id else None
        full_every = settings.warehouse_full_refresh_seconds
        base = None if full else _incremental_base(stored, source_id, key, watermark, moment, full_every)
        error: str | None = None
        cells: list[list[Any]] = []
        segments: dict[str, Any] | None = None
        mode = "full"
        try:
            if source.export_exposures:
                _written, exported = export_exposures(
                    session, experiment, source, after_id=exported, memory_limit_mb=limit
                )
            added = None if base is None else _add_increment(source, rules, started_at, base, watermark, cancel, limit)
            if added is not None:
                cells, mode = added, "incremental"
            else:
                cells = compute_cells(
                    source, rules, started_at, received_before=watermark, cancel=cancel, memory_limit_mb=limit
                )
                from .segments import compute_segments  # it builds on this module's relations

                segments = compute_segments(
                    source, rules, started_at, received_before=watermark, cancel=cancel, memory_limit_mb=limit
                )
        except RefreshCancelled:
            error = "cancelled while the warehouse query ran; the statistics shown are the earlier ones"
        except (WarehouseUnavailable, SQLAlchemyError, OSError, RuntimeError) as exc:
            error = explain(exc)
            log.warning("warehouse refresh of %s failed: %s", experiment_key, error)
    seconds = time.perf_counter() - began
    with database.write() as session:
        stats = session.get(WarehouseStats, experiment_id) or WarehouseStats(
            experiment_id=experiment_id, source_id=source_id
        )
        session.add(stats)
        stats.source_id = source_id
        stats.exported_through = exported
        stats.running_since = None
        stats.requested_at = None
        stats.cancel_requested = False
        if error is None:
            stats.cells, stats.computed_at, stats.seconds = cells, moment, seconds
            stats.watermark, stats.rules_key = watermark, key
            if mode == "full":
                stats.full_at = moment
                stats.segments, stats.segments_at = segments, (moment if segments is not None else None)
            stats.error = stats.failed_at = None
        else:
            stats.error, stats.failed_at = error, moment
    return Outcome(experiment_key, None if error else len(cells), seconds, error, mode)


def _incremental_base(
    stored: WarehouseStats | None, source_id: int, key: str, watermark: datetime, moment: datetime, full_every: float
) -> tuple[list[list[Any]], datetime] | None:
    """The stored cells and their watermark when an increment may be added to them:
    same source and rules, a full recompute recent enough (it catches rows loaded
    later than the lag), and time has moved on."""
    if stored is None or stored.cells is None or stored.source_id != source_id or stored.rules_key != key:
        return None
    if stored.watermark is None or stored.full_at is None or watermark <= stored.watermark:
        return None
    if stored.full_at < moment - timedelta(seconds=full_every):
        return None
    return list(stored.cells), stored.watermark


def _add_increment(
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    base: tuple[list[list[Any]], datetime],
    watermark: datetime,
    cancel: threading.Event | None,
    limit: int,
) -> list[list[Any]] | None:
    """The stored cells plus the increment; None (a full recompute follows) if that
    would leave a cell below zero, which only stored cells of other rules can do."""
    stored, since = base
    totals: Cells = Counter({tuple(cell[:5]): int(cell[5]) for cell in stored})
    increment = compute_increment(
        source, rules, started_at, since=since, before=watermark, cancel=cancel, memory_limit_mb=limit
    )
    if +Counter({cell: n for cell, n in totals.items() if cell[0] == "exposed"}) != +increment.exposed_then:
        log.info("exposures of %s arrived dated before the last refresh; recomputing in full", rules.experiment_key)
        return None
    outcomes = Counter({cell: n for cell, n in totals.items() if cell[0] != "exposed"})
    outcomes.update(increment.outcomes)
    if any(n < 0 for n in outcomes.values()):
        log.warning("warehouse increment of %s left a count below zero; recomputing in full", rules.experiment_key)
        return None
    return as_list(outcomes + increment.exposed_now)


def explain(exc: BaseException) -> str:
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


def claim_next(database: Database, *, stale_after: float, now: datetime | None = None) -> tuple[str, bool] | None:
    """The key of the experiment whose refresh is due, marked running, and whether
    someone asked for it: asked for first (oldest first), then running experiments
    whose statistics are older than ``stale_after`` seconds (or missing). None when
    none is due."""
    moment = now or utcnow()
    # A refresh running longer than a refresh period belongs to a worker that died.
    abandoned = moment - timedelta(seconds=stale_after)
    # Chosen in a read (every worker looks every few seconds, mostly to find nothing:
    # no write lock for that), then taken under the row's lock.
    with database.sessionmaker() as session:
        idle = or_(WarehouseStats.running_since.is_(None), WarehouseStats.running_since < abandoned)
        asked = session.scalar(
            select(Experiment.key)
            .join(WarehouseStats, WarehouseStats.experiment_id == Experiment.id)
            .where(
                WarehouseStats.requested_at.is_not(None),
                idle,
                WarehouseStats.source_id == Experiment.warehouse_source_id,  # not one since detached
            )
            .order_by(WarehouseStats.requested_at)
            .limit(1)
        )
        key = asked or _stale(session, abandoned)
    if key is None:
        return None
    try:
        with database.write() as session:
            experiment = session.scalar(select(Experiment).where(Experiment.key == key))
            if experiment is None or experiment.warehouse_source_id is None:
                return None  # deleted or detached meanwhile
            # Workers on other machines may have chosen it too: the row's lock (PostgreSQL;
            # SQLite's write transaction holds the whole database) lets one take it.
            taken = session.scalar(
                select(WarehouseStats.running_since)
                .where(WarehouseStats.experiment_id == experiment.id)
                .with_for_update()
            )
            if taken is not None and taken >= abandoned:
                return None
            stats = request_refresh(session, experiment)
            stats.running_since = moment
            return key, asked is not None
    except IntegrityError:  # another worker made the experiment's first row at the same time
        return None


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
    due = claim_next(database, stale_after=stale_after)
    if due is None:
        return None
    key, asked = due
    stop = threading.Event()
    try:
        # Asked for by someone reading the report: in full, so rows loaded late count too.
        return refresh(database, key, full=asked, cancel=cancel_watch(database, key, stop))
    finally:
        stop.set()
