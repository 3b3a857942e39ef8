"""SQL sent straight to the DB-API driver, for the two hot paths that cannot afford
SQLAlchemy's statement execution: exposure writes in ``assignment`` and event ingest
in ``ingest``. Everything else goes through SQLAlchemy.

Through SQLAlchemy one small statement costs about 100-200 us of Python, and its
per-value bind and result processing costs more than the database itself at
thousands of events per request. So these statements are written in SQL, and this
module is the one place that knows how SQLite and PostgreSQL differ at the driver
level: placeholders, casts, row locks, how a timestamp is passed and read back, and
how a set of rows travels as one statement. Values are converted to exactly what the
ORM's ``UTCDateTime`` stores, so rows written here and through the ORM compare alike.

It depends on SQLAlchemy's engine layer only (never on models or services), so both
``assignment`` and ``ingest`` import it without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Dialect

Row = tuple[Any, ...]


class RawDialect:
    """What one database needs from hand-written SQL."""

    __slots__ = ("json_mark", "lock", "mark", "postgres", "sqlite")

    def __init__(self, dialect: Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        self.postgres = dialect.name == "postgresql"
        # sqlite3 takes qmark parameters, psycopg format ones.
        self.mark = "?" if self.sqlite else "%s"
        # A JSON text parameter for a JSON column (PostgreSQL will not take text as json).
        self.json_mark = "%s::json" if self.postgres else self.mark
        # Appended to a SELECT that reads rows it will update; SQLite has one writer
        # at a time and no row locks.
        self.lock = "" if self.sqlite else " FOR UPDATE"

    def marks(self, count: int) -> str:
        """``count`` placeholders, comma-separated."""
        return ", ".join([self.mark] * count)

    def time_in(self, value: datetime | None) -> str | None:
        """An aware timestamp as text, for a parameter or a row source: on SQLite the
        text the ORM stores ('YYYY-MM-DD HH:MM:SS.ffffff', UTC, no zone); on
        PostgreSQL ISO 8601 with its zone, which the server reads as the column's
        type (psycopg sends text untyped) or a row source's ``::timestamptz``. Text
        also keeps JSON row sources on the encoder's fast path."""
        if value is None:
            return None
        if self.sqlite:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return value.isoformat()

    def time_out(self, value: Any) -> datetime | None:
        """A timestamp read back: SQLite gives the stored text, PostgreSQL a datetime."""
        if value is None or not isinstance(value, str):
            return value
        return datetime.fromisoformat(value).replace(tzinfo=UTC)


class RawConnection:
    """Statements on a SQLAlchemy connection's driver, in its transaction, with row
    sets sent as one row source: multi-row VALUES on SQLite, one JSON parameter on
    PostgreSQL. psycopg would otherwise re-parse a statement with thousands of
    placeholders, or escape array elements one by one, on every call, while the
    server unpacks JSON rows at C speed.
    """

    # Bound parameters per SQLite statement (its limit is 32,766).
    MAX_PARAMS = 30_000
    PAD_ROWS = 64

    __slots__ = ("connection", "dialect")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect = RawDialect(connection.dialect)

    def _run(self, statement: str, params: Sequence[Any], fetch: bool) -> Sequence[Any]:
        result = self.connection.exec_driver_sql(statement, tuple(params))
        return result.fetchall() if fetch else ()

    def rows(
        self,
        template: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Row],
        *,
        fetch: bool = False,
        idempotent: bool = True,
    ) -> Sequence[Any]:
        """Run ``template`` with ``{rows}`` replaced by a row source of ``rows``
        (columns named and, for PostgreSQL, typed by ``columns``), in list order;
        with ``fetch``, the rows the statement returns.
        ``idempotent``: repeating a row changes nothing, which lets SQLite reuse a
        few padded statement shapes. Timestamps go in as :meth:`RawDialect.time_in`
        gives them."""
        if not rows:
            return ()
        if not self.dialect.sqlite:
            fields = ", ".join(f"(r->>{i})::{kind} AS {name}" for i, (name, kind) in enumerate(columns))
            # In list order (the lock order the caller chose); jsonb is parsed once, where
            # json would be re-parsed for every field read.
            source = f"SELECT {fields} FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(r, n) ORDER BY n"
            return self._run(template.format(rows=source), [json.dumps(rows)], fetch)
        # Row counts are padded (repeating the last row) to a multiple of PAD_ROWS, so a
        # few statement shapes serve every batch size: sqlite3's statement cache then
        # reuses them instead of filling with big one-off compiled statements (which
        # grew each worker by tens of MiB).
        width = len(columns)
        row = "(" + ", ".join(["?"] * width) + ")"
        largest = max(1, self.MAX_PARAMS // width // self.PAD_ROWS) * self.PAD_ROWS
        found: list[Any] = []
        for start in range(0, len(rows), largest):
            chunk = list(rows[start : start + largest])
            if idempotent:
                chunk += chunk[-1:] * (-len(chunk) % self.PAD_ROWS)
            source = "VALUES " + ", ".join([row] * len(chunk))
            found.extend(self._run(template.format(rows=source), [v for r in chunk for v in r], fetch))
        return found
