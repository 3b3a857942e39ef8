"""Assignment test helpers: an experiment written straight into the tables, and the
exposures read back."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, select

from expplatform import journeys
from expplatform.assignment import ExposureStore
from expplatform.bucketing import Split, place
from expplatform.models import Experiment, Exposure, Variant
from expplatform.versioning import bump_version

URL = "/api/v1/assign"


def seed(
    db,
    key: str,
    *,
    variants: tuple[tuple[str, float], ...] = (("control", 0.5), ("treatment", 0.5)),
    status: str = "running",
    stage: str = "purchase",
    traffic: float = 1.0,
    targeting: list[dict[str, Any]] | None = None,
    layer: str | None = None,
    layer_ranges: list[list[int]] | None = None,
    forced: dict[str, str] | None = None,
) -> Split:
    """An experiment straight into the tables (bumping the version as the experiment
    service does); returns its split, to predict placements."""
    with db.write() as session:
        experiment = Experiment(
            key=key,
            name=key,
            stages=[stage],
            target_stage=stage,
            salt=key,
            status=status,
            traffic=traffic,
            targeting=targeting or [],
            layer=layer,
            layer_ranges=layer_ranges,
            layer_share=None if layer_ranges is None else sum(e - s for s, e in layer_ranges) / 10_000,
            forced_variants=forced or {},
            **journeys.implicit_fields(session, [stage]),
        )
        experiment.variants = [
            Variant(key=name, weight=weight, position=i, is_control=i == 0) for i, (name, weight) in enumerate(variants)
        ]
        session.add(experiment)
        bump_version(session)
    return Split.of(key, [w for _, w in variants], traffic, layer, layer_ranges or ())


def customer_where(split: Split, wanted: Callable[[int], bool], prefix: str = "c") -> str:
    return next(cid for i in itertools.count() if wanted(place(split, cid := f"{prefix}{i}")))


def exposures(db, customer_id: str | None = None) -> list[Exposure]:
    with db.sessionmaker() as session:
        query = select(Exposure).order_by(Exposure.id)
        if customer_id is not None:
            query = query.where(Exposure.customer_id == customer_id)
        return list(session.scalars(query))


def variant_key(db, variant_id: int) -> str:
    with db.sessionmaker() as session:
        return session.get(Variant, variant_id).key


@contextmanager
def statements(db) -> Iterator[list[str]]:
    """Every SQL statement sent: through SQLAlchemy, and through the exposure store's
    driver connections (the only SQL that bypasses SQLAlchemy)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        seen.append(statement)

    original = ExposureStore._run

    def run(self, sql, params, **kwargs):
        seen.append(sql)
        return original(self, sql, params, **kwargs)

    event.listen(db.engine, "before_cursor_execute", record)
    ExposureStore._run = run  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        ExposureStore._run = original  # type: ignore[method-assign]
        event.remove(db.engine, "before_cursor_execute", record)
