"""A warehouse experiment's report: the fit worker computes its statistics in the
warehouse and stores them; the report (page, JSON, CSV) shows them with how fresh
they are; a refresh can be asked for and a running one cancelled; a failing
warehouse gives a message on the report, never a 500, and the earlier statistics
stay."""

from __future__ import annotations

import csv as csv_module
import io
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from expplatform.aggregation import experiment_stats
from expplatform.ingest.rebuild import experiment_rules
from expplatform.jobs import JobRunner
from expplatform.models import Experiment, WarehouseSource, WarehouseStats, utcnow
from expplatform.warehouse.refresh import RefreshCancelled, claim_next, compute_cells, refresh, request_refresh
from tests.conftest import POSTGRES_URL, postgres_schema_url
from tests.events_support import T0, at, expose, make_experiment
from tests.warehouse_support import chdb_folder, make_warehouse, warehouse_source  # noqa: F401 (fixture)


@pytest.fixture
def warehouse(tmp_path, chdb_folder):  # noqa: F811
    yield from make_warehouse("duckdb", tmp_path, chdb_folder)


def _event(n: int, customer: str, stage: str, kind: str, seconds: float, value: int | None = None) -> dict:
    moment = at(seconds)
    return {
        "event_id": f"w{n}",
        "sequence": n,
        "customer_id": customer,
        "stage": stage,
        "kind": kind,
        "metric": None,
        "value": value,
        "occurred_at": moment,
        "received_at": moment,
        "exposure_cutoff": moment,
        "experiment": None,
    }


@pytest.fixture
def lake(db, warehouse):
    """checkout, measured in a DuckDB warehouse: 40 customers exposed (exported by
    the platform), 10 control and 15 treatment converters at purchase, and ratings."""
    with db.write() as session:
        source = warehouse.source()
        session.add(source)
        session.flush()
        experiment = make_experiment(session, "checkout", target_stage="purchase")
        experiment.warehouse_source_id = source.id
        for i in range(40):
            expose(session, experiment, f"c{i}", "control" if i % 2 else "treatment")
    events = [_event(i, f"c{2 * i + 1}", "purchase", "conversion", 60) for i in range(10)]
    events += [_event(100 + i, f"c{2 * i}", "purchase", "conversion", 60) for i in range(15)]
    events += [_event(200 + i, f"c{i}", "purchase", "satisfaction", 90, value=1 + i % 5) for i in range(20)]
    warehouse.add_events(events)
    return warehouse


def _cells(db, stage: str):
    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).filter_by(key="checkout")).one()
        return experiment_stats(session, experiment).cells[stage]


def test_the_worker_computes_the_statistics_and_the_report_shows_them_dated(app, db, lake, admin_api, client, login):
    report = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    assert report["warehouse"]["state"] == "never" and report["warehouse"]["engine"] == "DuckDB"
    assert report["exposed"] == {"control": 0, "treatment": 0}

    assert JobRunner(db).run_pending() == 1  # the worker's refresh of a never-computed experiment

    report = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    assert report["warehouse"]["state"] == "fresh" and report["warehouse"]["error"] is None
    assert report["exposed"] == {"control": 20, "treatment": 20}
    purchase = _cells(db, "purchase")
    assert purchase["control"].converted == 10 and purchase["treatment"].converted == 15
    assert sum(sum(cell.ratings) for cell in purchase.values()) == 20
    # A fresh experiment is not refreshed again until its statistics are stale.
    assert JobRunner(db).run_pending() == 0

    login("editor")
    page = client.get("/experiments/checkout/report")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="warehouse"' in html and "Computed in the warehouse Lake" in html and "Refresh now" in html
    csv = admin_api.get("/api/v1/experiments/checkout/report.csv").get_data(as_text=True)
    rows = list(csv_module.DictReader(io.StringIO(csv)))
    row = next(r for r in rows if (r["stage"], r["variant"], r["metric"]) == ("purchase", "control", "conversion"))
    assert (row["exposed"], row["count"]) == ("20", "10")


def test_a_refresh_asked_for_is_run_by_the_worker_and_picks_up_new_events(app, db, lake, admin_api):
    refresh(db, "checkout")
    lake.add_events([_event(300 + i, f"c{2 * i + 1}", "retention", "conversion", 500) for i in range(4)])
    asked = admin_api.post("/api/v1/experiments/checkout/warehouse/refresh")
    assert asked.status_code == 202 and asked.get_json()["state"] == "requested"
    assert JobRunner(db).run_pending() == 1
    report = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    assert _cells(db, "retention")["control"].converted == 4
    assert report["warehouse"]["state"] == "fresh"


def test_a_stale_refresh_by_the_worker_adds_only_what_arrived_since(app, db, lake):
    assert refresh(db, "checkout").mode == "full"
    arrived = [_event(400 + i, f"c{2 * i}", "retention", "conversion", 500) for i in range(3)]
    for event in arrived:
        event["received_at"] = event["exposure_cutoff"] = utcnow()  # received now, as a live event is
    lake.add_events(arrived)
    with db.write() as session:
        experiment_id = session.scalars(select(Experiment.id).filter_by(key="checkout")).one()
        stats = session.get(WarehouseStats, experiment_id)
        full_at = stats.full_at
        stats.computed_at = stats.computed_at - timedelta(hours=1)  # older than warehouse_refresh_seconds
    assert JobRunner(db).run_pending() == 1
    assert _cells(db, "retention")["treatment"].converted == 3
    with db.sessionmaker() as session:
        stats = session.get(WarehouseStats, experiment_id)
        assert stats.full_at == full_at and stats.computed_at > full_at  # added to, not recomputed


def test_built_in_experiments_have_no_warehouse_actions(app, db, admin_api):
    with db.write() as session:
        make_experiment(session, "plain")
    response = admin_api.post("/api/v1/experiments/plain/warehouse/refresh")
    assert response.status_code == 409 and response.get_json()["error"] == "no_warehouse_source"
    assert admin_api.get("/api/v1/experiments/plain/report").get_json()["warehouse"] is None
    cancel = admin_api.post("/api/v1/experiments/plain/warehouse/cancel")
    assert cancel.status_code == 409


def test_a_failing_warehouse_is_a_message_on_the_report_and_the_earlier_statistics_stay(
    app, db, lake, admin_api, client, login
):
    assert refresh(db, "checkout").error is None
    with lake.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {lake.events_table}"))
    outcome = refresh(db, "checkout")
    assert outcome.error is not None and "events" in outcome.error
    report = admin_api.get("/api/v1/experiments/checkout/report")
    assert report.status_code == 200
    body = report.get_json()
    assert body["warehouse"]["state"] == "failed" and body["warehouse"]["computed_at"] is not None
    assert body["exposed"] == {"control": 20, "treatment": 20}  # the earlier statistics
    login("viewer")
    page = client.get("/experiments/checkout/report")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "The last refresh failed" in html and "The counts shown are the earlier ones" in html
    assert "Refresh now" not in html  # a viewer cannot ask for one


def test_a_segment_its_warehouse_exposures_do_not_carry_is_refused_with_a_reason(app, db, lake, admin_api):
    """The lake's exposures have no attributes: a breakdown by one is a 400 that
    names what the warehouse holds (``test_warehouse_segments``: the segments it
    computes), before and after its first full recomputation."""
    before = admin_api.get("/api/v1/experiments/checkout/report?segment=platform")
    assert before.status_code == 400 and "ask for a refresh" in before.get_json()["fields"]["segment"]
    refresh(db, "checkout")
    response = admin_api.get("/api/v1/experiments/checkout/report?segment=platform")
    assert response.status_code == 400
    assert "not among the attributes" in response.get_json()["fields"]["segment"]
    assert response.get_json()["fields"]["segment"].endswith("(those: none)")


def test_the_editor_asks_for_a_refresh_on_the_page(app, db, lake, client, login):
    login("editor")
    response = client.post("/experiments/checkout/report/warehouse-refresh")
    assert response.status_code == 302 and response.headers["Location"].endswith("#warehouse")
    with db.sessionmaker() as session:
        experiment_id = session.scalars(select(Experiment.id).filter_by(key="checkout")).one()
        assert session.get(WarehouseStats, experiment_id).requested_at is not None
    page = client.get("/experiments/checkout/report").get_data(as_text=True)
    assert 'http-equiv="refresh"' in page and "A refresh is asked for" in page


def _slow_duckdb_source(tmp_path) -> WarehouseSource:
    """A DuckDB events view of ten billion rows: the statistics would take hours."""
    from expplatform.warehouse.engines import warehouse_engine

    url = f"duckdb:///{tmp_path / 'slow.duckdb'}"
    with warehouse_engine(url).begin() as connection:
        connection.execute(
            text(
                "CREATE VIEW events AS SELECT 'e' || i AS event_id, i AS sequence, 'c' || (i % 1000) AS customer_id,"
                " 'purchase' AS stage, 'conversion' AS kind, NULL::VARCHAR AS metric, NULL::INTEGER AS value,"
                " TIMESTAMPTZ '2024-05-01 12:00:00+00' + to_microseconds(i) AS occurred_at,"
                " TIMESTAMPTZ '2024-05-01 12:00:00+00' + to_microseconds(i) AS received_at,"
                " TIMESTAMPTZ '2024-05-01 12:00:00+00' + to_microseconds(i) AS exposure_cutoff,"
                " NULL::VARCHAR AS experiment FROM range(10000000000) t(i)"
            )
        )
        connection.execute(
            text(
                "CREATE TABLE exposures AS SELECT 'checkout' AS experiment, 'c' || i AS customer_id,"
                " CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END AS variant,"
                " TIMESTAMPTZ '2024-05-01 11:00:00+00' AS exposed_at, false AS forced FROM range(1000) t(i)"
            )
        )
    return warehouse_source(url, "events", "exposures", key="slow", name="Slow")


def _postgres_slow_source() -> WarehouseSource:
    """A PostgreSQL view whose every read sleeps 60 s."""
    url = postgres_schema_url("public")
    from expplatform.warehouse.engines import warehouse_engine

    with warehouse_engine(url).begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS slow_lake CASCADE"))
        connection.execute(text("CREATE SCHEMA slow_lake"))
        connection.execute(
            text(
                "CREATE VIEW slow_lake.events AS SELECT 'e1'::text AS event_id, 1::bigint AS sequence,"
                " 'c1'::text AS customer_id, 'purchase'::text AS stage, 'conversion'::text AS kind,"
                " NULL::text AS metric, NULL::int AS value, now() AS occurred_at, now() AS received_at,"
                " now() AS exposure_cutoff, NULL::text AS experiment FROM pg_sleep(60)"
            )
        )
        connection.execute(
            text(
                "CREATE TABLE slow_lake.exposures (experiment text, customer_id text, variant text,"
                " exposed_at timestamptz, forced boolean)"
            )
        )
        # A customer exposed: with none, the planner may never read the events at all.
        connection.execute(
            text(
                "INSERT INTO slow_lake.exposures VALUES ('checkout', 'c1', 'control', now() - interval '1 day', false)"
            )
        )
    return warehouse_source(url, "slow_lake.events", "slow_lake.exposures", key="slow", name="Slow")


@pytest.mark.parametrize("engine", ["duckdb"] + (["postgresql"] if POSTGRES_URL else []))
def test_a_running_warehouse_query_can_be_cancelled(db, tmp_path, engine):
    source = _slow_duckdb_source(tmp_path) if engine == "duckdb" else _postgres_slow_source()
    with db.write() as session:
        experiment = make_experiment(session, "checkout", started_at=T0)
        rules = experiment_rules(session, experiment)
    cancel = threading.Event()
    cancel.set()  # asked for before the query even starts: the watcher interrupts it at once
    began = time.perf_counter()
    with pytest.raises(RefreshCancelled):
        compute_cells(source, rules, None, cancel=cancel)
    assert time.perf_counter() - began < 20  # the query alone takes 60 s (PostgreSQL) or hours (DuckDB)


def test_workers_claiming_at_once_refresh_an_experiment_once(app, db, lake):
    """Fit workers on several machines look for due refreshes at the same moment:
    one takes the experiment, the others find nothing to do."""
    refresh(db, "checkout")
    with db.write() as session:
        experiment = session.scalars(select(Experiment).filter_by(key="checkout")).one()
        request_refresh(session, experiment)
    workers = 4
    barrier = threading.Barrier(workers)
    claims: list[object] = []

    def claim() -> None:
        barrier.wait(timeout=30)
        claims.append(claim_next(db, stale_after=900))

    threads = [threading.Thread(target=claim) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claims) == workers and claims.count(None) == workers - 1 and ("checkout", True) in claims


def test_the_memory_limit_setting_bounds_each_warehouse_session(tmp_path, chdb_folder):  # noqa: F811
    """``warehouse_memory_limit_mb`` becomes the engines' own bounds: DuckDB's
    memory_limit; ClickHouse's query limit, with aggregations, sorts and the join
    spilling to disk at an eighth of it, so a statement holding several at once
    stays under the limit; over one bucket of customers, an aggregation spills at
    half of it, and the session is as before afterwards (the pool keeps it)."""
    from expplatform.warehouse.engines import bucket_settings, warehouse_engine

    with warehouse_engine(f"duckdb:///{tmp_path / 'w.duckdb'}", memory_limit_mb=300).connect() as connection:
        assert connection.execute(text("SELECT current_setting('memory_limit')")).scalar() == "286.1 MiB"  # 300 MB
    limit = 300 * 2**20
    with warehouse_engine(f"chdb://{chdb_folder}", memory_limit_mb=300).connect() as connection:
        settings = {
            name: connection.execute(text(f"SELECT getSetting('{name}')")).scalar()
            for name in (
                "max_memory_usage",
                "max_bytes_before_external_group_by",
                "max_bytes_before_external_sort",
                "max_bytes_in_join",
                "join_algorithm",
            )
        }
        group_by = "SELECT getSetting('max_bytes_before_external_group_by')"
        with bucket_settings(connection, 300):
            assert connection.execute(text(group_by)).scalar() == limit // 2
        assert connection.execute(text(group_by)).scalar() == limit // 8
    assert settings == {
        "max_memory_usage": limit,
        "max_bytes_before_external_group_by": limit // 8,
        "max_bytes_before_external_sort": limit // 8,
        "max_bytes_in_join": limit // 8,
        "join_algorithm": "grace_hash",
    }
