"""The third step of ingest, inside the write transaction: fold a batch's counted
events into the ``outcomes`` rows, and say how the per-cell, per-day counters move.

Per experiment x customer x stage one row keeps the first conversion and the latest
rating (by event time; on equal times the one stored last: the later request, or
within one request the greater ``events.id``). ``outcome_counts`` holds the customer
counts those rows sum to, so every row's transition (a new conversion, an earlier
one on another day, a rating replaced by a newer one) is returned as counter deltas
for the caller to add in the same transaction. Rows are locked in key order, so
concurrent batches wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from ..counters import outcome_day
from ..models import EventType
from ..rawsql import RawConnection


@dataclass
class Fold:
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


OUTCOME_COLUMNS = (
    ("experiment_id", "integer"),
    ("customer_id", "text"),
    ("stage", "text"),
    ("variant_id", "integer"),
    ("converted_at", "timestamptz"),
    ("rating", "integer"),
    ("rated_at", "timestamptz"),
    ("rating_event_id", "bigint"),
)
_OUTCOME_NAMES = ", ".join(name for name, _kind in OUTCOME_COLUMNS)


def apply_outcomes(sql: RawConnection, folds: dict[OutcomeKey, Fold]) -> dict[CountKey, int]:
    """Write the folds into ``outcomes`` and return the counter deltas of every row's
    transition (new conversion: +1; rating a -> b: -1 on a, +1 on b).

    New rows are inserted (ON CONFLICT DO NOTHING RETURNING says which were new); the
    others are locked in key order, merged and updated. A row another transaction is
    inserting makes the insert wait for it, so the lock-and-merge sees it committed.
    """
    deltas: dict[CountKey, int] = defaultdict(int)
    time_in, time_out = sql.dialect.time_in, sql.dialect.time_out
    keys = sorted(folds)
    rows = [
        (
            k[0],
            k[1],
            k[2],
            f.variant_id,
            time_in(f.converted_at),
            f.rating,
            time_in(f.rated_at),
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
            OUTCOME_COLUMNS,
            rows,
            fetch=True,
        )
    }
    for key in inserted:
        fold = folds[key]
        cell = (key[0], key[2], fold.variant_id)
        if fold.converted_at is not None:
            deltas[(*cell, outcome_day(fold.converted_at, fold.exposed_at), "converted", 0)] += 1
        if fold.rating is not None and fold.rated_at is not None:
            deltas[(*cell, outcome_day(fold.rated_at, fold.exposed_at), "rating", fold.rating)] += 1
    existing = [k for k in keys if k not in inserted]
    updates: list[tuple] = []
    current = sql.rows(
        f"SELECT {_OUTCOME_NAMES} FROM outcomes WHERE (experiment_id, customer_id, stage) IN ({{rows}}) "
        f"ORDER BY experiment_id, customer_id, stage{sql.dialect.lock}",
        OUTCOME_COLUMNS[:3],
        existing,
        fetch=True,
    )
    for experiment_id, customer_id, stage, variant_id, converted_at, rating, rated_at, rating_event_id in current:
        key = (experiment_id, customer_id, stage)
        change = _merge(
            key,
            variant_id,
            time_out(converted_at),
            rating,
            time_out(rated_at),
            rating_event_id,
            folds[key],
            deltas,
        )
        if change is not None:
            converted_at, rating, rated_at, rating_event_id = change
            updates.append((*key, variant_id, time_in(converted_at), rating, time_in(rated_at), rating_event_id))
    # Rewrites each changed row whole (same key and variant), from one row source.
    sql.rows(
        f"INSERT INTO outcomes ({_OUTCOME_NAMES}) {{rows}} ON CONFLICT (experiment_id, customer_id, stage) DO UPDATE "
        "SET converted_at = excluded.converted_at, rating = excluded.rating, rated_at = excluded.rated_at, "
        "rating_event_id = excluded.rating_event_id",
        OUTCOME_COLUMNS,
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
    fold: Fold,
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
            deltas[(*cell, outcome_day(converted_at, fold.exposed_at), "converted", 0)] -= 1
        deltas[(*cell, outcome_day(fold.converted_at, fold.exposed_at), "converted", 0)] += 1
        converted_at, changed = fold.converted_at, True
    if (
        fold.rated_at is not None
        and fold.rating is not None
        and (rated_at is None or (fold.rated_at, fold.rating_event_id) > (rated_at, rating_event_id))
    ):
        if rating is not None and rated_at is not None:
            deltas[(*cell, outcome_day(rated_at, fold.exposed_at), "rating", rating)] -= 1
        deltas[(*cell, outcome_day(fold.rated_at, fold.exposed_at), "rating", fold.rating)] += 1
        rating, rated_at, rating_event_id, changed = fold.rating, fold.rated_at, fold.rating_event_id, True
    return (converted_at, rating, rated_at, rating_event_id) if changed else None
