"""Bounded waits: a locked table, a slow statement or a busy SQLite file ends the
request with a 503 JSON answer and Retry-After in seconds, never a worker hung until
gunicorn kills it; and settings that would wait as long as the worker timeout are
refused at start."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from expplatform import request_budget
from expplatform.auth import SESSION_TOKEN, create_api_key
from expplatform.config import ConfigError, load_settings
from expplatform.db import Base, get_session

from .assign_support import seed
from .conftest import POSTGRES_URL, make_test_app
from .ops_support import hot_tables_locked

# Short enough for a test, far longer than a free lock takes.
WAITS = {"sqlite_busy_timeout_ms": 300, "db_lock_timeout_ms": 300, "db_statement_timeout_ms": 1500}
BOUND_SECONDS = 5.0  # what the test tolerates; without the timeouts the calls never end


@pytest.fixture
def app(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, **WAITS)
    yield app
    app.extensions["db"].engine.dispose()


def within(seconds: float, call: Callable[[], Any], on_timeout: Callable[[], None]) -> tuple[Any, float]:
    """Run ``call`` in a thread; its result and duration if it ends within ``seconds``.
    Otherwise fail, after ``on_timeout`` (which lets the call finish)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = call()
        except BaseException as exc:  # reported below, in the test's thread
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        on_timeout()
        thread.join(30)
        pytest.fail(f"the call still waited after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], outcome["seconds"]


def assert_retryable_503(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "1"
    assert response.json["error"] == "database_unavailable"
    assert response.json["message"]


def test_assign_and_events_behind_a_lock_are_a_prompt_503(app, db, client_key, database_url):
    seed(db, "checkout-button")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {client_key}"}
    client.post("/api/v1/assign", json={"customer_id": "warm"}, headers=headers)  # caches filled
    batch = {"events": [{"event_id": "e-1", "customer_id": "warm", "stage": "purchase", "type": "conversion"}]}
    with hot_tables_locked(database_url) as release:
        assign, assign_seconds = within(
            BOUND_SECONDS,
            lambda: client.post("/api/v1/assign", json={"customer_id": "new-1"}, headers=headers),
            release,
        )
        events, events_seconds = within(
            BOUND_SECONDS, lambda: client.post("/api/v1/events", json=batch, headers=headers), release
        )
        liveness, liveness_seconds = within(1.0, lambda: client.get("/healthz"), release)
    assert_retryable_503(assign)
    assert_retryable_503(events)
    assert liveness.status_code == 200 and liveness_seconds < 1.0
    assert assign_seconds < BOUND_SECONDS and events_seconds < BOUND_SECONDS
    # The lock gone, the same calls succeed.
    assert client.post("/api/v1/assign", json={"customer_id": "new-1"}, headers=headers).status_code == 200
    assert client.post("/api/v1/events", json=batch, headers=headers).status_code == 200


@pytest.mark.parametrize("endpoint", ["assign", "events"])
def test_a_request_that_queued_in_its_worker_waits_only_what_is_left_of_the_busy_timeout(tmp_path, endpoint):
    """SQLite: a request the worker queued 2.8 s ago (its threads all waiting for a
    lock) waits 0.2 s more for the lock, not the whole busy timeout of 3 s again; and
    one that waited out all of it still goes through at once when the lock is free."""
    url = f"sqlite:///{tmp_path / 'queued.sqlite3'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    app = make_test_app(url, tmp_path, sqlite_busy_timeout_ms=3000)
    db = app.extensions["db"]
    try:
        seed(db, "checkout-button")
        with db.write() as session:
            _record, key = create_api_key(session, "client", "client app", created_by="tests")
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        client.post("/api/v1/assign", json={"customer_id": "warm"}, headers=headers)  # caches filled
        path, body = {
            "assign": ("/api/v1/assign", {"customer_id": "new-1"}),
            "events": (
                "/api/v1/events",
                {"events": [{"event_id": "e-1", "customer_id": "warm", "stage": "purchase", "type": "conversion"}]},
            ),
        }[endpoint]

        def queued(seconds_ago: float) -> Any:
            with request_budget.queued_at(time.monotonic() - seconds_ago):
                return client.post(path, json=body, headers=headers)

        with hot_tables_locked(url) as release:
            response, seconds = within(BOUND_SECONDS, lambda: queued(2.8), release)
        assert_retryable_503(response)
        assert seconds < 1.5, f"waited {seconds:.2f} s: the whole busy timeout again"
        assert queued(10.0).status_code == 200
    finally:
        db.engine.dispose()


def test_every_connection_carries_the_bounded_waits(app, db, database_url):
    """The pool's connections and the driver connections the assignment hot path opens."""
    raw = db.engine.raw_connection()
    try:
        cursor = raw.dbapi_connection.cursor()
        if db.settings.is_sqlite:
            cursor.execute("PRAGMA busy_timeout")
            assert cursor.fetchone()[0] == WAITS["sqlite_busy_timeout_ms"]
        else:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "1500ms"
            cursor.execute("SHOW lock_timeout")
            assert cursor.fetchone()[0] == "300ms"
            cursor.execute("SHOW search_path")  # the URL's own options are kept
            assert cursor.fetchone()[0] == make_url(database_url).query["options"].split("=", 1)[1]
    finally:
        raw.close()


@pytest.mark.skipif(
    not POSTGRES_URL, reason="statement timeouts are PostgreSQL's (needs EXPPLATFORM_TEST_POSTGRES_URL)"
)
def test_a_statement_over_the_timeout_is_a_503(postgres_tables_url, tmp_path):
    app = make_test_app(postgres_tables_url, tmp_path, **WAITS)

    def slow() -> dict[str, str]:
        get_session().execute(text("SELECT pg_sleep(10)"))
        return {"status": "done"}

    app.add_url_rule("/api/v1/slow", view_func=slow)
    try:
        response, seconds = within(BOUND_SECONDS, lambda: app.test_client().get("/api/v1/slow"), lambda: None)
    finally:
        app.extensions["db"].engine.dispose()
    assert_retryable_503(response)
    assert "in time" in response.json["message"]
    assert seconds < BOUND_SECONDS


@pytest.mark.parametrize(
    "variable",
    ["SQLITE_BUSY_TIMEOUT_MS", "DB_STATEMENT_TIMEOUT_MS", "DB_LOCK_TIMEOUT_MS", "DB_CONNECT_TIMEOUT_SECONDS"],
)
def test_a_wait_as_long_as_the_worker_timeout_is_refused(tmp_path, variable):
    value = "15" if variable.endswith("SECONDS") else "15000"  # twice that is the worker timeout
    environ = {"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), "EXPPLATFORM_SECRET_KEY": "x" * 32}
    with pytest.raises(ConfigError, match=f"EXPPLATFORM_{variable}.*EXPPLATFORM_WORKER_TIMEOUT_SECONDS"):
        load_settings(environ={**environ, f"EXPPLATFORM_{variable}": value})
    shorter = load_settings(
        environ={**environ, f"EXPPLATFORM_{variable}": value, "EXPPLATFORM_WORKER_TIMEOUT_SECONDS": "60"}
    )
    assert shorter.worker_timeout_seconds == 60


def test_the_default_waits_end_before_the_default_worker_timeout(tmp_path):
    """Twice over: the assignment fast path hands a failed call to the Flask view."""
    settings = load_settings(environ={"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), "EXPPLATFORM_SECRET_KEY": "x" * 32})
    limit_ms = settings.worker_timeout_seconds * 1000
    assert 2 * settings.sqlite_busy_timeout_ms < limit_ms
    # statement_timeout counts the lock wait too: a statement never outlasts it
    assert 2 * max(settings.db_statement_timeout_ms, settings.db_lock_timeout_ms) < limit_ms
    assert 2 * settings.db_connect_timeout_seconds * 1000 < limit_ms


def test_a_web_page_with_the_database_down_is_a_503_not_a_500(database_url, tmp_path):
    """The pages are HTML, so their 503 is a line of text; still a 503 with Retry-After."""
    if database_url.startswith("sqlite"):
        unreachable = f"sqlite:///{tmp_path / 'gone' / 'missing.sqlite3'}"
    else:
        unreachable = make_url(database_url).set(host="127.0.0.1", port=9).render_as_string(hide_password=False)
    app = make_test_app(unreachable, tmp_path)
    client = app.test_client()
    with client.session_transaction() as session:
        session[SESSION_TOKEN] = "a-login-token"  # looking it up needs the database
    try:
        response = client.get("/experiments")
    finally:
        app.extensions["db"].engine.dispose()
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.mimetype == "text/plain" and "Retry" in response.get_data(as_text=True)


def test_background_reads_may_run_longer_than_requests(app, db):
    """Report series and segments are computed where no request waits: their statements
    get the background timeout, and every other session keeps the request timeout."""
    if db.settings.is_sqlite:
        with db.background_reader() as session:  # SQLite has no statement timeout: a plain session
            assert session.execute(text("SELECT 1")).scalar() == 1
        return
    with db.background_reader() as session:
        assert session.execute(text("SHOW statement_timeout")).scalar() == "5min"
    with db.sessionmaker() as session:
        assert session.execute(text("SHOW statement_timeout")).scalar() == "1500ms"


def test_an_exhausted_pool_is_a_prompt_503(database_url, tmp_path, client_key_for):
    """Every pooled connection held (by stuck requests, say): a request waits the
    connect timeout for one, then 503, instead of gunicorn's worker timeout."""
    app = make_test_app(database_url, tmp_path, pool_size=1, db_connect_timeout_seconds=1)
    engine = app.extensions["db"].engine
    headers = {"Authorization": f"Bearer {client_key_for(app.extensions['db'])}"}
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
    try:
        batch = {"events": [{"event_id": "e-1", "customer_id": "c", "stage": "purchase", "type": "conversion"}]}
        response, seconds = within(
            BOUND_SECONDS, lambda: app.test_client().post("/api/v1/events", json=batch, headers=headers), lambda: None
        )
    finally:
        for connection in held:
            connection.close()
        engine.dispose()
    assert_retryable_503(response)
    assert seconds < BOUND_SECONDS


@pytest.fixture
def client_key_for():
    def make(db) -> str:
        with db.write() as session:
            return create_api_key(session, "client", "pool", created_by="tests")[1]

    return make


def test_event_batches_queued_behind_a_lock_each_wait_at_most_the_busy_timeout(tmp_path, client_key_for):
    """On SQLite, batches take turns for the write lock: the turn and the BEGIN share
    one busy timeout, so four batches stuck behind a held lock each answer 503 after
    about one timeout, not one after another (the last after four)."""
    busy_ms = 1000
    app = make_test_app(f"sqlite:///{tmp_path / 'turns.sqlite3'}", tmp_path, sqlite_busy_timeout_ms=busy_ms)
    Base.metadata.create_all(app.extensions["db"].engine)
    key = client_key_for(app.extensions["db"])
    seed(app.extensions["db"], "checkout-button")
    headers = {"Authorization": f"Bearer {key}"}
    answers: list[tuple[int, float]] = []
    # A test app records a key's use inside its first request (a served one leaves it
    # to a background thread): use the key once now, so the batches below wait for
    # their turn and BEGIN only, as they do in service.
    warm = {"events": [{"event_id": "warm", "customer_id": "c", "stage": "purchase", "type": "conversion"}]}
    assert app.test_client().post("/api/v1/events", json=warm, headers=headers).status_code == 200

    def send(i: int) -> None:
        batch = {"events": [{"event_id": f"e-{i}", "customer_id": "c", "stage": "purchase", "type": "conversion"}]}
        started = time.monotonic()
        status = app.test_client().post("/api/v1/events", json=batch, headers=headers).status_code
        answers.append((status, time.monotonic() - started))

    try:
        with hot_tables_locked(f"sqlite:///{tmp_path / 'turns.sqlite3'}"):
            threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    finally:
        app.extensions["db"].engine.dispose()
    assert [status for status, _ in answers] == [503] * 4
    # One timeout each (plus slack for a loaded machine); taking turns would make the
    # last wait four.
    assert max(seconds for _, seconds in answers) < 2.5 * busy_ms / 1000
