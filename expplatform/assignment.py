"""Assignment: which variant each requested experiment shows a customer, and the
exposure recorded the first time.

The hot path is built around one fact: a repeat customer needs no write. Running and
paused definitions are cached per worker (``VersionedCache``: refreshed when the
definitions version moves), bucketing is pure, and the customer's existing exposures
for every requested experiment come back in one indexed read. Only a first exposure
(or a data-quality mismatch) writes, in one statement (see ``ExposureStore``).

Rules, in the order they apply to each experiment:
- unknown key: ``unknown_experiment``; draft or stopped: ``not_running``; paused:
  ``paused`` (nothing written; the client shows the control experience);
- a forced (QA) variant is served whatever the rules say and a first exposure is
  marked ``forced`` (excluded from analysis); one that differs from an exposure
  recorded earlier is served too, and counted as a mismatch;
- a recorded exposure wins: the customer keeps the variant they were first shown,
  even if targeting has changed since (enrolled customers stay); if the bucketing
  now gives another variant (only possible when data were edited) the recorded one
  is served and the exposure's ``mismatches`` counter goes up;
- targeting, then layer, then traffic decide enrolment; the variant hash picks the
  variant. Not enrolled: nothing written.

Targeting: every rule must match. A missing attribute never matches (so ``ne`` and
``not_in`` do not match either), and neither does a type mismatch: text compares only
with text, numbers with numbers (``1`` equals ``1.0``), true/false with true/false; the
ordering operators compare numbers only.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask, current_app
from sqlalchemy import event, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, selectinload

from . import request_budget
from .bucketing import NOT_IN_TRAFFIC, OUTSIDE_LAYER, Split, place
from .db import Database, get_db, retry_on_lock
from .models import Experiment, utcnow
from .rawsql import RawDialect
from .versioning import VersionedCache

log = logging.getLogger(__name__)
Scalar = str | int | float | bool
Reason = Literal["traffic", "targeting", "layer", "paused", "not_running", "unknown_experiment"]
LIVE = ("running", "paused")


# -- cached definitions --------------------------------------------------------------------


def _kind(value: Any) -> str:
    # bool before int: True must not compare equal to 1.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else "other"


Predicate = Callable[[Any], bool]


def compile_rule(op: str, expected: Any) -> Predicate:
    """A rule as a predicate on the attribute's value (present: missing is handled by
    the caller). Built once per cache refresh, not per request."""
    if op in ("in", "not_in"):
        members = frozenset((_kind(v), v) for v in expected)
        kinds = frozenset(kind for kind, _ in members)
        if op == "in":
            return lambda actual: (_kind(actual), actual) in members
        return lambda actual: _kind(actual) in kinds and (_kind(actual), actual) not in members
    kind = _kind(expected)
    compare: dict[str, Predicate] = {
        "eq": lambda actual: actual == expected,
        "ne": lambda actual: actual != expected,
        "lt": lambda actual: actual < expected,
        "lte": lambda actual: actual <= expected,
        "gt": lambda actual: actual > expected,
        "gte": lambda actual: actual >= expected,
    }
    if op not in compare or (op not in ("eq", "ne") and kind != "number"):
        raise ValueError(f"cannot compile targeting rule {op!r} {expected!r}")
    test = compare[op]
    return lambda actual: _kind(actual) == kind and test(actual)


@dataclass(frozen=True, slots=True)
class Rule:
    attribute: str
    matches: Predicate


def targeting_matches(rules: Sequence[Rule], attributes: Mapping[str, Any]) -> bool:
    return all(rule.attribute in attributes and rule.matches(attributes[rule.attribute]) for rule in rules)


@dataclass(frozen=True, slots=True)
class LiveExperiment:
    """A running or paused experiment, reduced to what assignment reads."""

    id: int
    key: str
    stage: str
    paused: bool
    split: Split
    rules: tuple[Rule, ...]
    variant_keys: tuple[str, ...]
    variant_ids: tuple[int, ...]
    # variant id -> index, and customer id -> forced variant index
    index_of: Mapping[int, int]
    forced: Mapping[str, int]


@dataclass(frozen=True)
class Definitions:
    by_key: Mapping[str, LiveExperiment]
    by_stage: Mapping[str, tuple[LiveExperiment, ...]]
    live: tuple[LiveExperiment, ...]
    # Keys of draft and stopped experiments: known, but not assigning.
    inactive: frozenset[str]


def _live(row: Experiment) -> LiveExperiment:
    variants = list(row.variants)  # ordered by position
    keys = tuple(v.key for v in variants)
    return LiveExperiment(
        id=row.id,
        key=row.key,
        stage=row.target_stage,
        paused=row.status == "paused",
        split=Split.of(row.salt, [v.weight for v in variants], row.traffic, row.layer, row.layer_ranges or ()),
        rules=tuple(Rule(r["attribute"], compile_rule(r["op"], r["value"])) for r in row.targeting or ()),
        variant_keys=keys,
        variant_ids=tuple(v.id for v in variants),
        index_of={v.id: i for i, v in enumerate(variants)},
        # The definition parser checks forced variant keys; a stale one is skipped, not fatal.
        forced={cid: keys.index(vkey) for cid, vkey in (row.forced_variants or {}).items() if vkey in keys},
    )


def load_definitions(session: Session) -> Definitions:
    """Every live experiment, reduced. One whose stored definition cannot be used
    (possible only if the tables were edited by hand) is logged and answered as not
    running, so that it cannot take assignment down for all the others."""
    rows = session.scalars(
        select(Experiment)
        .where(Experiment.status.in_(LIVE))
        .options(selectinload(Experiment.variants))
        .order_by(Experiment.id)
    )
    live: list[LiveExperiment] = []
    broken: list[str] = []
    for row in rows:
        try:
            live.append(_live(row))
        except (ValueError, TypeError, KeyError, IndexError):
            log.exception("experiment %r has an unusable stored definition; serving it as not running", row.key)
            broken.append(row.key)
    by_stage: dict[str, list[LiveExperiment]] = {}
    for experiment in live:
        by_stage.setdefault(experiment.stage, []).append(experiment)
    inactive = frozenset([*session.scalars(select(Experiment.key).where(Experiment.status.not_in(LIVE))), *broken])
    return Definitions(
        by_key={e.key: e for e in live},
        by_stage={stage: tuple(group) for stage, group in by_stage.items()},
        live=tuple(live),
        inactive=inactive,
    )


def init_app(app: Flask) -> None:
    settings = app.extensions["settings"]
    app.extensions["assignment_cache"] = VersionedCache(load_definitions, settings.definitions_refresh_seconds)
    app.extensions["exposure_store"] = ExposureStore(get_db(app))


def definitions(app: Flask | None = None) -> Definitions:
    app = app or current_app
    return app.extensions["assignment_cache"].get(get_db(app).sessionmaker)


def exposure_store(app: Flask | None = None) -> ExposureStore:
    return (app or current_app).extensions["exposure_store"]


# -- assigning -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssignRequest:
    customer_id: str
    attributes: Mapping[str, Scalar]
    # Exactly the named experiments, or those targeting a stage, or (both None) all.
    experiments: tuple[str, ...] | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    variant: str | None = None
    stage: str | None = None
    reason: Reason | None = None
    forced: bool = False

    @property
    def enrolled(self) -> bool:
        return self.variant is not None


@dataclass(slots=True)
class _Pending:
    """One live experiment being decided for this customer."""

    experiment: LiveExperiment
    placed: int  # variant index, or a bucketing sentinel
    forced: bool
    reason: Reason | None


def _select(defs: Definitions, request: AssignRequest) -> list[LiveExperiment | Assignment]:
    if request.experiments is None:
        return list(defs.by_stage.get(request.stage, ()) if request.stage is not None else defs.live)
    chosen: list[LiveExperiment | Assignment] = []
    for key in request.experiments:
        found = defs.by_key.get(key)
        if found is not None:
            chosen.append(found)
        else:
            reason: Reason = "not_running" if key in defs.inactive else "unknown_experiment"
            chosen.append(Assignment(key, reason=reason))
    return chosen


def _decide(experiment: LiveExperiment, request: AssignRequest) -> _Pending:
    forced = experiment.forced.get(request.customer_id)
    if forced is not None:
        return _Pending(experiment, forced, True, None)
    if not targeting_matches(experiment.rules, request.attributes):
        return _Pending(experiment, NOT_IN_TRAFFIC, False, "targeting")
    placed = place(experiment.split, request.customer_id)
    reason: Reason | None = "layer" if placed == OUTSIDE_LAYER else "traffic" if placed == NOT_IN_TRAFFIC else None
    return _Pending(experiment, placed, False, reason)


def assign(store: ExposureStore, defs: Definitions, request: AssignRequest) -> list[Assignment]:
    """Assignments in the order the experiments were asked for (or defined)."""
    chosen = _select(defs, request)
    pending = {
        item.id: _decide(item, request) for item in chosen if isinstance(item, LiveExperiment) and not item.paused
    }
    served: dict[int, Assignment] = {}
    if pending:
        served = _resolve(store, request, pending)
    result: list[Assignment] = []
    for item in chosen:
        if isinstance(item, Assignment):
            result.append(item)
        elif item.paused:
            result.append(Assignment(item.key, reason="paused"))
        else:
            result.append(served[item.id])
    return result


def _enrolled(pending: _Pending, index: int) -> Assignment:
    experiment = pending.experiment
    return Assignment(experiment.key, experiment.variant_keys[index], experiment.stage, forced=pending.forced)


def _resolve(store: ExposureStore, request: AssignRequest, pending: dict[int, _Pending]) -> dict[int, Assignment]:
    existing = {
        experiment_id: (exposure_id, variant_id)
        for exposure_id, experiment_id, variant_id in store.existing(request.customer_id, list(pending))
    }
    served: dict[int, Assignment] = {}
    to_insert: list[_Pending] = []
    mismatched: list[int] = []
    for experiment_id, decided in pending.items():
        recorded = existing.get(experiment_id)
        if recorded is None:
            if decided.reason is None:
                to_insert.append(decided)
            else:
                served[experiment_id] = Assignment(decided.experiment.key, reason=decided.reason)
            continue
        exposure_id, variant_id = recorded
        recorded_index = decided.experiment.index_of[variant_id]
        if decided.reason is None and decided.placed != recorded_index:
            mismatched.append(exposure_id)
        served[experiment_id] = _enrolled(decided, decided.placed if decided.forced else recorded_index)
    if mismatched:
        retry_on_lock(lambda: store.count_mismatches(mismatched))
    if to_insert:
        # Rows in experiment order: two workers inserting for one customer lock alike.
        to_insert.sort(key=lambda decided: decided.experiment.id)
        rows = [
            (decided.experiment.id, decided.experiment.variant_ids[decided.placed], decided.forced)
            for decided in to_insert
        ]
        stored = retry_on_lock(lambda: store.insert(request.customer_id, request.attributes, rows))
        for decided in to_insert:
            served[decided.experiment.id] = _enrolled(
                decided, decided.experiment.index_of[stored[decided.experiment.id]]
            )
    return served


# -- exposure storage ---------------------------------------------------------------------------


class _ThreadConnection:
    """One thread's driver connection, closed when the thread (and so this holder) goes."""

    __slots__ = ("__weakref__", "connection", "cursor")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.cursor = connection.cursor()

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:
            log.debug("closing an exposure connection failed", exc_info=True)

    def __del__(self) -> None:
        self.close()


class ExposureStore:
    """The hot path's three statements, on driver connections of their own.

    Through SQLAlchemy's statement execution one small query costs about 100-200 us of
    Python per call on this hardware; on the driver connection it costs about 15 us,
    and that difference is most of a repeat assignment's budget. So these statements
    are written in SQL here, with the dialect differences of ``rawsql``, and
    everything else stays SQLAlchemy.
    Each serving thread keeps one connection and cursor for as long as it lives,
    which saves the pool's checkout and check-in on every call (a gunicorn worker
    has one thread, or ``--threads`` of them); a connection found dropped is replaced
    and the statement run once more.

    Each statement is a transaction of its own (driver autocommit). An insert-if-absent
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` is atomic alone: on SQLite it takes
    the write lock when it starts and waits for it (busy timeout), as ``BEGIN
    IMMEDIATE`` would, with no read before it in the same transaction that could
    deadlock; on PostgreSQL a conflicting insert by another worker makes it wait for
    that worker's commit. The rows it did not insert are then read back, committed.
    """

    _COLUMNS = "experiment_id, variant_id, customer_id, exposed_at, attributes, forced, mismatches"

    def __init__(self, database: Database) -> None:
        engine = database.engine
        self._dialect = engine.dialect
        self._sql = RawDialect(engine.dialect)
        # Connections are made by the app's engine (its connect-time settings: WAL,
        # busy timeout) and then detached from its pool; PostgreSQL's in autocommit.
        self._engine = engine
        # SQLite: a write waits what the request has left of it (request_budget).
        self._busy_ms = database.settings.sqlite_busy_timeout_ms if database.settings.is_sqlite else None
        self._local = threading.local()
        self._open: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        event.listen(engine, "engine_disposed", lambda _engine: self.close())
        self._select_sql: dict[int, str] = {}  # by number of experiments

    def close(self) -> None:
        """Close every thread's connection (the engine is being disposed)."""
        for holder in list(self._open):
            holder.close()
        self._local = threading.local()

    def _connection(self) -> _ThreadConnection:
        holder = getattr(self._local, "holder", None)
        if holder is None:
            try:
                connection = self._engine.raw_connection()
            except self._engine.dialect.loaded_dbapi.Error as exc:
                # raw_connection() lets the driver's own error through; wrapped, it is a
                # database error like any other (a 503 while the database is down).
                raise DBAPIError.instance(
                    "connect", None, exc, self._engine.dialect.loaded_dbapi.Error, connection_invalidated=True
                ) from exc
            connection.detach()  # ours now: closing it closes the driver connection
            if self._sql.postgres:
                driver = connection.dbapi_connection
                assert driver is not None  # None only once the connection is closed or invalidated
                driver.autocommit = True
            holder = self._local.holder = _ThreadConnection(connection)
            self._open.add(holder)
        return holder

    def _drop_connection(self) -> None:
        holder = self._local.__dict__.pop("holder", None)
        if holder is not None:
            holder.close()

    def _run(self, sql: str, params: Sequence[Any], *, rows: bool = True) -> list[tuple]:
        """Run one statement; ``rows``: it returns rows (asking the cursor would cost
        a description of the columns on every call)."""
        for attempt in (1, 2):
            holder = self._connection()
            try:
                cursor = holder.cursor
                cursor.execute(sql, params)
                return cursor.fetchall() if rows else []
            except self._dialect.loaded_dbapi.Error as exc:
                disconnected = self._dialect.is_disconnect(exc, holder.connection.dbapi_connection, None)
                if disconnected:
                    self._drop_connection()
                if not (disconnected and attempt == 1):
                    raise DBAPIError.instance(
                        sql,
                        params,
                        exc,
                        self._dialect.loaded_dbapi.Error,
                        connection_invalidated=disconnected,
                        dialect=self._dialect,
                    ) from exc
        raise AssertionError("unreachable")

    def _write(self, sql: str, params: Sequence[Any], *, rows: bool = True) -> list[tuple]:
        """A statement that takes SQLite's write lock: if the request queued in its
        worker, it waits only what is left of the busy timeout."""
        left = None if self._busy_ms is None else request_budget.wait_left_ms(self._busy_ms)
        if left is None:
            return self._run(sql, params, rows=rows)
        self._run(f"PRAGMA busy_timeout = {left}", (), rows=False)
        try:
            return self._run(sql, params, rows=rows)
        finally:
            holder = self._local.__dict__.get("holder")
            try:
                if holder is not None:
                    holder.cursor.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            except self._dialect.loaded_dbapi.Error:
                self._drop_connection()  # never leave the thread's connection with a short wait

    def existing(self, customer_id: str, experiment_ids: Sequence[int]) -> list[tuple]:
        """(exposure id, experiment id, variant id) of the customer's exposures."""
        sql = self._select_sql.get(len(experiment_ids))
        if sql is None:
            sql = self._select_sql[len(experiment_ids)] = (
                "SELECT id, experiment_id, variant_id FROM exposures "
                f"WHERE customer_id = {self._sql.mark} AND experiment_id IN ({self._sql.marks(len(experiment_ids))})"
            )
        return self._run(sql, (customer_id, *experiment_ids))

    def insert(
        self, customer_id: str, attributes: Mapping[str, Any], rows: Sequence[tuple[int, int, bool]]
    ) -> dict[int, int]:
        """Insert (experiment id, variant id, forced) exposures unless present; return
        experiment id -> the variant id stored, whoever stored it."""
        sql = self._sql
        now = sql.time_in(utcnow())
        encoded = json.dumps(dict(attributes))
        values = ", ".join([f"({sql.marks(4)}, {sql.json_mark}, {sql.mark}, 0)"] * len(rows))
        params: list[Any] = []
        for experiment_id, variant_id, forced in rows:
            params += [experiment_id, variant_id, customer_id, now, encoded, forced]
        stored = dict(
            self._write(
                f"INSERT INTO exposures ({self._COLUMNS}) VALUES {values} "
                "ON CONFLICT (experiment_id, customer_id) DO NOTHING RETURNING experiment_id, variant_id",
                params,
            )
        )
        lost = [row[0] for row in rows if row[0] not in stored]
        if lost:
            stored.update(
                (experiment_id, variant_id) for _id, experiment_id, variant_id in self.existing(customer_id, lost)
            )
        return stored

    def count_mismatches(self, exposure_ids: Sequence[int]) -> None:
        self._write(
            f"UPDATE exposures SET mismatches = mismatches + 1 WHERE id IN ({self._sql.marks(len(exposure_ids))})",
            exposure_ids,
            rows=False,
        )
