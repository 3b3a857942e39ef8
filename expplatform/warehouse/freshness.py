"""How fresh a warehouse experiment's statistics are, for the report to say: from
which source, computed when and in how long, whether a refresh is asked for or
running, the last failure (shown beside the last good statistics), and when its
segments were computed (at the last full recomputation, ``segments``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ..models import Experiment, WarehouseSource, WarehouseStats, iso_z
from .engines import WarehouseUnavailable, dialect_of

ENGINE_NAMES = {"postgresql": "PostgreSQL", "duckdb": "DuckDB", "clickhouse": "ClickHouse"}


@dataclass(frozen=True)
class Freshness:
    source_key: str
    source_name: str
    engine: str
    computed_at: datetime | None
    # The last full recomputation (between two, refreshes add what changed).
    full_at: datetime | None
    seconds: float | None
    error: str | None
    failed_at: datetime | None
    requested_at: datetime | None
    running_since: datetime | None
    # The segments are those of the full recomputation of segments_at (None: none
    # yet); without an attributes column mapped there are none.
    segments_at: datetime | None = None
    attributes_mapped: bool = False

    @property
    def state(self) -> str:
        """``running``, ``requested``, ``failed`` (the last refresh), ``fresh`` or ``never``."""
        if self.running_since is not None:
            return "running"
        if self.requested_at is not None:
            return "requested"
        if self.error is not None:
            return "failed"
        return "fresh" if self.computed_at is not None else "never"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source_key,
            "source_name": self.source_name,
            "engine": self.engine,
            "state": self.state,
            "computed_at": iso_z(self.computed_at),
            "full_at": iso_z(self.full_at),
            "seconds": self.seconds,
            "error": self.error,
            "failed_at": iso_z(self.failed_at),
            "requested_at": iso_z(self.requested_at),
            "running_since": iso_z(self.running_since),
            "segments_at": iso_z(self.segments_at),
            "attributes_mapped": self.attributes_mapped,
        }


def freshness(session: Session, experiment: Experiment) -> Freshness | None:
    """None for an experiment whose outcomes are the built-in events."""
    if experiment.warehouse_source_id is None:
        return None
    source = session.get(WarehouseSource, experiment.warehouse_source_id)
    assert source is not None
    stats = session.get(WarehouseStats, experiment.id)
    if stats is not None and stats.source_id != source.id:
        stats = None  # computed in the source the experiment had before
    try:
        engine = ENGINE_NAMES[dialect_of(source.url)]
    except WarehouseUnavailable:
        engine = "unknown"
    return Freshness(
        source_key=source.key,
        source_name=source.name,
        engine=engine,
        computed_at=stats.computed_at if stats else None,
        full_at=stats.full_at if stats else None,
        seconds=stats.seconds if stats else None,
        error=stats.error if stats else None,
        failed_at=stats.failed_at if stats else None,
        requested_at=stats.requested_at if stats else None,
        running_since=stats.running_since if stats else None,
        segments_at=stats.segments_at if stats else None,
        attributes_mapped="attributes" in source.exposures_columns,
    )
