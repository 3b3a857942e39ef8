"""The raw-SQL layer shared by exposure writes and ingest: what it writes must be
what the ORM writes, and a row source of any size must carry every row once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import func, select

from expplatform.ingest.outcomes import OUTCOME_COLUMNS
from expplatform.models import Outcome
from expplatform.rawsql import RawConnection

_INSERT = (
    "INSERT INTO outcomes (experiment_id, customer_id, stage, variant_id, converted_at, rating, rated_at, "
    "rating_event_id) {rows} ON CONFLICT (experiment_id, customer_id, stage) DO NOTHING "
    "RETURNING customer_id"
)


def test_a_timestamp_written_raw_is_stored_as_the_orm_stores_it(db):
    # Not UTC and with microseconds: both must be normalised exactly as UTCDateTime does.
    moment = datetime(2024, 5, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    with db.write() as session:
        sql = RawConnection(session.connection())
        time_in = sql.dialect.time_in
        sql.rows(_INSERT, OUTCOME_COLUMNS, [(1, "raw", "purchase", 1, time_in(moment), None, None, None)])
        session.add(Outcome(experiment_id=1, customer_id="orm", stage="purchase", variant_id=1, converted_at=moment))
    with db.sessionmaker() as session:
        # Equal stored values: a comparison in SQL finds both rows.
        found = session.scalars(select(Outcome.customer_id).where(Outcome.converted_at == moment)).all()
        assert sorted(found) == ["orm", "raw"]
        assert session.scalar(select(Outcome.converted_at).where(Outcome.customer_id == "raw")) == moment
        raw = RawConnection(session.connection())
        (stored,) = raw.rows(
            "SELECT converted_at FROM outcomes WHERE customer_id IN ({rows})",
            [("customer_id", "text")],
            [("raw",)],
            fetch=True,
        )
        assert raw.dialect.time_out(stored[0]) == datetime(2024, 5, 1, 12, 30, 5, 123456, tzinfo=UTC)


def test_a_row_source_larger_than_one_statement_carries_every_row_once(db):
    with db.write() as session:
        sql = RawConnection(session.connection())
        # More rows than one SQLite statement takes, and not a multiple of the padding.
        count = sql.MAX_PARAMS // len(OUTCOME_COLUMNS) + sql.PAD_ROWS + 3
        at = sql.dialect.time_in(datetime(2024, 5, 1, tzinfo=UTC))
        rows = [(1, f"c{i:06d}", "purchase", 1, at, i % 5 + 1, at, i) for i in range(count)]
        returned = sql.rows(_INSERT, OUTCOME_COLUMNS, rows, fetch=True)
        # Padding repeats a row, which the conflict clause skips: each row comes back once.
        assert sorted(row[0] for row in returned) == [row[1] for row in rows]
        again = sql.rows(_INSERT, OUTCOME_COLUMNS, rows[:10], fetch=True)
        assert len(again) == 0
    with db.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Outcome)) == count
        assert session.scalar(select(func.sum(Outcome.rating_event_id))) == count * (count - 1) // 2
