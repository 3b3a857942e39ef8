"""Looking at a warehouse before trusting it: which columns its tables have and what
kind of type each one is, so that a source whose mapping cannot work is refused
with the field to fix, not discovered by a failing statistics refresh.

Columns are read from the catalog with bound parameters (the table and schema names
are never part of the SQL text): ``information_schema.columns`` on PostgreSQL and
DuckDB (SQLAlchemy's inspector does not work on duckdb-engine), ``system.columns``
on ClickHouse. Type names are reduced to the four families the roles need
(``mapping.TypeFamily``) by :func:`type_family`, a pure function.

Every failure to reach or read the warehouse becomes :class:`WarehouseUnavailable`
with a message that never holds the URL's password.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import text
from sqlalchemy.engine import make_url

from .engines import WarehouseUnavailable, dialect_of, warehouse_engine
from .mapping import TypeFamily

# name -> type name as the catalog writes it
Columns = dict[str, str]

_WRAPPERS = re.compile(r"^(?:Nullable|LowCardinality)\((?P<inner>.*)\)$", re.IGNORECASE)
_TEXT = re.compile(
    r"^(?:text|varchar|char|bpchar|string|character varying|character|citext|name|fixedstring)(?:\s*\(\d+\))?$",
    re.IGNORECASE,
)
_INTEGER = re.compile(
    r"^(?:u?int(?:8|16|32|64|128|256)?|integer|bigint|smallint|tinyint|hugeint|uhugeint|"
    r"usmallint|utinyint|ubigint|uinteger|int2|int4|int8|serial|bigserial)$",
    re.IGNORECASE,
)
_TIMESTAMP = re.compile(
    r"^(?:timestamp(?:tz|_s|_ms|_ns)?(?:\s*\(\d+\))?(?: with(?:out)? time zone)?|datetime(?:64)?(?:\(.*\))?)$",
    re.IGNORECASE,
)
_BOOLEAN = re.compile(r"^(?:bool|boolean|uint8)$", re.IGNORECASE)

_CATALOG = {
    "postgresql": text(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = coalesce(:schema, current_schema()) AND table_name = :table "
        "ORDER BY ordinal_position"
    ),
    "duckdb": text(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = coalesce(:schema, current_schema()) AND table_name = :table "
        "ORDER BY ordinal_position"
    ),
    "clickhouse": text(
        "SELECT name, type FROM system.columns "
        "WHERE database = coalesce(:schema, currentDatabase()) AND table = :table ORDER BY position"
    ),
}


def type_families(type_name: str) -> frozenset[TypeFamily]:
    """The families a column of this type can play: ``Nullable(...)`` and
    ``LowCardinality(...)`` are looked through; ClickHouse's ``UInt8`` is both an
    integer and its boolean; ``DateTime64(6, 'UTC')`` is a timestamp."""
    name = type_name.strip()
    while (match := _WRAPPERS.match(name)) is not None:
        name = match.group("inner").strip()
    families: set[TypeFamily] = set()
    if _TEXT.match(name):
        families.add("text")
    if _INTEGER.match(name):
        families.add("integer")
    if _TIMESTAMP.match(name):
        families.add("timestamp")
    if _BOOLEAN.match(name):
        families.add("boolean")
    return frozenset(families)


def type_family(type_name: str) -> TypeFamily | None:
    """The one family of a type (for ``UInt8``, which is two, the integer), or None
    for a type that plays no role (a float, a date, an array...)."""
    families = type_families(type_name)
    for family in ("text", "integer", "timestamp", "boolean"):
        if family in families:
            return family
    return None


def split_table(name: str) -> tuple[str | None, str]:
    """``schema.table`` -> (schema, table); a bare table is in the default schema."""
    schema, dot, table = name.rpartition(".")
    return (schema if dot else None), table


def _scrub(message: str, url: str) -> str:
    password = make_url(url).password if "://" in url else None
    first = message.strip().splitlines()[0] if message.strip() else message
    if password:
        first = first.replace(str(password), "***")
    return first[:500]


def _local_file(url: str) -> None:
    """DuckDB would create a missing file and chdb a missing folder: refuse both (and
    anything that is not a DuckDB file or a chdb folder), so a mistyped path is
    reported, not silently made, and no other file or folder of the host is opened."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("duckdb", "chdb"):
        return
    # DuckDB's path as its dialect reads it (duckdb:////abs/file -> /abs/file); chdb's
    # as ``engines`` reads it.
    path = (make_url(url).database or "") if scheme == "duckdb" else unquote(parts.path)
    if scheme == "duckdb" and path in ("", ":memory:"):
        raise WarehouseUnavailable("a duckdb:// URL names its database file: duckdb:///path/to/file.duckdb")
    if scheme == "duckdb" and not _is_duckdb_file(Path(path)):
        raise WarehouseUnavailable(f"no DuckDB file at {path}")
    if scheme == "chdb" and path not in ("", "/") and not (Path(path) / "metadata").is_dir():
        raise WarehouseUnavailable(f"no chdb data folder at {path} (one chdb has written holds metadata/)")


def _is_duckdb_file(path: Path) -> bool:
    """A DuckDB database file (its header says DUCK at byte 8), so that no other
    file of the host is opened as one."""
    try:
        with path.open("rb") as file:
            return file.read(12)[8:12] == b"DUCK"
    except OSError:
        return False


def table_columns(url: str, tables: list[str]) -> dict[str, Columns | None]:
    """The columns of each table (None: no such table), read in one connection."""
    dialect = dialect_of(url)
    _local_file(url)
    found: dict[str, Columns | None] = {}
    try:
        with warehouse_engine(url).connect() as connection:
            for name in dict.fromkeys(tables):
                schema, table = split_table(name)
                rows = connection.execute(_CATALOG[dialect], {"schema": schema, "table": table}).all()
                found[name] = {str(column): str(kind) for column, kind in rows} if rows else None
    except WarehouseUnavailable:
        raise
    except Exception as exc:  # any driver's error: the warehouse could not be read
        orig = getattr(exc, "orig", None) or exc
        raise WarehouseUnavailable(_scrub(str(orig), url)) from None
    return found
