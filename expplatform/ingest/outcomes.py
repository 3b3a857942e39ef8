"""The third step of ingest, inside the write transaction: fold a batch's events
into outcome rows, and say how the per-cell, per-day counters move.

Two tables of outcome rows are kept this way (an :class:`OutcomeTable` each):
``outcomes``, per experiment x customer x stage, from the events each experiment
counts; and ``journey_outcomes``, per journey x customer x stage x question ('' for
conversions), from every stored event. A row keeps the first conversion and the
latest rating (by event time; on equal times the one stored last: the later
request, or within one request the greater ``events.id``), and one column fixed when
the row is made: the variant (``outcomes``), the persona (``journey_outcomes``). Its
counter table holds the customer counts those rows sum to, so every row's transition
(a new conversion, an earlier one on another day, a rating replaced by a newer one)
is returned as counter deltas for the caller to add in the same transaction. Rows
are locked in key order, so concurrent batches wait for each other instead of
deadlocking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..counters import event_day, outcome_day
from ..models import EventType
from ..rawsql import RawConnection

Columns = tuple[tuple[str, str], ...]
Key = tuple[Any, ...]


@dataclass
class Fold:
    """The batch's contribution to one outcome row: earliest conversion and latest
    rating, ordered by (time, events.id). ``fixed`` is the row's fixed column (the
    variant id or the persona) if the batch makes the row; ``not_before`` dates no
    outcome before it (the exposure; None: the event's own UTC day)."""

    fixed: Any
    not_before: datetime | None
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

    def day(self, moment: datetime) -> str:
        return event_day(moment) if self.not_before is None else outcome_day(moment, self.not_before)


_VALUES: Columns = (
    ("converted_at", "timestamptz"),
    ("rating", "integer"),
    ("rated_at", "timestamptz"),
    ("rating_event_id", "bigint"),
)


@dataclass(frozen=True)
class OutcomeTable:
    """A table of outcome rows and the counter table that sums them: its key columns,
    its fixed column, and the counter cell (the counter key before day, kind and
    value) of a row from its key and fixed value."""

    name: str
    key: Columns
    fixed: tuple[str, str]
    counts: str
    cell_columns: Columns
    cell: Callable[[Key, Any], Key]

    @property
    def columns(self) -> Columns:
        return (*self.key, self.fixed, *_VALUES)

    @property
    def count_columns(self) -> Columns:
        """The counter table's key: the cell, then day, kind and value."""
        return (*self.cell_columns, ("day", "date"), ("kind", "text"), ("value", "integer"))


OUTCOMES = OutcomeTable(
    "outcomes",
    (("experiment_id", "integer"), ("customer_id", "text"), ("stage", "text")),
    ("variant_id", "integer"),
    "outcome_counts",
    (("experiment_id", "integer"), ("stage", "text"), ("variant_id", "integer")),
    lambda key, variant_id: (key[0], key[2], variant_id),
)
JOURNEY_OUTCOMES = OutcomeTable(
    "journey_outcomes",
    (("journey_id", "integer"), ("customer_id", "text"), ("stage", "text"), ("metric", "text")),
    ("persona", "text"),
    "journey_counts",
    (("journey_id", "integer"), ("stage", "text"), ("metric", "text"), ("persona", "text")),
    lambda key, persona: (key[0], key[2], key[3], persona),
)
OUTCOME_COLUMNS = OUTCOMES.columns

OutcomeKey = tuple[int, str, str]  # experiment id, customer id, stage
JourneyOutcomeKey = tuple[int, str, str, str]  # journey id, customer id, stage, question or ''


def apply_outcomes(sql: RawConnection, table: OutcomeTable, folds: dict[Any, Fold]) -> dict[Key, int]:
    """Write the folds into ``table`` and return the counter deltas of every row's
    transition (new conversion: +1; rating a -> b: -1 on a, +1 on b).

    New rows are inserted (ON CONFLICT DO NOTHING RETURNING says which were new); the
    others are locked in key order, merged and updated. A row another transaction is
    inserting makes the insert wait for it, so the lock-and-merge sees it committed.
    """
    deltas: dict[Key, int] = defaultdict(int)
    if not folds:
        return deltas
    time_in, time_out = sql.dialect.time_in, sql.dialect.time_out
    width = len(table.key)
    names = ", ".join(name for name, _kind in table.columns)
    key_names = ", ".join(name for name, _kind in table.key)
    keys = sorted(folds)
    rows = [
        (*k, f.fixed, time_in(f.converted_at), f.rating, time_in(f.rated_at), f.rating_event_id)
        for k in keys
        for f in (folds[k],)
    ]
    inserted = {
        tuple(r)
        for r in sql.rows(
            f"INSERT INTO {table.name} ({names}) {{rows}} ON CONFLICT ({key_names}) DO NOTHING RETURNING {key_names}",
            table.columns,
            rows,
            fetch=True,
        )
    }
    for key in inserted:
        fold = folds[key]
        cell = table.cell(key, fold.fixed)
        if fold.converted_at is not None:
            deltas[(*cell, fold.day(fold.converted_at), "converted", 0)] += 1
        if fold.rating is not None and fold.rated_at is not None:
            deltas[(*cell, fold.day(fold.rated_at), "rating", fold.rating)] += 1
    existing = [k for k in keys if k not in inserted]
    updates: list[tuple[Any, ...]] = []
    current = sql.rows(
        f"SELECT {names} FROM {table.name} WHERE ({key_names}) IN ({{rows}}) ORDER BY {key_names}{sql.dialect.lock}",
        table.key,
        existing,
        fetch=True,
    )
    for row in current:
        key = tuple(row[:width])
        fixed, converted_at, rating, rated_at, rating_event_id = row[width:]
        change = _merge(
            table.cell(key, fixed),
            time_out(converted_at),
            rating,
            time_out(rated_at),
            rating_event_id,
            folds[key],
            deltas,
        )
        if change is not None:
            converted_at, rating, rated_at, rating_event_id = change
            updates.append((*key, fixed, time_in(converted_at), rating, time_in(rated_at), rating_event_id))
    # Rewrites each changed row whole (same key and fixed column), from one row source.
    sql.rows(
        f"INSERT INTO {table.name} ({names}) {{rows}} ON CONFLICT ({key_names}) DO UPDATE "
        "SET converted_at = excluded.converted_at, rating = excluded.rating, rated_at = excluded.rated_at, "
        "rating_event_id = excluded.rating_event_id",
        table.columns,
        updates,
    )
    return deltas


def _merge(
    cell: Key,
    converted_at: datetime | None,
    rating: int | None,
    rated_at: datetime | None,
    rating_event_id: int | None,
    fold: Fold,
    deltas: dict[Key, int],
) -> tuple[datetime | None, int | None, datetime | None, int | None] | None:
    """The row after the batch, or None if unchanged; records the counter moves
    (an earlier conversion may move it to another day; a newer rating moves the
    customer from the old (day, rating) cell to the new one)."""
    changed = False
    if fold.converted_at is not None and (converted_at is None or fold.converted_at < converted_at):
        if converted_at is not None:
            deltas[(*cell, fold.day(converted_at), "converted", 0)] -= 1
        deltas[(*cell, fold.day(fold.converted_at), "converted", 0)] += 1
        converted_at, changed = fold.converted_at, True
    if (
        fold.rated_at is not None
        and fold.rating is not None
        and (rated_at is None or (fold.rated_at, fold.rating_event_id) > (rated_at, rating_event_id))
    ):
        if rating is not None and rated_at is not None:
            deltas[(*cell, fold.day(rated_at), "rating", rating)] -= 1
        deltas[(*cell, fold.day(fold.rated_at), "rating", fold.rating)] += 1
        rating, rated_at, rating_event_id, changed = fold.rating, fold.rated_at, fold.rating_event_id, True
    return (converted_at, rating, rated_at, rating_event_id) if changed else None
