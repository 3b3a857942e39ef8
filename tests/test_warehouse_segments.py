"""Segments of a warehouse experiment: computed inside DuckDB, ClickHouse (chdb) and
PostgreSQL at a full recomputation, from the attributes the platform exports with
its exposures, they equal the built-in breakdown (``aggregation.segment_stats``)
for the same events to the count: strings, booleans ('true'/'false'), numbers, an
empty string, a JSON null and a missing attribute (None), forced customers left
out. The report, JSON and CSV break a warehouse experiment down by them and say when
they were computed; a source without an attributes column still works and says how
to get segments."""

from __future__ import annotations

import csv as csv_module
import io
import json
import random
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select, text

from analysis.types import ExperimentStats
from expplatform.aggregation import MAX_SEGMENTS, experiment_stats, segment_stats
from expplatform.errors import MalformedRequest
from expplatform.models import Experiment, Exposure, WarehouseStats
from expplatform.warehouse import dialects
from expplatform.warehouse.engines import dialect_of
from expplatform.warehouse.mapping import DEFAULT_EXPOSURE_COLUMNS
from expplatform.warehouse.refresh import export_exposures, refresh, table_of
from expplatform.warehouse.segments import MAX_ATTRIBUTES, commonest_attributes
from tests.events_support import at, expose, make_experiment, random_workload
from tests.openapi_check import checked
from tests.test_warehouse_reference import _replay, _warehouse_events, zone  # noqa: F401 (fixture)
from tests.warehouse_support import (  # noqa: F401 (fixture)
    EXPOSURE_COLUMNS,
    WAREHOUSES,
    chdb_folder,
    make_warehouse,
)

ATTRIBUTES = ("cohort", "plan", "platform", "vip")


@pytest.fixture(params=WAREHOUSES)
def warehouse(request, tmp_path, chdb_folder):  # noqa: F811
    yield from make_warehouse(request.param, tmp_path, chdb_folder)


def _attributes(i: int, rng: random.Random) -> dict[str, Any]:
    """A string (missing for a quarter), a boolean, a number (for a fifth), and a
    plan that is a string, an empty string, a JSON null or missing."""
    attributes: dict[str, Any] = {"vip": i % 3 == 0}
    if i % 4:
        attributes["platform"] = rng.choice(["ios", "android", "web"])
    if i % 5 == 0:
        attributes["cohort"] = 1 + i % 2
    plan = i % 4
    if plan < 3:
        attributes["plan"] = ("pro", "", None)[plan]
    return attributes


def _seed(db, rng: random.Random, customers: list[str]) -> dict[str, int]:
    """checkout (with forced customers and two exposure times) and a stopped
    onboarding, each customer's exposure carrying attributes."""
    with db.write() as session:
        checkout = make_experiment(session)
        onboarding = make_experiment(
            session, "onboarding", stages=("awareness", "purchase"), stopped_at=at(2000), status="stopped"
        )
        for i, customer in enumerate(customers):
            if i % 5 != 4:
                expose(
                    session,
                    checkout,
                    customer,
                    rng.choice(["control", "treatment"]),
                    exposed_at=at(rng.choice([0, 0, 20])),
                    forced=i % 13 == 0,
                    attributes=_attributes(i, rng),
                )
            if i % 3 == 0:
                expose(
                    session, onboarding, customer, rng.choice(["control", "treatment"]), attributes=_attributes(i, rng)
                )
        return {"checkout": checkout.id, "onboarding": onboarding.id}


def _segments(db, experiment_id: int) -> dict[str, dict[str | None, ExperimentStats]]:
    with db.sessionmaker() as session:
        experiment = session.get(Experiment, experiment_id)
        return {name: segment_stats(session, experiment, name) for name in ATTRIBUTES}


def _summed(segments: dict[str | None, ExperimentStats]) -> dict[tuple[str, str], tuple[int, int, tuple[int, ...]]]:
    """Per (stage, variant): exposed, converted and the rating histogram, over every segment."""
    totals: dict[tuple[str, str], tuple[int, int, tuple[int, ...]]] = {}
    for stats in segments.values():
        for stage, by_variant in stats.cells.items():
            for variant, cell in by_variant.items():
                exposed, converted, ratings = totals.get((stage, variant), (0, 0, (0,) * len(cell.ratings)))
                totals[stage, variant] = (
                    exposed + cell.exposed,
                    converted + cell.converted,
                    tuple(a + b for a, b in zip(ratings, cell.ratings, strict=True)),
                )
    return totals


def _cells(stats: ExperimentStats) -> dict[tuple[str, str], tuple[int, int, tuple[int, ...]]]:
    return {
        (stage, variant): (cell.exposed, cell.converted, cell.ratings)
        for stage, by_variant in stats.cells.items()
        for variant, cell in by_variant.items()
    }


def _attach(db, warehouse, ids: dict[str, int]) -> None:
    with db.write() as session:
        source = warehouse.source(clock_skew_seconds=30.0)
        session.add(source)
        session.flush()
        for experiment_id in ids.values():
            session.get(Experiment, experiment_id).warehouse_source_id = source.id


def _check(db, ids: dict[str, int], builtin: dict[str, dict], *, full: bool = False) -> None:
    for key, experiment_id in ids.items():
        outcome = refresh(db, key, full=full)
        assert outcome.error is None and outcome.mode == "full", outcome
        with db.sessionmaker() as session:
            stats = session.get(WarehouseStats, experiment_id)
            assert stats.segments["error"] is None and stats.segments["too_many"] == []
            assert sorted(stats.segments["attributes"]) == sorted(ATTRIBUTES)
            assert stats.segments_at == stats.full_at
            totals = experiment_stats(session, session.get(Experiment, experiment_id))
        got = _segments(db, experiment_id)
        assert got == builtin[key], key
        for name in ATTRIBUTES:  # each attribute's segments add up to the whole experiment
            assert _summed(got[name]) == _cells(totals), (key, name)


def test_warehouse_segments_equal_the_builtin_breakdown(app, db, warehouse, zone):  # noqa: F811
    """Also after the platform exported every exposure a second time (an export is
    idempotent: the statistics keep one exposure per customer), and with the process
    in a zone other than UTC."""
    rng = random.Random(20261204)
    customers = [f"k{i}" for i in range(60)]
    ids = _seed(db, rng, customers)
    settings = app.extensions["settings"]
    batches = random_workload(rng, [*customers, "ghost1"], batches=8, per_batch=40)
    copies = _replay(db, settings, rng, customers, batches, set(), 0)
    builtin = {key: _segments(db, experiment_id) for key, experiment_id in ids.items()}
    checkout = builtin["checkout"]
    # What the comparison covers: every kind of value, and outcomes in several segments.
    assert set(checkout["platform"]) == {None, "ios", "android", "web"}
    assert set(checkout["vip"]) == {"true", "false"} and set(checkout["cohort"]) == {None, "1", "2"}
    assert set(checkout["plan"]) == {None, "pro", ""}  # a JSON null is not recorded, an empty string is
    converting = [v for v, s in checkout["platform"].items() if any(c.converted for c in s.cells["purchase"].values())]
    rating = [v for v, s in checkout["plan"].items() if any(sum(c.ratings) for c in s.cells["purchase"].values())]
    assert len(converting) >= 3 and len(rating) >= 2
    warehouse.add_events(_warehouse_events(db, copies))
    _attach(db, warehouse, ids)
    _check(db, ids, builtin)

    with db.sessionmaker() as session:
        experiment = session.get(Experiment, ids["checkout"])
        written, _last = export_exposures(session, experiment, experiment.warehouse_source)
        assert written == session.scalar(
            select(func.count()).select_from(Exposure).where(Exposure.experiment_id == experiment.id)
        )  # every exposure again, forced ones included
    _check(db, {"checkout": ids["checkout"]}, builtin, full=True)


@pytest.mark.parametrize("engine", WAREHOUSES)
def test_json_text_reads_attributes_as_the_platform_does(tmp_path, chdb_folder, engine):  # noqa: F811
    """Strings as they are, booleans as true/false, numbers as written; NULL for a
    missing key, a JSON null, an empty document and a NULL one; '' for an empty
    string (ClickHouse gives '' for a missing key too unless asked its type)."""
    documents = [
        json.dumps({"a": "x", "b": True, "c": 3, "d": "", "e": None}),
        json.dumps({"b": False, "c": 2.5}),
        "",
        None,
    ]
    expected = {
        "a": ["x", None, None, None],
        "b": ["true", "false", None, None],
        "c": ["3", "2.5", None, None],
        "d": ["", None, None, None],
        "e": [None, None, None, None],
        "f-g": [None, None, None, None],
    }
    for warehouse in make_warehouse(engine, tmp_path, chdb_folder):
        if engine == "clickhouse":
            documents[3] = ""  # its String column is not nullable
        rows = [
            {"experiment": "x", "customer_id": f"c{i}", "variant": "v", "exposed_at": at(i), "forced": False}
            | {"attributes": document}
            for i, document in enumerate(documents)
        ]
        warehouse._insert(warehouse.exposures_table, EXPOSURE_COLUMNS, rows)
        table = table_of(warehouse.exposures_table, EXPOSURE_COLUMNS)
        dialect = dialect_of(warehouse.url)
        with warehouse.engine.connect() as connection:
            for key, values in expected.items():
                statement = select(dialects.json_text(dialect, table.c.attributes, key)).order_by(table.c.customer_id)
                assert [row[0] for row in connection.execute(statement)] == values, (engine, key)


def test_the_commonest_attributes_are_broken_down():
    documents = [json.dumps({f"a{i}": 1 for i in range(n)} | {"bad name": 1}) for n in range(1, 15)]
    documents += ["not json", "", None, "[1, 2]"]
    names = commonest_attributes(documents)
    assert len(names) == MAX_ATTRIBUTES and names == sorted(f"a{i}" for i in range(MAX_ATTRIBUTES))


def _event(n: int, customer: str, kind: str = "conversion", value: int | None = None) -> dict:
    moment = at(60 + n)
    return {
        "event_id": f"w{n}",
        "sequence": n,
        "customer_id": customer,
        "stage": "purchase",
        "kind": kind,
        "metric": None,
        "value": value,
        "occurred_at": moment,
        "received_at": moment,
        "exposure_cutoff": moment,
        "experiment": None,
    }


@pytest.fixture
def duck(tmp_path, chdb_folder):  # noqa: F811
    yield from make_warehouse("duckdb", tmp_path, chdb_folder)


def _lake(db, warehouse, *, customers: int = 40, exposures_columns: dict[str, str] | None = None) -> None:
    """checkout in a DuckDB warehouse: customers on ios and android (every third
    without a platform) and each with a unique tag; converters and ratings."""
    with db.write() as session:
        source = warehouse.source(**({"exposures_columns": exposures_columns} if exposures_columns else {}))
        session.add(source)
        session.flush()
        experiment = make_experiment(session, "checkout", target_stage="purchase")
        experiment.warehouse_source_id = source.id
        for i in range(customers):
            attributes: dict[str, Any] = {"tag": f"t{i}"}
            if i % 3:
                attributes["platform"] = ("ios", "android")[i % 2]
            expose(session, experiment, f"c{i}", ("control", "treatment")[i % 2], attributes=attributes)
    events = [_event(i, f"c{i}") for i in range(0, customers, 2)]
    events += [_event(1000 + i, f"c{i}", "satisfaction", 1 + i % 5) for i in range(customers // 2)]
    warehouse.add_events(events)


def test_the_report_breaks_a_warehouse_experiment_down_by_segment(app, db, duck, admin_api, client, login):
    _lake(db, duck, customers=MAX_SEGMENTS + 5)
    before = admin_api.get("/api/v1/experiments/checkout/report?segment=platform")
    assert before.status_code == 400 and "ask for a refresh" in before.get_json()["fields"]["segment"]

    assert refresh(db, "checkout").error is None
    response = checked(admin_api).get("/api/v1/experiments/checkout/report?segment=platform")
    assert response.status_code == 200
    body = response.get_json()
    assert body["recorded_attributes"] == ["platform", "tag"]
    assert body["warehouse"]["segments_at"] == body["warehouse"]["full_at"] is not None
    assert body["warehouse"]["attributes_mapped"] is True
    segments = body["segments"]
    assert segments["status"] == "ready"
    exposed = {s["value"]: s["exposed"] for s in segments["values"]}
    assert exposed == {None: 35, "ios": 35, "android": 35}
    assert sum(exposed.values()) == sum(body["exposed"].values())
    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).filter_by(key="checkout")).one()
        by_value = segment_stats(session, experiment, "platform")
    # The converters are the even customers, in control: on ios, or every sixth unrecorded.
    converted = {value: stats.cells["purchase"]["control"].converted for value, stats in by_value.items()}
    assert converted == {None: 18, "ios": 35, "android": 0}
    assert all(stats.cells["purchase"]["treatment"].converted == 0 for stats in by_value.values())

    csv = admin_api.get("/api/v1/experiments/checkout/report.csv?segment=platform").get_data(as_text=True)
    rows = list(csv_module.DictReader(io.StringIO(csv)))
    assert Counter(r["segment"] for r in rows if r["metric"] == "conversion" and r["stage"] == "purchase") == {
        "": 2,
        "platform=ios": 2,
        "platform=android": 2,
        "platform=(not recorded)": 2,
    }

    too_many = admin_api.get("/api/v1/experiments/checkout/report?segment=tag")
    assert too_many.status_code == 400 and "distinct values" in too_many.get_json()["fields"]["segment"]
    unknown = admin_api.get("/api/v1/experiments/checkout/report?segment=country")
    assert unknown.status_code == 400 and "platform, tag" in unknown.get_json()["fields"]["segment"]

    # An increment leaves the segments as of the full recomputation, and the report says so.
    assert refresh(db, "checkout").mode == "incremental"
    again = admin_api.get("/api/v1/experiments/checkout/report?segment=platform").get_json()
    assert again["warehouse"]["segments_at"] == body["warehouse"]["segments_at"]
    assert again["warehouse"]["computed_at"] > again["warehouse"]["segments_at"]
    assert {s["value"]: s["exposed"] for s in again["segments"]["values"]} == exposed

    login("viewer")
    page = client.get("/experiments/checkout/report?segment=platform")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "platform = ios" in html and "these are as of" in html
    assert '<option value="platform" selected>platform</option>' in html
    flashed = client.get("/experiments/checkout/report?segment=tag")
    assert flashed.status_code == 200 and "distinct values" in flashed.get_data(as_text=True)


@pytest.fixture
def duck_without_attributes(tmp_path, chdb_folder):  # noqa: F811
    """A DuckDB warehouse whose exposures table has no attributes column."""
    without = tuple(c for c in EXPOSURE_COLUMNS if c != "attributes")
    folder = tmp_path / "plain"  # a file of its own beside ``duck``'s
    folder.mkdir()
    yield from make_warehouse("duckdb", folder, chdb_folder, exposure_columns=without)


def test_a_source_without_an_attributes_column_works_and_says_how_to_get_segments(
    app, db, duck_without_attributes, admin_api, client, login
):
    warehouse = duck_without_attributes
    columns = {role: column for role, column in DEFAULT_EXPOSURE_COLUMNS.items() if role != "attributes"}
    _lake(db, warehouse, exposures_columns=columns)
    outcome = refresh(db, "checkout")
    assert outcome.error is None and outcome.mode == "full"
    with warehouse.engine.connect() as connection:
        assert connection.execute(text(f"SELECT count(*) FROM {warehouse.exposures_table}")).scalar() == 40
    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).filter_by(key="checkout")).one()
        stats = session.get(WarehouseStats, experiment.id)
        assert stats.segments is None and stats.segments_at is None and stats.cells
        with pytest.raises(MalformedRequest) as refused:
            segment_stats(session, experiment, "platform")
    assert "map an attributes column" in refused.value.fields["segment"]
    body = checked(admin_api).get("/api/v1/experiments/checkout/report").get_json()
    assert body["recorded_attributes"] == [] and body["warehouse"]["attributes_mapped"] is False
    assert sum(body["exposed"].values()) == 40
    response = admin_api.get("/api/v1/experiments/checkout/report?segment=platform")
    assert response.status_code == 400
    login("viewer")
    html = client.get("/experiments/checkout/report").get_data(as_text=True)
    assert "map an attributes column to get segments" in html


def test_a_failing_segments_query_keeps_the_totals_and_says_why(app, db, duck, admin_api):
    """Attributes that are not JSON (a warehouse's own table): DuckDB refuses to read
    them; the totals are stored, and a breakdown says what failed."""
    with db.write() as session:
        source = duck.source(export_exposures=False)
        session.add(source)
        session.flush()
        experiment = make_experiment(session, "checkout", target_stage="purchase")
        experiment.warehouse_source_id = source.id
    rows = [
        {"experiment": "checkout", "customer_id": "c1", "variant": "control", "exposed_at": at(0), "forced": False}
        | {"attributes": json.dumps({"platform": "ios"})},
        {"experiment": "checkout", "customer_id": "c2", "variant": "control", "exposed_at": at(0), "forced": False}
        | {"attributes": "{not json"},
    ]
    duck._insert(duck.exposures_table, EXPOSURE_COLUMNS, rows)
    duck.add_events([_event(1, "c1"), _event(2, "c2")])
    outcome = refresh(db, "checkout")
    assert outcome.error is None and outcome.mode == "full"
    with db.sessionmaker() as session:
        stats = session.scalars(select(WarehouseStats)).one()
        assert stats.segments["error"] and stats.segments["attributes"] == {}
    body = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    assert body["exposed"] == {"control": 2, "treatment": 0} and body["warehouse"]["state"] == "fresh"
    response = admin_api.get("/api/v1/experiments/checkout/report?segment=platform")
    assert response.status_code == 400
    assert "could not compute segments" in response.get_json()["fields"]["segment"]


def test_the_source_check_maps_an_attributes_text_column_where_the_table_has_one(
    admin_api, duck, duck_without_attributes
):
    def source(warehouse, key: str, **fields: Any) -> dict:
        return {
            "key": key,
            "name": key,
            "url": warehouse.url,
            "events_table": warehouse.events_table,
            "exposures_table": warehouse.exposures_table,
            **fields,
        }

    created = admin_api.post("/api/v1/warehouse-sources", json=source(duck, "lake"))
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["exposures_columns"]["attributes"] == "attributes"
    without = admin_api.post("/api/v1/warehouse-sources", json=source(duck_without_attributes, "plain"))
    assert without.status_code == 201, without.get_json()
    assert without.get_json()["exposures_columns"]["attributes"] is None  # optional: unmapped, and fine
    wrong = admin_api.post(
        "/api/v1/warehouse-sources", json=source(duck, "wrong", exposures_columns={"attributes": "forced"})
    )
    assert wrong.status_code == 422
    assert "not a text type" in wrong.get_json()["fields"]["exposures_columns.attributes"]


def test_a_warehouse_own_exposures_segment_by_the_attributes_of_the_row_that_counts(app, db, warehouse):
    """The warehouse's own exposures table (not exported): a customer's earliest row
    counts, its attributes too; an empty document is no attribute at all."""
    with db.write() as session:
        source = warehouse.source(export_exposures=False)
        session.add(source)
        session.flush()
        experiment = make_experiment(session, "checkout", target_stage="purchase")
        experiment.warehouse_source_id = source.id

    def row(customer: str, variant: str, seconds: float, attributes: str) -> dict[str, Any]:
        exposed = {"experiment": "checkout", "customer_id": customer, "variant": variant, "exposed_at": at(seconds)}
        return exposed | {"forced": False, "attributes": attributes}

    ios, android = json.dumps({"platform": "ios"}), json.dumps({"platform": "android"})
    rows = [row("c1", "treatment", 10, android), row("c1", "control", 0, ios), row("c2", "control", 0, android)]
    rows += [row("c3", "treatment", 0, ""), row("c4", "treatment", 0, ios), row("other", "control", 0, "")]
    rows[-1]["experiment"] = "onboarding"
    warehouse._insert(warehouse.exposures_table, EXPOSURE_COLUMNS, rows)
    warehouse.add_events([_event(1, "c1"), _event(2, "c3"), _event(3, "c4", "satisfaction", 5)])
    assert refresh(db, "checkout").error is None
    with db.sessionmaker() as session:
        by_value = segment_stats(session, session.scalars(select(Experiment)).one(), "platform")
    purchase = {
        value: {v: (c.exposed, c.converted, sum(c.ratings)) for v, c in stats.cells["purchase"].items()}
        for value, stats in by_value.items()
    }
    assert purchase == {
        "ios": {"control": (1, 1, 0), "treatment": (1, 0, 1)},
        "android": {"control": (1, 0, 0), "treatment": (0, 0, 0)},
        None: {"control": (0, 0, 0), "treatment": (1, 1, 0)},
    }
