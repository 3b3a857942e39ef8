"""The few SQL spellings that differ between the databases the statistics run on,
in one place: the UTC day of a time, a time plus seconds, a time written as a
literal, and a value read from JSON text. Everything else in ``query`` (and
``segments``) is portable SQLAlchemy Core.

Times are written as literals with their zone, never bound as parameters: the
embedded ClickHouse shifts a bound zone-aware datetime by the process's own zone
when that is not UTC, and text in ISO form with an explicit UTC means one instant on
every engine.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, Integer, String, case, cast, func, literal, literal_column, null
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import UserDefinedType

Name = str  # "sqlite", "postgresql", "duckdb" or "clickhouse"

# A key ``json_text`` reads: an exposure attribute's name (``aggregation.SEGMENT_ATTRIBUTE``).
_JSON_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _HugeInt(UserDefinedType[int]):
    """DuckDB's 128-bit integer."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "HUGEINT"


HUGEINT = _HugeInt()


def utc_day(dialect: Name, moment: Any) -> ColumnElement[Any]:
    """The UTC date of a time column."""
    if dialect == "sqlite":
        return func.date(moment)  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
    if dialect == "clickhouse":
        return func.toDate(moment, literal_column("'UTC'"))
    return cast(func.timezone("UTC", moment), Date())


def plus_seconds(dialect: Name, moment: Any, seconds: float) -> ColumnElement[Any]:
    """A time column moved by a fixed number of seconds (microsecond precision), on
    the warehouses (the built-in events store their cutoff)."""
    micros = round(seconds * 1_000_000)
    if dialect == "clickhouse":
        return func.addMicroseconds(moment, literal_column(str(micros)))
    if dialect == "duckdb":
        return moment + func.to_microseconds(cast(literal_column(str(micros)), Integer))
    return moment + func.make_interval(0, 0, 0, 0, 0, 0, literal_column(f"{micros / 1_000_000:.6f}"))


def timestamp(dialect: Name, moment: datetime) -> ColumnElement[Any]:
    """An instant as a literal of the engine's zone-aware time type."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if dialect == "clickhouse":
        return func.toDateTime64(literal_column(f"'{text}'"), literal_column("6"), literal_column("'UTC'"))
    if dialect == "sqlite":
        return literal(text)
    return cast(literal_column(f"'{text}+00:00'"), DateTime(timezone=True))


def windows_repeated_ids_only(dialect: Name) -> bool:
    """Whether the first copy of each event is best found by a window over the ids
    stored more than once only, the others passing through (``NOT IN`` a set of
    repeated ids): several times faster on the column engines, where ordering every
    copy dominated the statistics. PostgreSQL plans that ``NOT IN`` inside a nested
    loop it then repeats, so it orders every copy instead."""
    return dialect in ("duckdb", "clickhouse")


def sorts_ids_by_hash(dialect: Name) -> bool:
    """Whether a window over text ids (which copy of an event came first) is better
    partitioned by the id's hash, then the id: ClickHouse sorts by a number first
    and compares texts only between rows sharing a hash. On chdb at 50M events in
    three parts (a table still being inserted into), the increment's reading of the
    touched customers' events took 3.3 s rather than 4.5 s, and finding those
    customers 1.45 s rather than 2.1 s; merged into one part, the increment gained
    less (4.1 s against 4.5 s). DuckDB gained nothing."""
    return dialect == "clickhouse"


def computes_by_bucket(dialect: Name) -> bool:
    """Whether the statistics are computed for one bucket of customers at a time
    (``refresh._bucketed_cells``): ClickHouse spilled one statement over all of them
    to disk several times over under a memory bound."""
    return dialect in ("clickhouse",)


def id_hash(dialect: Name, text: Any) -> ColumnElement[Any]:
    """A 64-bit hash of an id, on the engines that ``windows_repeated_ids_only``."""
    if dialect == "clickhouse":
        return func.cityHash64(text)
    assert dialect == "duckdb", dialect
    return func.hash(text)


def has_arg_extremes(dialect: Name) -> bool:
    """Whether the engine picks a row's value by the greatest key in an aggregate
    (``arg_max``, ``argMax``). Where it does, the latest rating is an aggregate
    rather than a window: ClickHouse holds a window's rows in memory (50M events
    went over a 2 GB bound) but spills a ``GROUP BY``. (Picking a text by a key is
    another matter: both engines took several times a window's time for that, so
    the first exposure stays a window.)"""
    return dialect in ("duckdb", "clickhouse")


def arg_max(dialect: Name, value: Any, moment: Any, sequence: Any, where: Any) -> ColumnElement[Any]:
    """``value`` on the row with the latest ``moment``, then the greatest integer
    ``sequence``, among the rows ``where`` holds. The two are packed into one 128-bit
    integer (microseconds shifted past the 64 bits any sequence fits in): comparing
    a tuple took ClickHouse twice as long. Where no row holds, DuckDB gives NULL and
    ClickHouse the type's default: read it only beside a column that tells whether
    there was one."""
    if dialect == "clickhouse":
        micros = func.toUnixTimestamp64Micro(func.toDateTime64(moment, literal_column("6")))
        key = func.bitShiftLeft(func.toInt128(micros), literal_column("64")) + func.toInt128(sequence)
        return func.argMaxIf(value, key, where)
    assert dialect == "duckdb", dialect
    key = func.epoch_us(moment).cast(HUGEINT).op("<<")(literal_column("64")) + cast(sequence, HUGEINT)
    return func.arg_max(value, key).filter(where)


def json_text(dialect: Name, document: Any, key: str) -> ColumnElement[Any]:
    """The value under ``key`` of a JSON object held in a text column, as text, as
    the platform's own database reads an exposure attribute
    (``aggregation._segment_value``): a string as it is, a boolean as 'true' or
    'false', a number as written; NULL when the key is absent or null, and when the
    text is NULL or empty (ClickHouse's non-nullable columns hold '' for none).

    ClickHouse: ``JSONExtractString`` gives '' both for a missing key and for an
    empty string, so the value's ``JSONType`` decides (a missing key's is 'Null');
    a NULL branch makes the result ``Nullable(String)`` without ``CAST(NULL AS
    String)``, which ClickHouse refuses."""
    assert _JSON_KEY.fullmatch(key), key
    empty: ColumnElement[str] = literal_column("''")
    if dialect == "clickhouse":
        name: ColumnElement[str] = literal_column(f"'{key}'")
        kind = func.JSONType(document, name)
        boolean = case(
            (func.JSONExtractBool(document, name) == 1, literal_column("'true'")), else_=literal_column("'false'")
        )
        return case(
            (kind == literal_column("'String'"), func.JSONExtractString(document, name)),
            (kind == literal_column("'Bool'"), boolean),
            (kind == literal_column("'Null'"), null()),
            else_=func.JSONExtractRaw(document, name),
        )
    if dialect == "duckdb":
        return func.json_extract_string(func.nullif(document, empty), literal_column(f"'$.\"{key}\"'"), type_=String)
    if dialect == "postgresql":
        return cast(func.nullif(document, empty), JSON).op("->>", return_type=String())(literal_column(f"'{key}'"))
    raise ValueError(f"no JSON text reading for {dialect}")


class TemporaryTable(Executable, ClauseElement):
    """``CREATE TEMPORARY TABLE name AS select``, on the connection's session: a
    result several statements read, computed once (ClickHouse would recompute a
    subquery at each reference)."""

    inherit_cache = False

    def __init__(self, dialect: Name, name: str, query: Select[Any]) -> None:
        assert name.replace("_", "").isalnum(), name
        self.dialect, self.name, self.query = dialect, name, query


@compiles(TemporaryTable)
def _temporary_table(element: TemporaryTable, compiler: Any, **kw: Any) -> str:
    engine = " ENGINE = Memory" if element.dialect == "clickhouse" else ""
    return f"CREATE TEMPORARY TABLE {element.name}{engine} AS {compiler.process(element.query, **kw)}"
