"""The reference test of warehouse-native statistics: events replayed through ingest
give the built-in counters; the same events as a warehouse stores them (every copy
received, resent ones and ones resent under another customer included, with their
receive times and cutoffs) give, computed inside DuckDB, ClickHouse (chdb) and
PostgreSQL, the same cells to the count: exposed customers per variant and day,
converters and latest ratings per stage, variant, value and day. Also with the
process in a zone other than UTC, and with the clock-skew setting changed half way
(each event keeps the cutoff it got at ingest)."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from datetime import UTC, timedelta

import pytest
from sqlalchemy import func, select

from expplatform.ingest import rebuild_outcomes, record_events
from expplatform.models import Event, Experiment, Exposure, Variant, WarehouseStats, utcnow
from expplatform.warehouse.refresh import refresh
from tests.events_support import at, daily_counts, expose, make_experiment, random_workload
from tests.warehouse_support import WAREHOUSES, chdb_folder, make_warehouse  # noqa: F401 (fixture)


@pytest.fixture(params=["UTC", "Asia/Kolkata"])
def zone(request):
    """The process's time zone (Kolkata: +5:30, so a shifted time changes its day)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture(params=WAREHOUSES)
def warehouse(request, tmp_path, chdb_folder):  # noqa: F811
    yield from make_warehouse(request.param, tmp_path, chdb_folder)


def _seed(db, rng: random.Random, customers: list[str]) -> dict[str, int]:
    with db.write() as session:
        checkout = make_experiment(session)
        onboarding = make_experiment(
            session, "onboarding", stages=("awareness", "purchase"), stopped_at=at(2000), status="stopped"
        )
        for i, customer in enumerate(customers):
            if i % 5 != 4:
                variant = rng.choice(["control", "treatment"])
                expose(session, checkout, customer, variant, exposed_at=at(rng.choice([0, 0, 20])), forced=i % 13 == 0)
            if i % 3 == 0:
                expose(session, onboarding, customer, rng.choice(["control", "treatment"]))
        return {"checkout": checkout.id, "onboarding": onboarding.id}


def _replay(db, settings, rng: random.Random, customers: list[str], batches, seen: set[str], first: int) -> list[dict]:
    """Ingest the batches (the skew setting changes at batch 6) and return the copies a
    warehouse would hold beyond the stored ones: every later copy of an event id,
    some under another customer, received when their batch was."""
    copies: list[dict] = []
    for number, batch in enumerate(batches, start=first):
        if number >= 4:  # a few events resent under another customer (the same event id)
            for event in rng.sample(batch, 3):
                if event["event_id"] in seen:
                    batch.append({**event, "customer_id": rng.choice(customers)})
        skewed = dataclasses.replace(settings, clock_skew_seconds=5.0 if number < 6 else 30.0)
        result = record_events(db, list({e["event_id"]: e for e in batch}.values()), skewed)
        assert result.rejected == ()
        received = utcnow()
        copies += [{"event": e, "received_at": received} for e in batch if e["event_id"] in seen]
        seen.update(e["event_id"] for e in batch)
    return copies


def _warehouse_events(db, copies: list[dict], after_id: int = 0) -> list[dict]:
    """The stored events (first copies, as ingest stored them; those stored after
    ``after_id``) and the later copies."""
    with db.sessionmaker() as session:
        stored = session.execute(
            select(
                Event.id,
                Event.event_id,
                Event.customer_id,
                Event.stage,
                Event.type,
                Event.metric,
                Event.value,
                Event.occurred_at,
                Event.received_at,
                Event.exposure_cutoff,
                Event.experiment_key,
            )
        ).all()
    by_id = {row.event_id: row for row in stored}
    stored = [row for row in stored if row.id > after_id]
    rows = [
        {
            "event_id": r.event_id,
            "sequence": r.id,
            "customer_id": r.customer_id,
            "stage": r.stage,
            # Warehouses spell a rating either way.
            "kind": "rating" if r.type == "satisfaction" and r.id % 2 else r.type,
            "metric": r.metric,
            "value": r.value,
            "occurred_at": r.occurred_at,
            "received_at": r.received_at,
            "exposure_cutoff": r.exposure_cutoff,
            "experiment": r.experiment_key,
        }
        for r in stored
    ]
    for number, copy in enumerate(copies):
        first = by_id[copy["event"]["event_id"]]
        rows.append(
            {
                "event_id": first.event_id,
                "sequence": 1_000_000 + number,
                "customer_id": copy["event"]["customer_id"],
                "stage": first.stage,
                "kind": first.type,
                "metric": first.metric,
                "value": first.value,
                "occurred_at": first.occurred_at,
                "received_at": copy["received_at"],
                "exposure_cutoff": min(first.occurred_at + timedelta(seconds=30), copy["received_at"]),
                "experiment": first.experiment_key,
            }
        )
    return rows


def _builtin(db, experiment_id: int) -> dict[tuple, int]:
    """The built-in counters as {(kind, stage, variant, value, day): customers}."""
    with db.sessionmaker() as session:
        cells = {
            (kind, stage, variant, value, str(day)): n
            for (stage, variant, day, kind, value), n in daily_counts(session, experiment_id).items()
        }
        exposed = session.execute(
            select(Variant.key, Exposure.exposed_at)
            .join(Variant, Variant.id == Exposure.variant_id)
            .where(Exposure.experiment_id == experiment_id, Exposure.forced.is_(False))
        ).all()
    for variant, exposed_at in exposed:
        key = ("exposed", "", variant, 0, exposed_at.astimezone(UTC).date().isoformat())
        cells[key] = cells.get(key, 0) + 1
    return cells


def _source(db, warehouse, ids: dict[str, int]) -> None:
    with db.write() as session:
        source = warehouse.source(clock_skew_seconds=30.0)
        session.add(source)
        session.flush()
        for experiment_id in ids.values():
            session.get(Experiment, experiment_id).warehouse_source_id = source.id


def _check(db, ids: dict[str, int], mode: str) -> None:
    """Refresh each experiment (expecting ``mode``) and compare with the built-in counters."""
    for key, experiment_id in ids.items():
        outcome = refresh(db, key)
        assert outcome.error is None, outcome.error
        assert outcome.mode == mode, key
        expected = _builtin(db, experiment_id)
        with db.sessionmaker() as session:
            stored = session.get(WarehouseStats, experiment_id)
            got = {(k, s, v, val, day): n for k, s, v, val, day, n in stored.cells}
        assert {"exposed", "converted", "rating"} <= {cell[0] for cell in expected}
        assert got == expected, (key, mode)


def _last_event_id(db) -> int:
    with db.sessionmaker() as session:
        return session.scalar(select(func.max(Event.id))) or 0


def _stored_workload(
    app, db, warehouse, *, seed: int, customers: int, extra: str = "ghost", batches: int = 8, in_full: int | None = None
) -> dict[str, int]:
    """A workload (``customers`` exposed, and ``extra`` never) replayed through ingest
    and stored in the warehouse: its first ``in_full`` batches (all: None) computed
    in full and checked; the rest then replayed and stored, for the caller to check."""
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(customers)]
    ids = _seed(db, rng, names)
    settings = app.extensions["settings"]
    workload = random_workload(rng, [*names, extra], batches=batches, per_batch=40)
    split = batches if in_full is None else in_full
    seen: set[str] = set()
    copies = _replay(db, settings, rng, names, workload[:split], seen, 0)
    warehouse.add_events(_warehouse_events(db, copies))
    _source(db, warehouse, ids)
    _check(db, ids, "full")
    if split < batches:
        stored_before = _last_event_id(db)
        copies = _replay(db, settings, rng, names, workload[split:], seen, split)
        assert copies
        warehouse.add_events(_warehouse_events(db, copies, after_id=stored_before))
    return ids


def test_the_warehouse_statistics_equal_the_builtin_counters(app, db, warehouse, zone):
    """In full after half the events; then, as the rest arrive, by increments."""
    rng = random.Random(20261203)
    customers = [f"k{i}" for i in range(48)]
    ids = _seed(db, rng, customers)
    settings = app.extensions["settings"]
    batches = random_workload(rng, [*customers, "ghost1", "ghost2"], batches=12, per_batch=40)
    seen: set[str] = set()
    copies = _replay(db, settings, rng, customers, batches[:6], seen, 0)
    warehouse.add_events(_warehouse_events(db, copies))
    _source(db, warehouse, ids)
    _check(db, ids, "full")
    for first in (6, 9):  # two increments, copies of earlier events and skew changes among them
        stored_before = _last_event_id(db)
        copies = _replay(db, settings, rng, customers, batches[first : first + 3], seen, first)
        assert copies
        warehouse.add_events(_warehouse_events(db, copies, after_id=stored_before))
        _check(db, ids, "incremental")


def _small_buckets(app, monkeypatch) -> None:
    """About a hundred stored copies per bucket of customers, and per part of the
    repeated ids' search, under the default memory limit."""
    from expplatform.warehouse import refresh as refresh_module

    per_mb = 100 / app.extensions["settings"].warehouse_memory_limit_mb
    monkeypatch.setattr(refresh_module, "ROWS_PER_BUCKET_PER_MB", per_mb)
    monkeypatch.setattr(refresh_module, "IDS_PER_PART_PER_MB", per_mb)


def test_statistics_computed_bucket_by_bucket_equal_the_builtin_counters(app, db, warehouse, monkeypatch):
    """Where the engine computes the statistics one bucket of customers at a time
    (ClickHouse), many small buckets add up to the same counts: each customer's
    events and exposure in one bucket only, a repeated event's first copy in its
    customer's bucket (a later copy under a customer of another bucket is not
    counted there)."""
    from expplatform.warehouse import query as query_module
    from expplatform.warehouse import refresh as refresh_module

    buckets: list[query_module.Bucket] = []
    parts: list[query_module.Bucket] = []
    real_bucket_events, real_repeated_ids = query_module.bucket_events, query_module.repeated_ids

    def bucket_events(dialect, copies, repeated, firsts, bucket):
        buckets.append(bucket)
        return real_bucket_events(dialect, copies, repeated, firsts, bucket)

    def repeated_ids(dialect, copies, *, part=None):
        parts.append(part)
        return real_repeated_ids(dialect, copies, part=part)

    monkeypatch.setattr(refresh_module.query, "bucket_events", bucket_events)
    monkeypatch.setattr(refresh_module.query, "repeated_ids", repeated_ids)
    _small_buckets(app, monkeypatch)
    _stored_workload(app, db, warehouse, seed=20261205, customers=40)
    if warehouse.engine_name == "clickhouse":
        assert buckets and min(bucket.of for bucket in buckets) >= 3
        assert parts and min(part.of for part in parts) >= 3
    else:
        assert not buckets and not parts


def test_exposures_that_arrive_dated_before_the_last_refresh_make_it_recompute_in_full(app, db, warehouse):
    """A backfilled exposure could capture events received before the last refresh,
    which no increment looks at: the refresh notices and recomputes in full."""
    ids = _stored_workload(app, db, warehouse, seed=7, customers=30, extra="late", batches=4)
    with db.write() as session:  # "late" was never exposed; now an exposure dated at the start appears
        expose(session, session.get(Experiment, ids["checkout"]), "late", "treatment", exposed_at=at(0))
    with db.write() as session:
        rebuild_outcomes(session, session.get(Experiment, ids["checkout"]))  # the built-in counters, recounted
    outcome = refresh(db, "checkout")
    assert outcome.mode == "full" and outcome.error is None
    expected = _builtin(db, ids["checkout"])
    with db.sessionmaker() as session:
        got = {(k, s, v, val, day): n for k, s, v, val, day, n in session.get(WarehouseStats, ids["checkout"]).cells}
    assert got == expected
    assert any(variant == "treatment" and kind != "exposed" for kind, _s, variant, _v, _d in got)


def test_increments_are_exact_where_the_warehouse_refuses_temporary_tables(app, db, warehouse, monkeypatch, caplog):
    """A read-only warehouse user may not create the temporary tables a refresh
    holds intermediate results in (an increment's customers, the repeated events):
    the refresh computes them again where needed, and adds up the same."""
    from sqlalchemy import text

    from expplatform.warehouse import refresh as refresh_module

    refused = []

    def refuse(dialect, name, statement):
        refused.append(name)
        return text(f"CREATE TEMPORARY TABLE {name} AS SELECT FROM WHERE")  # refused like a missing privilege

    monkeypatch.setattr(refresh_module.dialects, "TemporaryTable", refuse)
    _small_buckets(app, monkeypatch)  # ClickHouse's buckets then each compute the repeated events again
    ids = _stored_workload(app, db, warehouse, seed=20261204, customers=30, in_full=4)
    with caplog.at_level("INFO", logger="expplatform.warehouse.refresh"):
        _check(db, ids, "incremental")
    assert refused and "creating a temporary table failed" in caplog.text


def test_statistics_stay_exact_when_id_hashes_collide(app, db, warehouse, monkeypatch):
    """The column engines tell ids apart by a 64-bit hash where that is cheaper
    (repeated events, buckets of customers, the sets an increment matches). A hash
    shared by two ids must only cost time: with a hash of three values, nearly every
    id shares one, and the statistics, full and incremental, stay the counters'."""
    from sqlalchemy import literal_column

    from expplatform.warehouse import dialects

    hashed = []
    real_id_hash = dialects.id_hash

    def colliding(dialect, text):
        hashed.append(dialect)
        return real_id_hash(dialect, text) % literal_column("3")

    monkeypatch.setattr(dialects, "id_hash", colliding)
    _small_buckets(app, monkeypatch)
    ids = _stored_workload(app, db, warehouse, seed=20261206, customers=40, in_full=4)
    _check(db, ids, "incremental")
    assert bool(hashed) == (warehouse.engine_name != "postgresql")
