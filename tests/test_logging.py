"""Request ids and structured logs: the id is taken from X-Request-ID (or made), echoed,
and on every line written during the request; each request ends with one access line
(route, status, duration), an ERROR line for every 5xx; under gunicorn every line on
stderr, gunicorn's own included, is one JSON object with time, level and pid."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
from sqlalchemy.exc import OperationalError

from expplatform.assignment import ExposureStore
from expplatform.observability import JsonFormatter

from .assign_support import seed
from .conftest import make_test_app
from .gunicorn_support import get, serve

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def app(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path)
    yield app
    app.extensions["db"].engine.dispose()


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "expplatform.access"]


def test_the_request_id_is_echoed_and_on_the_access_line(app, caplog):
    caplog.set_level(logging.INFO, logger="expplatform")
    response = app.test_client().get("/healthz", headers={"X-Request-ID": "req-7f3a"})
    assert response.headers["X-Request-ID"] == "req-7f3a"
    (line,) = access_lines(caplog)
    assert line.request_id == "req-7f3a" and line.levelno == logging.INFO
    assert (line.method, line.path, line.route, line.status) == ("GET", "/healthz", "/healthz", 200)
    assert isinstance(line.duration_ms, float) and line.duration_ms >= 0


@pytest.mark.parametrize("given", [None, "", "two words", "x" * 129, 'a"}{"level": "forged'])
def test_a_missing_or_unsafe_request_id_is_replaced(app, given):
    headers = {} if given is None else {"X-Request-ID": given}
    response = app.test_client().get("/healthz", headers=headers)
    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


def test_routes_are_url_rules_also_for_calls_answered_in_front_of_flask(app, db, client_key, caplog):
    seed(db, "checkout-button")
    caplog.set_level(logging.INFO, logger="expplatform")
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {client_key}"}
    fast = client.post("/api/v1/assign", json={"customer_id": "c1"}, headers=bearer)
    assert fast.status_code == 200 and GENERATED.fullmatch(fast.headers["X-Request-ID"])
    client.get("/api/v1/experiments/checkout-button", headers=bearer)  # 403: a client key
    client.get("/no/such/page")
    routes = [(line.route, line.status) for line in access_lines(caplog)]
    assert routes == [("/api/v1/assign", 200), ("/api/v1/experiments/<key>", 403), (None, 404)]


def test_a_503_is_logged_with_its_cause_and_request_id(app, db, client_key, caplog, monkeypatch):
    seed(db, "checkout-button")

    def unavailable(self, sql, params, **_kwargs):
        raise OperationalError(sql, params, Exception("could not connect to server"))

    monkeypatch.setattr(ExposureStore, "_run", unavailable)
    caplog.set_level(logging.WARNING, logger="expplatform")  # the routine lines off, failures still on
    response = app.test_client().post(
        "/api/v1/assign",
        json={"customer_id": "c1"},
        headers={"Authorization": f"Bearer {client_key}", "X-Request-ID": "outage-1"},
    )
    assert response.status_code == 503 and response.headers["X-Request-ID"] == "outage-1"
    lines = [r for r in caplog.records if r.request_id == "outage-1"]
    assert [(r.name, r.levelname) for r in lines] == [
        ("expplatform.api.errors", "WARNING"),
        ("expplatform.access", "ERROR"),
    ]
    assert "could not connect to server" in lines[0].getMessage() and lines[1].status == 503


def test_a_line_is_one_json_object_with_time_level_pid_and_request_id():
    logger = logging.getLogger("expplatform.tests")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info(), extra={"status": 500}
        )
    record.request_id = "r-1"
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["level"] == "ERROR" and line["pid"] > 0 and line["request_id"] == "r-1"
    assert line["message"] == "failed x" and line["status"] == 500 and "boom" in line["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_under_gunicorn_every_line_is_json_and_carries_the_request_id(tmp_path):
    with serve(tmp_path, ["--workers", "1"]) as server:
        response = get(server.port, "/healthz", {"X-Request-ID": "from-the-edge"})
        assert response.status == 200 and response.getheader("X-Request-ID") == "from-the-edge"
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "pid", "message"} <= line.keys() for line in lines)
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    (access,) = [line for line in lines if line.get("request_id") == "from-the-edge"]
    assert (access["route"], access["status"], access["level"]) == ("/healthz", 200, "INFO")
    assert access["pid"] != server.master_pid and access["duration_ms"] >= 0
