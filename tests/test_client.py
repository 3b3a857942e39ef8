"""The Python client against the real app over HTTP: assignment with a control
fallback, batched events, retries that re-send the same event ids, timeouts."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from expplatform import journeys
from expplatform.bucketing import place
from expplatform.client import Assignment, Client, ClientError, Failure
from expplatform.definitions import DEFAULT_STAGES
from expplatform.models import Event

from .assign_support import seed

EVENTS_PATH = "/api/v1/events"


class EventsGate:
    """WSGI middleware in front of the app that records every events request body
    and can fail the first ones (503) or hold the first answer back after the app
    has stored it (the client times out on an answer that was in fact a success)."""

    def __init__(self, app, *, fail_first: int = 0, hold_first: bool = False) -> None:
        self.app = app
        self.fail_first = fail_first
        self.hold_first = hold_first
        self.release = threading.Event()
        self.answered = threading.Semaphore(0)  # released once the app has handled a request
        self.bodies: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] != EVENTS_PATH:
            return self.app(environ, start_response)
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        with self._lock:
            self.bodies.append(json.loads(raw))
            number = len(self.bodies)
        if number <= self.fail_first:
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "database_unavailable", "message": "try again"}']
        if self.hold_first and number == 1:
            answer = b"".join(self.app(environ, start_response))
            self.release.wait(10)
            return [answer]
        answer = self.app(environ, start_response)
        self.answered.release()
        return answer

    def event_ids(self) -> list[list[str]]:
        return [[event["event_id"] for event in body["events"]] for body in self.bodies]


@contextmanager
def serve(wsgi) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def stored_events(db) -> list[str]:
    with db.sessionmaker() as session:
        return list(session.scalars(select(Event.event_id).order_by(Event.event_id)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the import --------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", ["expplatform.client", "expplatform"])
def test_importing_the_client_loads_nothing_but_the_standard_library(module):
    """The client runs inside client apps, which must not pay for (or even have)
    Flask, SQLAlchemy, numpy or scipy. A fresh interpreter, isolated from the
    environment's settings (-I), imports it from this checkout."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
before = set(sys.modules)
import {module}
import expplatform
assert expplatform.__file__.startswith({str(ROOT)!r}), expplatform.__file__
loaded = {{name.partition(".")[0] for name in set(sys.modules) - before}}
print(sorted(loaded - set(sys.stdlib_module_names) - {{"expplatform"}}))
assert not {{"flask", "sqlalchemy", "numpy", "scipy"}} & set(sys.modules)
"""
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_the_app_factory_is_still_imported_from_the_package():
    from expplatform import create_app
    from expplatform.app import create_app as factory

    assert create_app is factory
    with pytest.raises(ImportError, match="no_such_thing"):
        from expplatform import no_such_thing  # noqa: F401


# -- assign ------------------------------------------------------------------------------------


def test_assign_returns_the_services_assignments(live_server, client_key, db):
    split = seed(db, "checkout-button", targeting=[{"attribute": "country", "op": "eq", "value": "FR"}])
    with Client(live_server, client_key) as client:
        got = client.assign("c-1", ["checkout-button", "nope"], attributes={"country": "FR"})
        assert got["checkout-button"] == Assignment(
            "checkout-button", ["control", "treatment"][place(split, "c-1")], True
        )
        assert got["nope"] == Assignment("nope", None, False, "unknown_experiment")
        assert (
            client.assign("c-2", ["checkout-button"], attributes={"country": "DE"})["checkout-button"].reason
            == "targeting"
        )
        assert set(client.assign("c-1", stage="purchase")) == {"checkout-button"}


def test_assign_serves_control_when_the_service_cannot_answer():
    with Client(f"http://127.0.0.1:{free_port()}", "xp_key", timeout=0.5) as client:
        started = time.monotonic()
        got = client.assign("c-1", ["a", "b"])
        assert time.monotonic() - started < 5
    assert got == {"a": Assignment("a", None, False, "unavailable"), "b": Assignment("b", None, False, "unavailable")}


def test_assign_raises_on_the_callers_mistakes(live_server, client_key, admin_key):
    with Client(live_server, admin_key) as wrong_scope, Client(live_server, client_key) as client:
        with pytest.raises(ClientError) as forbidden:
            wrong_scope.assign("c-1", ["x"])
        assert (forbidden.value.status, forbidden.value.body["error"]) == (403, "forbidden")
        with pytest.raises(ClientError) as invalid:
            client.assign("", ["x"])
        assert invalid.value.status == 400 and "customer_id" in invalid.value.body["fields"]


# -- track --------------------------------------------------------------------------------------


@pytest.fixture
def journey(db) -> None:
    """The default journey (its ``purchase`` stage has one 1-5 question), so that
    the events below name a stage the service knows."""
    with db.write() as session:
        journeys.implicit_journey(session, DEFAULT_STAGES, (1, 5))


def test_events_are_sent_in_batches(app, db, client_key, journey):
    gate = EventsGate(app)
    with serve(gate) as url, Client(url, client_key, batch_size=10, flush_interval=60) as client:
        ids = [client.track(f"c{i}", "purchase") for i in range(10)]
        # A full batch goes without a flush (the interval is a minute away).
        assert gate.answered.acquire(timeout=10), "a full batch was not sent"
        assert stored_events(db) == sorted(ids)
        ids += [client.track(f"c{i}", "purchase", "satisfaction", value=4) for i in range(15)]
        assert client.flush(timeout=10)
    assert stored_events(db) == sorted(ids)
    assert [len(batch) for batch in gate.event_ids()] == [10, 10, 5]


def test_retries_resend_the_same_event_ids_and_store_them_once(app, db, client_key, journey):
    gate = EventsGate(app, fail_first=2)
    with serve(gate) as url, Client(url, client_key, backoff=0.01) as client:
        ids = [client.track("c1", "purchase", experiment=None) for _ in range(5)]
        assert client.flush(timeout=10)
    assert gate.event_ids() == [ids, ids, ids]
    assert stored_events(db) == sorted(ids)


def test_an_answer_lost_to_a_timeout_is_retried_and_counts_once(app, db, client_key, journey):
    gate = EventsGate(app, hold_first=True)
    failures: list[Failure] = []
    try:
        with serve(gate) as url:
            client = Client(url, client_key, timeout=0.3, backoff=0.01, on_error=failures.append)
            ids = [client.track(f"c{i}", "purchase") for i in range(5)]
            assert client.flush(timeout=10)
            gate.release.set()
            client.close()
    finally:
        gate.release.set()
    # The first was stored and its answer never arrived; on a loaded machine a retry
    # can outlast the 0.3 s timeout too, and is sent again: every attempt is the
    # same batch, and the events are stored once.
    attempts = gate.event_ids()
    assert len(attempts) >= 2 and all(attempt == ids for attempt in attempts), attempts
    assert stored_events(db) == sorted(ids)
    assert failures == []


def test_rejected_events_are_reported_not_retried(live_server, db, client_key, journey):
    failures: list[Failure] = []
    with Client(live_server, client_key, on_error=failures.append) as client:
        good = client.track("c1", "purchase")
        bad = client.track("c1", "purchase", "satisfaction")  # a rating needs a value
        assert client.flush(timeout=10)
    assert stored_events(db) == [good]
    [failure] = failures
    assert [e["event_id"] for e in failure.events] == [bad] and "value_required" in failure.reason


def test_a_batch_is_given_up_after_the_last_attempt(app, db, client_key, journey):
    gate = EventsGate(app, fail_first=100)
    failures: list[Failure] = []
    with serve(gate) as url, Client(url, client_key, backoff=0.001, max_attempts=3, on_error=failures.append) as client:
        event_id = client.track("c1", "purchase")
        assert client.flush(timeout=10)
    assert gate.event_ids() == [[event_id]] * 3
    assert [e["event_id"] for e in failures[0].events] == [event_id] and "gave up" in failures[0].reason
    assert stored_events(db) == []


def test_a_full_queue_drops_new_events_and_says_so(client_key):
    failures: list[Failure] = []
    with Client(
        f"http://127.0.0.1:{free_port()}",
        client_key,
        max_queue=2,
        batch_size=100,
        flush_interval=60,
        max_attempts=1,
        on_error=failures.append,
    ) as client:
        for i in range(3):
            client.track(f"c{i}", "purchase")
        assert client.dropped == 1
        assert failures[0].reason == "queue full" and failures[0].events[0]["customer_id"] == "c2"
    assert client.flush(timeout=1)


def test_a_closed_client_refuses_new_events(client_key):
    client = Client("http://127.0.0.1:9", client_key)
    client.close()
    with pytest.raises(RuntimeError):
        client.track("c1", "purchase")
