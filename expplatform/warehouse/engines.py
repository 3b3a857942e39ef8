"""Connections to the warehouses a source may name, by the scheme of its URL:

- ``postgresql+psycopg://user:password@host/db`` (or ``postgresql://``): PostgreSQL;
- ``duckdb:///path/to/file.duckdb``: DuckDB through duckdb-engine (one file, which
  only one process may open for writing; the platform only reads it);
- ``clickhousedb://user:password@host:8123/db``: a ClickHouse server through
  clickhouse-connect's SQLAlchemy dialect (HTTP);
- ``chdb:///path/to/folder``: the embedded ClickHouse engine (chdb) on a data
  folder, driven by the same dialect. chdb can hold one folder per process, so a
  process asked for a second gets a :class:`WarehouseUnavailable` saying so.

Engines are made once per URL (and memory limit) and process, with small pools: a statistics refresh
is one long query, never many short ones.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

DIALECTS = {"postgresql": "postgresql", "duckdb": "duckdb", "clickhousedb": "clickhouse", "chdb": "clickhouse"}

_engines: dict[tuple[str, int | None], Engine] = {}
_chdb_folder: list[str] = []
_lock = threading.Lock()


class WarehouseUnavailable(Exception):
    """The warehouse cannot be reached or opened; the message says why in words an
    operator can act on (it never repeats the URL's password)."""


def dialect_of(url: str) -> str:
    """``postgresql``, ``duckdb`` or ``clickhouse``, from the URL's scheme."""
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    try:
        return DIALECTS[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in sorted(DIALECTS))
        raise WarehouseUnavailable(f"unsupported warehouse URL scheme {scheme!r}; use one of {known}") from None


def warehouse_engine(url: str, *, memory_limit_mb: int | None = None) -> Engine:
    """The process's engine for the URL (made on first use). ``memory_limit_mb``
    bounds what one statistics query may hold in memory: DuckDB and ClickHouse
    spill a larger aggregation or sort to disk instead (PostgreSQL does by itself,
    past ``work_mem``)."""
    with _lock:
        engine = _engines.get((url, memory_limit_mb))
        if engine is None:
            engine = _engines[(url, memory_limit_mb)] = _create(url, memory_limit_mb)
        return engine


def _create(url: str, memory_limit_mb: int | None) -> Engine:
    dialect_of(url)
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        folder = unquote(parts.path)
        if not folder or folder == "/":
            raise WarehouseUnavailable("a chdb:// URL names its data folder: chdb:///path/to/folder")
        if _chdb_folder and _chdb_folder[0] != folder:
            raise WarehouseUnavailable(
                f"the embedded ClickHouse (chdb) opens one data folder per process, and this one has {_chdb_folder[0]}"
            )
        _chdb_folder[:] = [folder]
        # The dialect passes a host, which the embedded engine has no use for and says so.
        logging.getLogger("clickhouse_connect.driver").setLevel(logging.ERROR)
        engine = create_engine(
            "clickhousedb://localhost/default",
            connect_args={"interface": "chdb", "path": folder},
            pool_size=2,
            max_overflow=2,
        )
        if memory_limit_mb:
            limit = memory_limit_mb * 2**20
            _on_connect(
                engine,
                f"SET max_memory_usage = {limit}",
                # A statement runs several aggregations, sorts and a join at once, and
                # merging spilled aggregates takes memory too: each spills to disk past an
                # eighth of the bound (a grace hash join spills; a plain one fails). At 2 GB
                # that kept 50M events under the bound where a quarter, a sixth for the
                # aggregation, or more did not. (The statistics, in buckets of customers
                # sized by the bound, aggregate in more: ``bucket_settings``.)
                _spill_group_by(limit // 8),
                f"SET max_bytes_before_external_sort = {limit // 8}",
                "SET join_algorithm = 'grace_hash'",
                f"SET max_bytes_in_join = {limit // 8}",
            )
        return engine
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername.startswith("postgresql"):
            return create_engine(
                parsed, pool_size=2, max_overflow=2, pool_pre_ping=True, connect_args={"connect_timeout": 10}
            )
        engine = create_engine(parsed)
        if memory_limit_mb and parsed.drivername.startswith("duckdb"):
            _on_connect(engine, f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        return engine
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise WarehouseUnavailable(f"the warehouse URL is not usable: {exc}") from None


def _spill_group_by(size: int) -> str:
    return f"SET max_bytes_before_external_group_by = {size}"


@contextlib.contextmanager
def bucket_settings(connection: Connection, memory_limit_mb: int | None) -> Iterator[None]:
    """While statements over one bucket of customers run (``refresh._bucketed_cells``):
    on ClickHouse under a memory bound, an aggregation spills to disk only past half
    of it, not an eighth (a bucket's is sized to fit; at 10M events, 14 s instead of
    21 s). Restored after, as the pool keeps the session."""
    if not memory_limit_mb or connection.dialect.name != "clickhousedb":
        yield
        return
    limit = memory_limit_mb * 2**20
    connection.exec_driver_sql(_spill_group_by(limit // 2))
    try:
        yield
    finally:
        connection.exec_driver_sql(_spill_group_by(limit // 8))


def _on_connect(engine: Engine, *statements: str) -> None:
    """Run ``statements`` on every new connection of the engine (its session settings)."""

    @event.listens_for(engine, "connect")
    def _apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()


def dispose_all() -> None:
    """Close every warehouse engine of this process (tests, and after a fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
