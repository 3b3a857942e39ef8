"""The few SQL spellings that differ between the databases the statistics run on,
in one place: the UTC day of a time, a time plus seconds, and a time written as a
literal. Everything else in ``query`` is portable SQLAlchemy Core.

Times are written as literals with their zone, never bound as parameters: the
embedded ClickHouse shifts a bound zone-aware datetime by the process's own zone
when that is not UTC, and text in ISO form with an explicit UTC means one instant on
every engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Date, DateTime, Integer, cast, func, literal, literal_column
from sqlalchemy.sql import ColumnElement

Name = str  # "sqlite", "postgresql", "duckdb" or "clickhouse"


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


def has_arg_extremes(dialect: Name) -> bool:
    """Whether the engine picks a row's value by the greatest (or least) key in an
    aggregate (``arg_max``, ``argMax``). Where it does, the latest rating and the
    first exposure are aggregates rather than windows: ClickHouse holds a window's
    rows in memory (50M events went over a 2 GB bound) but spills a ``GROUP BY``,
    and both engines aggregate faster than they sort."""
    return dialect in ("duckdb", "clickhouse")


def arg_max(dialect: Name, value: Any, keys: list[Any], where: Any = None) -> ColumnElement[Any]:
    """``value`` on the row with the greatest ``keys`` (compared in order), among the
    rows ``where`` holds. Where none does, DuckDB gives NULL and ClickHouse the
    type's default: read it only beside a column that tells whether there was one."""
    return _arg(dialect, "max", value, keys, where)


def arg_min(dialect: Name, value: Any, keys: list[Any]) -> ColumnElement[Any]:
    """``value`` on the row with the least ``keys`` (compared in order)."""
    return _arg(dialect, "min", value, keys, None)


def _arg(dialect: Name, extreme: str, value: Any, keys: list[Any], where: Any) -> ColumnElement[Any]:
    if dialect == "clickhouse":
        name = f"arg{extreme.capitalize()}"
        key = func.tuple(*keys)
        return getattr(func, f"{name}If")(value, key, where) if where is not None else getattr(func, name)(value, key)
    assert dialect == "duckdb", dialect
    picked = getattr(func, f"arg_{extreme}")(value, func.row(*keys))
    return picked.filter(where) if where is not None else picked
