"""Warehouses for the tests: DuckDB (a file per test), ClickHouse (the embedded chdb,
one data folder per test process and a database per test) and PostgreSQL (a schema
per test, when EXPPLATFORM_TEST_POSTGRES_URL is set), each with an events table and
an exposures table in the shape ``expplatform warehouse export`` writes and the
default mapping reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from expplatform.models import WarehouseSource
from expplatform.warehouse.engines import warehouse_engine
from expplatform.warehouse.mapping import DEFAULT_EVENT_COLUMNS, DEFAULT_EXPOSURE_COLUMNS
from expplatform.warehouse.refresh import table_of

from .conftest import POSTGRES_URL, postgres_schema_url

WAREHOUSES = ["duckdb", "clickhouse"] + (["postgresql"] if POSTGRES_URL else [])

EVENT_COLUMNS = (
    "event_id",
    "sequence",
    "customer_id",
    "stage",
    "kind",
    "metric",
    "value",
    "occurred_at",
    "received_at",
    "exposure_cutoff",
    "experiment",
)
EXPOSURE_COLUMNS = ("experiment", "customer_id", "variant", "exposed_at", "forced", "attributes")

_SQL_TYPES = {
    "text": "TEXT",
    "id": "BIGINT",
    "int": "INTEGER",
    "time": "TIMESTAMPTZ",
    "bool": "BOOLEAN",
}
_CLICKHOUSE_TYPES = {
    "text": "String",
    "id": "Int64",
    "int": "Nullable(Int32)",
    "time": "DateTime64(6, 'UTC')",
    "bool": "Bool",
}
_KINDS = {
    "event_id": "text",
    "sequence": "id",
    "customer_id": "text",
    "stage": "text",
    "kind": "text",
    "metric": "text",
    "value": "int",
    "occurred_at": "time",
    "received_at": "time",
    "exposure_cutoff": "time",
    "experiment": "text",
    "variant": "text",
    "exposed_at": "time",
    "forced": "bool",
    "attributes": "text",
}


def warehouse_source(url: str, events_table: str, exposures_table: str, **fields: Any) -> WarehouseSource:
    """A source (not stored) on the two tables, mapped by role name, the platform
    exporting its exposures; ``fields`` override (key, name, clock skew, a mapping...)."""
    defaults: dict[str, Any] = {
        "key": "lake",
        "name": "Lake",
        "clock_skew_seconds": 5.0,
        "export_exposures": True,
        "events_columns": DEFAULT_EVENT_COLUMNS,
        "exposures_columns": DEFAULT_EXPOSURE_COLUMNS,
    }
    return WarehouseSource(
        url=url, events_table=events_table, exposures_table=exposures_table, **{**defaults, **fields}
    )


@dataclass
class Warehouse:
    """A warehouse with empty ``events`` and ``exposures`` tables."""

    engine_name: str
    url: str
    events_table: str
    exposures_table: str

    def source(self, **fields: Any) -> WarehouseSource:
        return warehouse_source(self.url, self.events_table, self.exposures_table, **fields)

    @property
    def engine(self) -> Engine:
        return warehouse_engine(self.url)

    def add_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows by role name; NULL text is '' on ClickHouse (its columns are not
        nullable, as warehouses' tables often are not)."""
        if self.engine_name == "clickhouse":
            rows = [{k: ("" if v is None and k in ("metric", "experiment") else v) for k, v in r.items()} for r in rows]
        self._insert(self.events_table, EVENT_COLUMNS, rows)

    def _insert(self, name: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            target = table_of(name, columns)
            with self.engine.begin() as connection:
                connection.execute(target.insert(), [dict(r) for r in rows])


def _create(
    engine: Engine, engine_name: str, prefix: str, *, events_columns: Sequence[str], exposure_columns: Sequence[str]
) -> tuple[str, str]:
    types = _CLICKHOUSE_TYPES if engine_name == "clickhouse" else _SQL_TYPES
    tables = {"events": events_columns, "exposures": exposure_columns}
    with engine.begin() as connection:
        for name, columns in tables.items():
            body = ", ".join(f"{c} {types[_KINDS[c]]}" for c in columns)
            tail = ""
            if engine_name == "clickhouse":
                order = "event_id" if name == "events" else "(experiment, customer_id)"
                tail = f" ENGINE = MergeTree ORDER BY {order}"
            connection.execute(text(f"CREATE TABLE {prefix}{name} ({body}){tail}"))
    return f"{prefix}events", f"{prefix}exposures"


@pytest.fixture(scope="session")
def chdb_folder(tmp_path_factory) -> Path:
    """The embedded ClickHouse's data folder of this test process (chdb opens one)."""
    return tmp_path_factory.getbasetemp() / "chdb"


def make_warehouse(
    engine_name: str,
    tmp_path: Path,
    chdb_folder: Path,
    *,
    events_columns: Sequence[str] = EVENT_COLUMNS,
    exposure_columns: Sequence[str] = EXPOSURE_COLUMNS,
) -> Iterator[Warehouse]:
    tag = f"w_{uuid.uuid4().hex[:12]}"
    columns = {"events_columns": events_columns, "exposure_columns": exposure_columns}
    if engine_name == "duckdb":
        url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
        yield Warehouse(engine_name, url, *_create(warehouse_engine(url), engine_name, "", **columns))
        warehouse_engine(url).dispose()
    elif engine_name == "clickhouse":
        url = f"chdb://{chdb_folder}"
        engine = warehouse_engine(url)
        with engine.begin() as connection:
            connection.execute(text(f"CREATE DATABASE {tag}"))
        yield Warehouse(engine_name, url, *_create(engine, engine_name, f"{tag}.", **columns))
        with engine.begin() as connection:
            connection.execute(text(f"DROP DATABASE {tag}"))
    else:
        url = postgres_schema_url("public")
        engine = warehouse_engine(url)
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{tag}"'))
        yield Warehouse(engine_name, url, *_create(engine, engine_name, f"{tag}.", **columns))
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{tag}" CASCADE'))
