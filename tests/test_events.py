"""POST /api/v1/events: validation by index, idempotency (also under concurrent
sends), all-or-nothing storage, request-level errors. (Ratings naming questions,
journeys and their counters: ``test_journey_events``.)"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from expplatform.ingest import validate_events
from expplatform.models import Event, JourneyCount, JourneyOutcome, Outcome, OutcomeCount
from tests.events_support import at, counts, expose, iso, journey_counts, make_experiment
from tests.openapi_check import assert_example_valid, checked

URL = "/api/v1/events"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def ev(event_id: str = "e1", customer_id: str = "c1", stage: str = "purchase", type: str = "conversion", **extra):
    return {"event_id": event_id, "customer_id": customer_id, "stage": stage, "type": type, **extra}


@pytest.fixture
def api(client_api):
    """The client key's API, every response checked against the OpenAPI document."""
    return checked(client_api)


@pytest.fixture
def checkout(db):
    """A running experiment with customers c0..c9 exposed at T0 (even: control)."""
    with db.write() as session:
        experiment = make_experiment(session)
        for i in range(10):
            expose(session, experiment, f"c{i}", "control" if i % 2 == 0 else "treatment")
        return experiment.id


def stored(db, model=Event) -> int:
    with db.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(model))


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, code",
    [
        ("not an object", "invalid_event"),
        ({k: v for k, v in ev().items() if k != "customer_id"}, "missing_field"),
        (ev(event_id=None), "missing_field"),
        (ev(colour="red"), "unknown_field"),
        (ev(event_id=17), "invalid_type"),
        (ev(customer_id=["c1"]), "invalid_type"),
        (ev(stage=3), "invalid_type"),
        (ev(type=1), "invalid_type"),
        (ev(type="satisfaction", value="4"), "invalid_type"),
        (ev(type="satisfaction", value=4.5), "invalid_type"),
        (ev(type="satisfaction", value=True), "invalid_type"),
        (ev(timestamp=1717243200), "invalid_type"),
        (ev(experiment=5), "invalid_type"),
        (ev(event_id=""), "invalid_value"),
        (ev(event_id="x" * 129), "invalid_value"),
        (ev(customer_id="a\x00b"), "invalid_value"),
        (ev(event_id="a\ud800b"), "invalid_value"),
        (ev(stage="Purchase"), "invalid_value"),
        (ev(type="refund"), "invalid_value"),
        (ev(type="Rating", value=4), "invalid_value"),
        (ev(type="satisfaction", value=2**31), "invalid_value"),
        (ev(timestamp="yesterday"), "invalid_timestamp"),
        (ev(timestamp="2024-06-01T10:00:00"), "invalid_timestamp"),
        (ev(timestamp="2024-06-01"), "invalid_timestamp"),
        (ev(timestamp=iso(NOW + timedelta(hours=24, seconds=1))), "timestamp_in_future"),
        (ev(type="satisfaction"), "value_required"),
        (ev(type="satisfaction", value=None), "value_required"),
        (ev(type="rating", metric="purchase-rating"), "value_required"),
        (ev(value=1), "value_not_allowed"),
        (ev(experiment="Not A Key"), "unknown_experiment"),
        # A conversion names its stage; a rating its question or its stage.
        ({k: v for k, v in ev().items() if k != "stage"}, "missing_field"),
        ({k: v for k, v in ev(type="rating", value=4).items() if k != "stage"}, "missing_field"),
        (ev(metric="purchase-rating"), "metric_not_allowed"),
        (ev(type="rating", value=4, metric=7), "invalid_type"),
        (ev(type="rating", value=4, metric="Purchase Rating"), "unknown_metric"),
    ],
)
def test_each_invalid_event_is_rejected_with_its_code(raw, code):
    valid, rejected = validate_events([ev("ok"), raw], now=NOW, max_future_seconds=24 * 3600)
    assert [e.event_id for e in valid] == ["ok"]
    assert [(r.index, r.error) for r in rejected] == [(1, code)]
    assert rejected[0].message


def test_valid_events_parse_into_typed_objects():
    valid, rejected = validate_events(
        [
            ev(timestamp="2024-06-01T14:00:00+02:00"),
            ev("e2", type="satisfaction", value=4, experiment="checkout", timestamp=None),
            ev("e3", timestamp=iso(NOW + timedelta(hours=24))),
            {"event_id": "e4", "customer_id": "c1", "type": "rating", "metric": "checkout-csat", "value": 2},
            ev("e5", type="rating", metric="checkout-csat", value=3),
        ],
        now=NOW,
        max_future_seconds=24 * 3600,
    )
    assert rejected == []
    assert valid[0].occurred_at == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert (valid[0].type, valid[0].metric) == ("conversion", None)
    assert (valid[1].value, valid[1].experiment, valid[1].occurred_at) == (4, "checkout", None)
    assert (valid[1].type, valid[1].metric) == ("satisfaction", None)
    assert valid[2].occurred_at == NOW + timedelta(hours=24)
    # "rating" is stored as "satisfaction"; naming the question, the stage may be left out.
    assert (valid[3].type, valid[3].stage, valid[3].metric, valid[3].value) == (
        "satisfaction",
        None,
        "checkout-csat",
        2,
    )
    assert (valid[4].type, valid[4].stage, valid[4].metric) == ("satisfaction", "purchase", "checkout-csat")


def test_a_repeated_event_id_in_one_batch_is_rejected_after_its_first_valid_use():
    valid, rejected = validate_events(
        [ev("a", stage="BAD"), ev("a"), ev("b"), ev("a")], now=NOW, max_future_seconds=3600
    )
    assert [(e.index, e.event_id) for e in valid] == [(1, "a"), (2, "b")]
    assert [(r.index, r.error) for r in rejected] == [(0, "invalid_value"), (3, "duplicate_in_batch")]


def test_rules_that_need_the_database_reject_by_index(api, db, checkout):
    """checkout measures consideration/purchase/retention of its journey, asking
    purchase-rating (1-5) at purchase; nps measures purchase, the one stage of
    another journey, asking purchase-rating-0-10 there. c1 is in both."""
    with db.write() as session:
        nps = make_experiment(session, "nps", stages=("purchase",), scale=(0, 10))
        expose(session, nps, "c1", "treatment")
        nps_id = nps.id
    response = api.post(
        URL,
        json={
            "events": [
                ev("e0", experiment="nosuch"),
                ev("e1", stage="awareness"),  # no journey has this stage
                ev("e2", stage="consideration", experiment="nps"),
                # A rating naming only its stage answers each journey's one question
                # there: 7 is outside purchase-rating's 1-5, so it is refused whole.
                ev("e3", type="satisfaction", value=7),
                ev("e4", type="satisfaction", value=5),
                ev("e5", customer_id="c2", type="satisfaction", value=0),
                # The question's scale holds whoever rates, even a customer nobody measures.
                ev("e6", customer_id="stranger", type="satisfaction", value=42),
                ev("e7", type="rating", metric="purchase-rating-0-10", value=7),
                ev("e8", type="rating", metric="no-such-question", value=3),
                ev("e9", stage="retention", type="rating", metric="purchase-rating", value=3),
                ev("e10", type="rating", metric="purchase-rating-0-10", value=3, experiment="checkout"),
                ev("e11", type="rating", metric="purchase-rating-0-10", value=11),
            ]
        },
    )
    assert response.status_code == 200
    body = response.get_json()
    assert [(r["index"], r["error"]) for r in body["rejected"]] == [
        (0, "unknown_experiment"),
        (1, "unknown_stage"),
        (2, "stage_not_measured"),
        (3, "value_out_of_scale"),
        (5, "value_out_of_scale"),
        (6, "value_out_of_scale"),
        (8, "unknown_metric"),
        (9, "stage_mismatch"),
        (10, "metric_not_measured"),
        (11, "value_out_of_scale"),
    ]
    messages = {r["index"]: r["message"] for r in body["rejected"]}
    assert "purchase-rating-0-10" in messages[11] and "0-10" in messages[11]
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    with db.sessionmaker() as session:
        assert {row[0]: row[1] for row in session.execute(select(Event.event_id, Event.metric))} == {
            "e4": None,  # two journeys, each with its one question at purchase
            "e7": "purchase-rating-0-10",
        }
        # e4 is checkout's 5 and nps's 5; e7 (later in the batch, same time) replaces nps's.
        assert counts(session, checkout) == {("purchase", "treatment", "rating", 5): 1}
        assert counts(session, nps_id) == {("purchase", "treatment", "rating", 7): 1}


# -- the endpoint ----------------------------------------------------------------------


def test_a_lone_surrogate_is_rejected_not_a_server_error(api, db, checkout):
    body = '{"event_id": "e\\ud800", "customer_id": "c1", "stage": "purchase", "type": "conversion"}'
    response = api.post(URL, data=body, content_type="application/json")
    assert response.status_code == 200
    assert [r["error"] for r in response.get_json()["rejected"]] == ["invalid_value"]


def test_a_single_event_object_is_accepted(api, db, checkout):
    response = api.post(URL, json=ev(timestamp=iso(at(60))))
    assert response.status_code == 200
    assert response.get_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    with db.sessionmaker() as session:
        row = session.scalar(select(Event))
        assert (row.customer_id, row.stage, row.occurred_at, row.attributed) == ("c1", "purchase", at(60), 1)


def test_an_event_without_timestamp_happens_when_received(api, db, checkout):
    before = datetime.now(UTC)
    assert api.post(URL, json=ev()).get_json()["accepted"] == 1
    with db.sessionmaker() as session:
        row = session.scalar(select(Event))
    assert before <= row.occurred_at == row.received_at <= datetime.now(UTC)


def test_a_resent_batch_is_all_duplicates_and_counts_once(api, db, checkout):
    batch = {"events": [ev("e1"), ev("e2", customer_id="c2"), ev("e3", type="satisfaction", value=4)]}
    assert api.post(URL, json=batch).get_json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert api.post(URL, json=batch).get_json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    # The same event_id with other content is still the same event.
    again = api.post(URL, json=ev("e1", customer_id="c4")).get_json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    assert stored(db) == 3
    with db.sessionmaker() as session:
        assert counts(session, checkout) == {
            ("purchase", "treatment", "converted", 0): 1,  # c1
            ("purchase", "control", "converted", 0): 1,  # c2
            ("purchase", "treatment", "rating", 4): 1,
        }


def test_too_many_events_is_413_json(app, api):
    assert app.extensions["settings"].max_batch_events == 1000
    batch = {"events": [ev(f"e{i}") for i in range(1001)]}
    response = api.post(URL, json=batch)
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_many_events"


def test_the_batch_limit_is_configurable(make_test_app_key):
    client, key = make_test_app_key(max_batch_events=2)
    response = checked(client).post(
        URL, json={"events": [ev("a"), ev("b"), ev("c")]}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 413


def test_an_oversized_body_is_413_json(make_test_app_key):
    client, key = make_test_app_key(max_body_bytes=4096)
    body = {"events": [ev(f"e{i}", customer_id="x" * 200) for i in range(40)]}
    response = checked(client).post(URL, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"data": "{not json", "content_type": "application/json"}, "malformed_json"),
        ({"data": "event_id=1", "content_type": "application/x-www-form-urlencoded"}, "invalid_content_type"),
        ({"json": [ev()]}, "invalid_body"),
        ({"json": {"events": ev()}}, "invalid_body"),
        ({"json": {"events": [], "extra": 1}}, "invalid_body"),
    ],
)
def test_malformed_requests_are_400_json(client, client_key, kwargs, code):
    response = checked(client).post(URL, headers={"Authorization": f"Bearer {client_key}"}, **kwargs)
    assert response.status_code == 400
    assert response.get_json()["error"] == code


def test_an_empty_batch_stores_nothing(api, db):
    assert api.post(URL, json={"events": []}).get_json() == {"accepted": 0, "duplicates": 0, "rejected": []}
    assert stored(db) == 0


def test_only_client_keys_may_send_events(client, admin_api):
    assert checked(client).post(URL, json=ev()).status_code == 401
    response = checked(admin_api).post(URL, json=ev())
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


@pytest.fixture
def make_test_app_key(database_url, tmp_path):
    """A client and a client key for an app built with other settings."""
    from expplatform.auth import create_api_key
    from tests.conftest import make_test_app

    apps = []

    def _make(**overrides):
        app = make_test_app(database_url, tmp_path, **overrides)
        apps.append(app)
        with app.extensions["db"].write() as session:
            _record, key = create_api_key(session, "client", "limited", created_by="tests")
        return app.test_client(), key

    yield _make
    for app in apps:
        app.extensions["db"].engine.dispose()


# -- failure and concurrency ----------------------------------------------------------------


@pytest.mark.parametrize(
    "failing_table", ["outcomes", "outcome_counts", "journey_outcomes", "journey_counts", "unmatched_event_counts"]
)
def test_a_database_failure_mid_request_stores_nothing_and_is_503(api, db, checkout, failing_table):
    calls = {"n": 0}

    def fail_on_write(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(f"INSERT INTO {failing_table.upper()} "):
            calls["n"] += 1
            raise OperationalError(statement, parameters, Exception("injected fault: disk gone"))

    sa_event.listen(db.engine, "before_cursor_execute", fail_on_write)
    try:
        batch = {"events": [ev("e1"), ev("e2", type="satisfaction", value=3), ev("e3", customer_id="nobody")]}
        response = api.post(URL, json=batch)
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", fail_on_write)
    assert calls["n"] == 1
    assert response.status_code == 503
    assert response.get_json()["error"] == "database_unavailable"
    assert stored(db) == 0 and stored(db, Outcome) == 0 and stored(db, OutcomeCount) == 0
    assert stored(db, JourneyOutcome) == 0 and stored(db, JourneyCount) == 0
    # The client retries the same batch and it now counts, once.
    assert api.post(URL, json=batch).get_json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    with db.sessionmaker() as session:
        journey = {
            (stage, metric, kind, value): n
            for (_j, stage, metric, _p, kind, value), n in journey_counts(session).items()
        }
    # c1 and nobody converted, c1 rated 3: the journey counts every customer.
    assert journey == {("purchase", "", "converted", 0): 2, ("purchase", "purchase-rating", "rating", 3): 1}


def test_the_same_batch_sent_concurrently_counts_once(live_server, db, client_key, checkout):
    """Several threads post one batch at the same moment through real HTTP; exactly one
    transaction inserts each event, the others see duplicates."""
    senders = 4
    batch = {
        "events": [ev(f"e{i}", customer_id=f"c{i % 10}", stage="purchase") for i in range(60)]
        + [
            ev(f"r{i}", customer_id=f"c{i % 10}", type="satisfaction", value=1 + i % 5, timestamp=iso(at(i)))
            for i in range(40)
        ]
    }
    barrier = threading.Barrier(senders)
    results: list[dict] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            barrier.wait(timeout=30)
            response = requests.post(
                f"{live_server}{URL}", json=batch, headers={"Authorization": f"Bearer {client_key}"}, timeout=60
            )
            assert response.status_code == 200, response.text
            results.append(response.json())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(r["accepted"] for r in results) == 100
    assert sum(r["duplicates"] for r in results) == 100 * (senders - 1)
    assert stored(db) == 100
    with db.sessionmaker() as session:
        got = counts(session, checkout)
    # 10 customers converted once each; the latest rating of c_k is from r_{30+k} (value 1 + (30+k) % 5).
    expected = {("purchase", "control", "converted", 0): 5, ("purchase", "treatment", "converted", 0): 5}
    for k in range(10):
        variant = "control" if k % 2 == 0 else "treatment"
        key = ("purchase", variant, "rating", 1 + (30 + k) % 5)
        expected[key] = expected.get(key, 0) + 1
    assert got == expected
    with db.sessionmaker() as session:
        journey = {
            (stage, metric, kind, value): n
            for (_j, stage, metric, _p, kind, value), n in journey_counts(session).items()
        }
    expected_journey = {("purchase", "", "converted", 0): 10}
    for k in range(10):
        key = ("purchase", "purchase-rating", "rating", 1 + (30 + k) % 5)
        expected_journey[key] = expected_journey.get(key, 0) + 1
    assert journey == expected_journey


def test_events_are_accepted_with_csrf_protection_on(make_test_app_key, checkout):
    """Production runs with CSRF on for the web pages; bearer-key API writes are exempt."""
    client, key = make_test_app_key(wtf_csrf_enabled=True)
    response = checked(client).post(URL, json=ev(), headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.data[:200]
    assert response.get_json()["accepted"] == 1


def test_the_documented_example_is_a_valid_request(api, db, checkout):
    from expplatform.api.openapi import document

    example = document()["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert_example_valid("/events", "post", example)
    assert api.post(URL, json=example).get_json() == {"accepted": 2, "duplicates": 0, "rejected": []}
