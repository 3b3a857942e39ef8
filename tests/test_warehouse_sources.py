"""Warehouse sources: defined through the API, files and pages, checked against a
real (DuckDB) warehouse with errors by field, audited, never showing the URL's
password back, refused deletion while an experiment reads from them, and attached to
experiments by the API, TOML files and the experiment form."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from expplatform.cli import main
from expplatform.models import Experiment, WarehouseSource, WarehouseSourceAuditEntry
from expplatform.warehouse.engines import dispose_all, warehouse_engine
from expplatform.warehouse.inspection import type_families, type_family
from expplatform.warehouse.sources import masked_url

from .openapi_check import assert_matches_openapi
from .test_web_experiments import FORM as EXPERIMENT_FORM

API = "/api/v1/warehouse-sources"
SECRET = "s3cr3t-pw"
PG_URL = f"postgresql+psycopg://reader:{SECRET}@127.0.0.1:1/analytics"
EXPERIMENT = {
    "key": "wh-checkout",
    "name": "Warehouse checkout",
    "target_stage": "purchase",
    "variants": [{"key": "control"}, {"key": "treatment"}],
}


@pytest.fixture
def warehouse(tmp_path):
    """A DuckDB warehouse file: ``events`` and ``exposures`` named like the roles
    (``sequence`` left out), and ``raw.clicks`` with other names and a text value."""
    path = tmp_path / "w.duckdb"
    engine = sa.create_engine(f"duckdb:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE events (event_id VARCHAR, customer_id VARCHAR, stage VARCHAR, kind VARCHAR, "
            "metric VARCHAR, value INTEGER, occurred_at TIMESTAMPTZ, received_at TIMESTAMPTZ, "
            "exposure_cutoff TIMESTAMPTZ, experiment VARCHAR)"
        )
        connection.exec_driver_sql(
            "CREATE TABLE exposures (experiment VARCHAR, customer_id VARCHAR, variant VARCHAR, "
            "exposed_at TIMESTAMP, forced BOOLEAN)"
        )
        connection.exec_driver_sql("CREATE SCHEMA raw")
        connection.exec_driver_sql(
            "CREATE TABLE raw.clicks (id VARCHAR, user_id VARCHAR, stage VARCHAR, kind VARCHAR, "
            "value VARCHAR, occurred_at TIMESTAMP, received_at TIMESTAMP, seq BIGINT)"
        )
    engine.dispose()
    yield f"duckdb:///{path}"
    dispose_all()


def _source(base_url: str, /, **overrides) -> dict:
    return {
        "key": "analytics",
        "name": "Analytics warehouse",
        "url": base_url,
        "events_table": "events",
        "exposures_table": "exposures",
        **overrides,
    }


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


# -- type families ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "family"),
    [
        ("String", "text"),
        ("LowCardinality(String)", "text"),
        ("Nullable(String)", "text"),
        ("LowCardinality(Nullable(String))", "text"),
        ("FixedString(36)", "text"),
        ("Int64", "integer"),
        ("UInt32", "integer"),
        ("Nullable(Int16)", "integer"),
        ("DateTime", "timestamp"),
        ("DateTime('UTC')", "timestamp"),
        ("DateTime64(6, 'UTC')", "timestamp"),
        ("Nullable(DateTime64(3))", "timestamp"),
        ("Bool", "boolean"),
        ("Float64", None),
        ("Date", None),
        ("Array(String)", None),
        ("character varying", "text"),
        ("text", "text"),
        ("bigint", "integer"),
        ("timestamp with time zone", "timestamp"),
        ("timestamp without time zone", "timestamp"),
        ("boolean", "boolean"),
        ("VARCHAR", "text"),
        ("VARCHAR[]", None),
        ("HUGEINT", "integer"),
        ("TIMESTAMP WITH TIME ZONE", "timestamp"),
        ("TIMESTAMP_NS", "timestamp"),
        ("DOUBLE", None),
    ],
)
def test_type_family_of_clickhouse_postgresql_and_duckdb_types(type_name, family):
    assert type_family(type_name) == family


def test_clickhouse_uint8_is_an_integer_and_a_boolean():
    assert type_families("UInt8") == {"integer", "boolean"}
    assert type_families("Nullable(UInt8)") == {"integer", "boolean"}
    assert "boolean" not in type_families("Int8")


def test_masked_url_hides_the_password_and_credential_parameters():
    assert masked_url(PG_URL) == "postgresql+psycopg://reader:***@127.0.0.1:1/analytics"
    shown = masked_url("clickhousedb://u:pw@ch.example:8443/db?secure=true&access_token=abc")
    assert "pw" not in shown.replace("u:***", "") and "abc" not in shown and "secure=true" in shown
    assert masked_url("duckdb:////data/w.duckdb") == "duckdb:////data/w.duckdb"


# -- the API ---------------------------------------------------------------------------


def test_create_checked_against_the_warehouse_resolves_the_mapping(admin_api, warehouse):
    created = admin_api.post(API, json=_source(warehouse))
    assert created.status_code == 201, created.json
    assert_matches_openapi(created)
    assert created.headers["Location"].endswith(f"{API}/analytics")
    body = created.json
    assert body["dialect"] == "duckdb" and body["experiments"] == []
    # Required roles by their own names; optional ones where the table has the column.
    assert body["events_columns"]["metric"] == "metric" and body["events_columns"]["sequence"] is None
    assert body["exposures_columns"]["forced"] == "forced"
    got = admin_api.get(f"{API}/analytics")
    assert_matches_openapi(got)
    assert got.json["audit"][0]["action"] == "created"


def test_a_mapped_table_with_other_names_and_a_schema(admin_api, warehouse):
    columns = {"event_id": "id", "customer_id": "user_id", "value": None, "sequence": "seq"}
    created = admin_api.post(
        API, json=_source(warehouse, events_table="raw.clicks", events_columns=columns, clock_skew_seconds=30)
    )
    assert created.status_code == 201, created.json
    mapped = created.json["events_columns"]
    assert mapped["customer_id"] == "user_id" and mapped["sequence"] == "seq"
    assert mapped["value"] is None and mapped["metric"] is None  # unmapped on purpose; absent
    assert created.json["clock_skew_seconds"] == 30 and created.json["export_exposures"] is True
    own = admin_api.patch(f"{API}/analytics", json={"export_exposures": False})
    assert own.status_code == 200 and own.json["export_exposures"] is False


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"url": "sqlite:///x.db"}, "url", "must start with one of"),
        ({"url": "mysql://u:p@h/db"}, "url", "postgresql://"),
        ({"events_columns": {"shoe_size": "size"}}, "events_columns.shoe_size", "unknown role"),
        ({"events_columns": {"customer_id": "user id; drop"}}, "events_columns.customer_id", "column name"),
        ({"events_columns": {"customer_id": None}}, "events_columns.customer_id", "is required"),
        ({"events_table": "a.b.c"}, "events_table", "schema.table"),
        ({"events_table": 'events"; drop table x; --'}, "events_table", "table name"),
        ({"clock_skew_seconds": 3601}, "clock_skew_seconds", "3600"),
        ({"clock_skew_seconds": -1}, "clock_skew_seconds", "0 to 3600"),
        ({"key": "Not A Slug"}, "key", "slug"),
        ({"check": "yes"}, "check", "true or false"),
        ({"password": "x"}, "password", "unknown field"),
    ],
)
def test_the_shape_is_validated_with_field_errors(admin_api, warehouse, overrides, field, words):
    response = admin_api.post(API, json=_source(warehouse, **overrides))
    assert response.status_code == 422, response.json
    assert_matches_openapi(response)
    assert response.json["error"] == "validation_failed"
    assert words in response.json["fields"][field]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"events_table": "clicks"}, "events_table", "no table clicks"),
        ({"exposures_table": "raw.exposures"}, "exposures_table", "no table exposures in schema raw"),
        ({"events_columns": {"customer_id": "user_id"}}, "events_columns.customer_id", "has no column user_id"),
        (
            {"events_table": "raw.clicks", "events_columns": {"event_id": "id", "customer_id": "user_id"}},
            "events_columns.value",
            "column value of raw.clicks is VARCHAR, not an integer type",
        ),
        ({"exposures_columns": {"forced": "variant"}}, "exposures_columns.forced", "not a boolean type"),
        ({"url": "duckdb:////no/such/file.duckdb"}, "url", "no DuckDB file at /no/such/file.duckdb"),
    ],
)
def test_the_warehouse_check_names_each_mismatch(admin_api, warehouse, overrides, field, words):
    response = admin_api.post(API, json=_source(warehouse, **overrides))
    assert response.status_code == 422, response.json
    assert_matches_openapi(response)
    assert response.json["error"] == "warehouse_check_failed"
    assert words in response.json["fields"][field], response.json["fields"]
    assert admin_api.get(f"{API}/analytics").status_code == 404


def test_an_unreachable_warehouse_is_a_quick_clear_422_without_the_password(admin_api):
    started = time.monotonic()
    response = admin_api.post(API, json=_source(PG_URL))
    assert time.monotonic() - started < 15
    assert response.status_code == 422, response.json
    assert response.json["error"] == "warehouse_check_failed"
    assert "cannot be reached" in response.json["fields"]["url"]
    assert "reader:***@127.0.0.1:1" in response.json["message"]
    _no_secret(response.text)


def test_the_password_is_never_shown_back(admin_api, client, login, db):
    created = admin_api.post(API, json={**_source(PG_URL), "check": False})
    assert created.status_code == 201, created.json
    assert created.json["url"] == "postgresql+psycopg://reader:***@127.0.0.1:1/analytics"
    assert created.json["notices"]  # saved unchecked: said so
    new_url = PG_URL.replace(SECRET, "n3w-" + SECRET)
    changed = admin_api.patch(f"{API}/analytics", json={"url": new_url, "check": False})
    assert changed.status_code == 200, changed.json
    responses = [
        created,
        changed,
        admin_api.get(API),
        admin_api.get(f"{API}/analytics"),
        admin_api.get(f"{API}/analytics/audit"),
        admin_api.post(f"{API}/analytics/check"),
    ]
    login("editor")
    pages = [client.get("/warehouse-sources"), client.get("/warehouse-sources/analytics/edit")]
    assert all(page.status_code == 200 for page in pages)
    assert "reader:***@127.0.0.1:1" in pages[0].text
    _no_secret(*(r.text for r in responses), *(p.text for p in pages))
    with db.sessionmaker() as session:
        details = [entry.details for entry in session.scalars(sa.select(WarehouseSourceAuditEntry))]
        assert session.scalars(sa.select(WarehouseSource.url)).one() == new_url
    _no_secret(repr(details))
    assert details[-1]["changes"]["url"]["credentials_changed"] is True


def test_update_keeps_the_stored_url_and_password(admin_api, db, warehouse):
    assert admin_api.post(API, json={**_source(PG_URL), "check": False}).status_code == 201
    renamed = admin_api.patch(f"{API}/analytics", json={"name": "Renamed", "check": False})
    assert renamed.status_code == 200, renamed.json
    assert renamed.json["name"] == "Renamed"
    # The masked URL sent back (a GET, a change, a PATCH) keeps the stored password.
    shown = admin_api.get(f"{API}/analytics").json
    back = admin_api.patch(f"{API}/analytics", json={"url": shown["url"], "clock_skew_seconds": 60, "check": False})
    assert back.status_code == 200, back.json
    with db.sessionmaker() as session:
        assert session.scalars(sa.select(WarehouseSource.url)).one() == PG_URL
    # ... but never sends the stored password to another host.
    elsewhere = shown["url"].replace("127.0.0.1", "collector.example")
    refused = admin_api.patch(f"{API}/analytics", json={"url": elsewhere, "check": False})
    assert refused.status_code == 422 and "type the password" in refused.json["fields"]["url"]
    audit = admin_api.get(f"{API}/analytics/audit").json["items"]
    assert [entry["action"] for entry in audit] == ["updated", "updated", "created"]
    assert set(audit[0]["details"]["changes"]) == {"clock_skew_seconds"}
    assert audit[1]["details"]["changes"] == {"name": {"from": "Analytics warehouse", "to": "Renamed"}}
    # Moved to the DuckDB warehouse: checked there.
    moved = admin_api.patch(f"{API}/analytics", json={"url": warehouse})
    assert moved.status_code == 200, moved.json
    refused = admin_api.patch(f"{API}/analytics", json={"events_table": "nowhere"})
    assert refused.status_code == 422 and "events_table" in refused.json["fields"]
    assert admin_api.patch(f"{API}/analytics", json={"key": "other", "check": False}).status_code == 409


def test_check_endpoint_reports_without_changing(admin_api, warehouse, tmp_path):
    assert admin_api.post(API, json=_source(warehouse)).status_code == 201
    ok = admin_api.post(f"{API}/analytics/check")
    assert_matches_openapi(ok)
    assert ok.json["ok"] is True and ok.json["problems"] == {}
    engine = sa.create_engine(warehouse)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE events DROP COLUMN stage")
    engine.dispose()
    dispose_all()
    broken = admin_api.post(f"{API}/analytics/check")
    assert broken.json["ok"] is False and "has no column stage" in broken.json["problems"]["events_columns.stage"]


def test_delete_is_refused_while_an_experiment_reads_from_the_source(admin_api, warehouse):
    assert admin_api.post(API, json=_source(warehouse)).status_code == 201
    created = admin_api.post("/api/v1/experiments", json={**EXPERIMENT, "warehouse_source": "analytics"})
    assert created.status_code == 201, created.json
    refused = admin_api.client.delete(f"{API}/analytics", headers=admin_api.headers())
    assert refused.status_code == 409 and refused.json["error"] == "source_in_use"
    assert "wh-checkout" in refused.json["message"]
    assert admin_api.get(f"{API}/analytics").json["experiments"] == ["wh-checkout"]
    detached = admin_api.patch("/api/v1/experiments/wh-checkout", json={"warehouse_source": None})
    assert detached.status_code == 200 and detached.json["warehouse_source"] is None
    deleted = admin_api.client.delete(f"{API}/analytics", headers=admin_api.headers())
    assert deleted.status_code == 204
    assert admin_api.get(f"{API}/analytics").status_code == 404
    missing = admin_api.client.delete(f"{API}/analytics", headers=admin_api.headers())
    assert missing.status_code == 404


def test_experiments_attach_by_key_through_the_api(admin_api, warehouse, db):
    assert admin_api.post(API, json=_source(warehouse)).status_code == 201
    plain = admin_api.post("/api/v1/experiments", json={**EXPERIMENT, "key": "plain"})
    assert plain.status_code == 201 and plain.json["warehouse_source"] is None
    assert_matches_openapi(plain)
    unknown = admin_api.post("/api/v1/experiments", json={**EXPERIMENT, "warehouse_source": "nope"})
    assert unknown.status_code == 422 and "nope" in unknown.json["fields"]["warehouse_source"]
    attached = admin_api.patch("/api/v1/experiments/plain", json={"warehouse_source": "analytics"})
    assert attached.status_code == 200, attached.json
    assert_matches_openapi(attached)
    assert attached.json["warehouse_source"] == "analytics"
    renamed = admin_api.patch("/api/v1/experiments/plain", json={"name": "Still attached"})
    assert renamed.json["warehouse_source"] == "analytics"
    with db.sessionmaker() as session:
        row = session.scalars(sa.select(Experiment).where(Experiment.key == "plain")).one()
        assert row.warehouse_source is not None and row.warehouse_source.key == "analytics"
    audit = admin_api.get("/api/v1/experiments/plain/audit").json["items"]
    assert audit[1]["details"]["changes"]["warehouse_source"] == {"from": None, "to": "analytics"}


def test_viewers_read_sources_but_cannot_change_them(client, login, warehouse, admin_api):
    assert admin_api.post(API, json=_source(warehouse)).status_code == 201
    login("viewer")
    assert client.get(API).status_code == 200
    assert client.patch(f"{API}/analytics", json={"name": "x"}).status_code == 403
    assert client.get("/warehouse-sources").status_code == 200
    assert client.get("/warehouse-sources/new").status_code == 403


# -- files -------------------------------------------------------------------------------


def test_toml_files_define_sources_with_the_url_from_the_environment(runner, db, warehouse, tmp_path, monkeypatch):
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "warehouse.toml").write_text(
        'kind = "warehouse"\nkey = "analytics"\nname = "Analytics"\nurl_env = "TEST_WAREHOUSE_URL"\n'
        'events_table = "raw.clicks"\nexposures_table = "exposures"\nclock_skew_seconds = 10\n\n'
        '[events_columns]\nevent_id = "id"\ncustomer_id = "user_id"\nvalue = ""\nsequence = "seq"\n'
    )
    (folder / "checkout.toml").write_text(
        'key = "wh-checkout"\nname = "Warehouse checkout"\ntarget_stage = "purchase"\n'
        'warehouse_source = "analytics"\n\n[[variants]]\nkey = "control"\n\n[[variants]]\nkey = "treatment"\n'
    )
    missing = runner.invoke(main, ["experiments", "apply", str(folder)])
    assert missing.exit_code == 1 and "TEST_WAREHOUSE_URL is not set" in missing.output
    monkeypatch.setenv("TEST_WAREHOUSE_URL", warehouse)
    applied = runner.invoke(main, ["experiments", "apply", str(folder)])
    assert applied.exit_code == 0, applied.output
    assert "created warehouse source analytics" in applied.output
    with db.sessionmaker() as session:
        source = session.scalars(sa.select(WarehouseSource)).one()
        assert source.url == warehouse and source.clock_skew_seconds == 10
        assert source.events_columns["sequence"] == "seq" and "value" not in source.events_columns
        experiment = session.scalars(sa.select(Experiment)).one()
        assert experiment.warehouse_source_id == source.id
    again = runner.invoke(main, ["experiments", "apply", str(folder)])
    assert again.exit_code == 0 and "unchanged warehouse source analytics" in again.output
    (folder / "warehouse.toml").write_text(
        (folder / "warehouse.toml").read_text().replace('"raw.clicks"', '"raw.nothing"')
    )
    refused = runner.invoke(main, ["experiments", "apply", str(folder)])
    assert refused.exit_code == 1 and "warehouse.toml: events_table: the warehouse has no table" in refused.output


# -- pages -------------------------------------------------------------------------------


def _form(base_url: str, /, **overrides) -> dict:
    return {
        "key": "analytics",
        "name": "Analytics warehouse",
        "url": base_url,
        "events_table": "events",
        "exposures_table": "exposures",
        "clock_skew_seconds": "5",
        "export_exposures": "y",
        "check": "y",
        **overrides,
    }


def test_the_form_defines_a_source_and_the_list_shows_it(client, login, warehouse, db):
    login("editor")
    assert "Warehouses" in client.get("/experiments").text
    refused = client.post("/warehouse-sources/new", data=_form(warehouse, **{"events__customer_id": "nobody"}))
    assert refused.status_code == 422
    assert "has no column nobody" in refused.text
    assert warehouse not in refused.text  # a typed URL is never sent back
    created = client.post("/warehouse-sources/new", data=_form(warehouse, **{"events__sequence": "-"}))
    assert created.status_code == 302, created.text
    listed = client.get("/warehouse-sources")
    assert "Analytics warehouse" in listed.text and "<code>events</code>" in listed.text
    edit = client.get("/warehouse-sources/analytics/edit")
    assert edit.status_code == 200 and 'value="events"' in edit.text
    unticked = {name: value for name, value in _form("", name="Renamed").items() if name != "export_exposures"}
    saved = client.post("/warehouse-sources/analytics/edit", data=unticked)
    assert saved.status_code == 302, saved.text
    with db.sessionmaker() as session:
        source = session.scalars(sa.select(WarehouseSource)).one()
        assert source.name == "Renamed" and source.url == warehouse  # a blank URL box keeps it
        assert source.export_exposures is False  # the box unticked
        actions = [entry.action for entry in session.scalars(sa.select(WarehouseSourceAuditEntry))]
        assert actions == ["created", "updated"]
    history = client.get("/warehouse-sources/analytics/edit").text
    assert "updated: name, export_exposures" in history and "created" in history
    checked = client.post("/warehouse-sources/analytics/check", follow_redirects=True)
    assert "every table and column" in checked.text
    deleted = client.post("/warehouse-sources/analytics/delete", follow_redirects=True)
    assert "deleted" in deleted.text and "No warehouse sources yet" in deleted.text


def test_the_experiment_form_attaches_a_source(client, login, warehouse, admin_api, db):
    assert admin_api.post(API, json=_source(warehouse)).status_code == 201
    login("editor")
    page = client.get("/experiments/new")
    assert "Built-in events" in page.text and "Analytics warehouse (analytics)" in page.text
    created = client.post("/experiments/new", data={**EXPERIMENT_FORM, "warehouse_source": "analytics"})
    assert created.status_code == 302, created.text
    key = EXPERIMENT_FORM["key"]
    assert admin_api.get(f"/api/v1/experiments/{key}").json["warehouse_source"] == "analytics"
    assert (
        'warehouse source <a href="/warehouse-sources"><code>analytics</code>' in client.get(f"/experiments/{key}").text
    )
    edit = client.get(f"/experiments/{key}/edit")
    assert '<option selected value="analytics">' in edit.text
    detached = client.post(f"/experiments/{key}/edit", data={**EXPERIMENT_FORM, "warehouse_source": ""})
    assert detached.status_code == 302, detached.text
    assert admin_api.get(f"/api/v1/experiments/{key}").json["warehouse_source"] is None


# -- ClickHouse (embedded, chdb) ---------------------------------------------------------


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory) -> str:
    """The embedded ClickHouse of this test process: chdb opens one data folder per
    process, and each pytest-xdist worker has its own base temp folder."""
    folder = tmp_path_factory.getbasetemp() / "chdb"
    folder.mkdir(exist_ok=True)
    url = f"chdb://{folder}"
    with warehouse_engine(url).begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS ch_events (event_id String, customer_id LowCardinality(String), "
            "stage LowCardinality(String), kind LowCardinality(String), metric Nullable(String), "
            "value Nullable(Int16), occurred_at DateTime64(6, 'UTC'), received_at DateTime64(6, 'UTC'), "
            "sequence UInt64, note Float64) ENGINE = MergeTree ORDER BY event_id"
        )
        connection.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS ch_exposures (experiment String, customer_id String, variant String, "
            "exposed_at DateTime('UTC'), forced UInt8) ENGINE = MergeTree ORDER BY (experiment, customer_id)"
        )
    return url


def test_clickhouse_tables_are_read_from_its_catalog(admin_api, chdb_url):
    body = _source(chdb_url, events_table="ch_events", exposures_table="default.ch_exposures")
    created = admin_api.post(API, json=body)
    assert created.status_code == 201, created.json
    assert created.json["dialect"] == "clickhouse"
    assert created.json["events_columns"]["sequence"] == "sequence"
    assert created.json["exposures_columns"]["forced"] == "forced"  # UInt8 is ClickHouse's boolean
    wrong = admin_api.post(API, json={**body, "key": "wrong", "events_columns": {"value": "note"}})
    assert wrong.status_code == 422
    assert wrong.json["fields"] == {"events_columns.value": "column note of ch_events is Float64, not an integer type"}


def test_only_a_duckdb_file_or_a_chdb_folder_is_opened(admin_api, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("not a database, and not to be opened as one\n")
    refused = admin_api.post(API, json=_source(f"duckdb:///{other}"))
    assert refused.status_code == 422 and f"no DuckDB file at {other}" in refused.json["fields"]["url"]
    assert other.read_text().startswith("not a database")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    refused = admin_api.post(API, json=_source(f"chdb://{empty}"))
    assert refused.status_code == 422 and "no chdb data folder" in refused.json["fields"]["url"]
    assert list(empty.iterdir()) == []
