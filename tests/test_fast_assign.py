"""The assignment fast path (api/fast_assign.py) answers exactly as the Flask view does.

One script of calls runs twice on the same database, once through the Flask view alone
and once through the app as served (fast path in front), with the exposures deleted in
between; the responses must be byte-identical (status, headers, body) and leave the
same exposures. The Flask view is counted, to show which calls the fast path answered
itself and which it handed over.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from flask import signals
from sqlalchemy import delete, select, update
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Response

from expplatform.api import fast_assign
from expplatform.api.fast_assign import SKIPPED
from expplatform.models import Exposure, Variant

from .assign_support import URL, exposures, seed

HAPPY = "fast path"
HANDED_OVER = "Flask view"
SWAP_AFTER = 2  # calls; see run()
UTF8_JSON = "application/json; charset=utf-8"


def script(client_key: str, admin_key: str) -> list[tuple[str, dict[str, Any]]]:
    bearer = {"Authorization": f"Bearer {client_key}"}

    def post(body: Any, **headers: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "data": json.dumps(body),
            "headers": {**bearer, "Content-Type": "application/json", **headers},
        }

    def raw(data: bytes | str, **headers: str) -> dict[str, Any]:
        return {"method": "POST", "data": data, "headers": {**bearer, **headers}}

    named = ["checkout-button", "hero", "paused-one", "draft-one", "nope"]
    return [
        (HAPPY, post({"customer_id": "c1", "attributes": {"country": "FR", "platform": "ios", "visits": 3}})),
        (HAPPY, post({"customer_id": "c1", "attributes": {"country": "DE"}})),  # repeat: recorded variant
        (HAPPY, post({"customer_id": "c2", "experiments": named, "attributes": {"platform": "web"}})),
        (HAPPY, post({"customer_id": "c2", "experiments": named})),
        (HAPPY, post({"customer_id": "c3", "stage": "consideration", "attributes": {"platform": "web"}})),
        (
            HAPPY,
            post({"customer_id": "c4", "experiments": ["hero"], "attributes": {"platform": "android"}}),
        ),  # targeting
        (HAPPY, post({"customer_id": "qa-1", "experiments": ["checkout-button"]})),  # forced
        (HAPPY, post({"customer_id": "c5", "attributes": {"member": True}}, **{"Content-Type": UTF8_JSON})),
        (HAPPY, post({"customer_id": "c1", "experiments": ["checkout-button"]})),  # mismatch counted (see below)
        (HAPPY, post({"customer_id": "c7"}, Authorization=f"bearer {client_key}")),  # the guards' own parsing
        # Everything below is handed to the Flask view, which gives its answer.
        (HANDED_OVER, raw(b'{"customer_id": ', **{"Content-Type": "application/json"})),
        (HANDED_OVER, raw(b'\xff\xfe{"x', **{"Content-Type": "application/json"})),
        (HANDED_OVER, post({"customer_id": "c6", "colour": "red"})),
        (HANDED_OVER, post({"customer_id": "x" * 300})),
        (HANDED_OVER, post({"customer_id": "c6", "attributes": [1, 2]})),
        (HANDED_OVER, post([{"customer_id": "c6"}])),
        (HANDED_OVER, post({"customer_id": "c6"}, Authorization=f"Bearer {admin_key}")),
        (HANDED_OVER, post({"customer_id": "c6"}, Authorization="Bearer xp_not-a-key")),
        (HANDED_OVER, raw(json.dumps({"customer_id": "c6"}), **{"Content-Type": "text/plain"})),
        (HANDED_OVER, post({"customer_id": "c6"}, Authorization=f"Basic {client_key}")),
        (HANDED_OVER, post({"customer_id": "c6"}, Authorization="Bearer  ")),
        (HANDED_OVER, {**post({"customer_id": "c8"}), "cookies": {"session": "whatever"}}),
        (HANDED_OVER, {"method": "POST", "data": "", "headers": bearer}),
        (
            HANDED_OVER,
            {"method": "GET", "query_string": {"customer_id": "c9", "experiment": "hero"}, "headers": bearer},
        ),
    ]


@pytest.fixture
def seeded(db):
    seed(db, "checkout-button", forced={"qa-1": "treatment"})
    seed(db, "hero", stage="consideration", targeting=[{"attribute": "platform", "op": "in", "value": ["web", "ios"]}])
    seed(db, "paused-one", status="paused")
    seed(db, "draft-one", status="draft")
    return db


def run(wsgi_app, db, calls, flask_calls: list[int]) -> tuple[list[tuple], list[tuple]]:
    answers = []
    for expected_path, request in calls:
        before = len(flask_calls)
        client = Client(wsgi_app)  # werkzeug keeps cookies in the client, not in headers
        for name, value in request.pop("cookies", {}).items():
            client.set_cookie(name, value)
        response = client.open(URL, **request)
        used_flask = before != len(flask_calls)
        answers.append((expected_path, used_flask, response.status, sorted(response.headers.items()), response.data))
        if len(answers) == SWAP_AFTER:
            # Edit the recorded variant of c1's exposure, as only a hand edit can: c1's
            # next call is served the recorded one and counts a mismatch.
            _swap_recorded_variant(db, "c1")
    stored = sorted(
        (e.customer_id, e.experiment_id, e.variant_id, json.dumps(e.attributes, sort_keys=True), e.forced, e.mismatches)
        for e in exposures(db)
    )
    return answers, stored


def _swap_recorded_variant(db, customer_id: str) -> None:
    with db.write() as session:
        exposure = session.scalars(select(Exposure).where(Exposure.customer_id == customer_id)).first()
        other = session.scalar(
            select(Variant.id).where(Variant.experiment_id == exposure.experiment_id, Variant.id != exposure.variant_id)
        )
        session.execute(update(Exposure).where(Exposure.id == exposure.id).values(variant_id=other))


def test_fast_path_and_flask_view_give_identical_answers_and_exposures(app, seeded, client_key, admin_key):
    served = fast_assign.installed(app)
    flask_view = served.flask_wsgi_app
    flask_calls: list[int] = []

    def counted(environ, start_response):
        flask_calls.append(1)
        return flask_view(environ, start_response)

    by_flask, stored_by_flask = run(counted, seeded, script(client_key, admin_key), flask_calls)
    with seeded.write() as session:
        session.execute(delete(Exposure))
    served.flask_wsgi_app = counted
    try:
        by_fast_path, stored_by_fast_path = run(served, seeded, script(client_key, admin_key), flask_calls)
    finally:
        served.flask_wsgi_app = flask_view

    assert len(stored_by_flask) >= 6 and stored_by_fast_path == stored_by_flask
    assert any(mismatches == 1 for *_, mismatches in stored_by_flask)
    for (expected_path, _, *flask_answer), (_, used_flask, *fast_answer) in zip(by_flask, by_fast_path, strict=True):
        assert fast_answer == flask_answer
        assert used_flask == (expected_path == HANDED_OVER), (expected_path, fast_answer)
    statuses = {status for _, _, status, _, _ in by_flask}
    assert {"200 OK", "400 BAD REQUEST", "401 UNAUTHORIZED", "403 FORBIDDEN"} <= statuses


def _call(wsgi_app, key: str, customer_id: str) -> tuple[str, list[tuple[str, str]], bytes]:
    response = Client(wsgi_app).post(URL, json={"customer_id": customer_id}, headers={"Authorization": f"Bearer {key}"})
    return response.status, sorted(response.headers.items()), response.data


def test_an_unreachable_database_is_answered_by_the_fast_path_as_flask_answers_it(app, seeded, client_key, monkeypatch):
    """An outage: the fast path gives the same 503 (JSON, Retry-After) itself, without
    running the assignment a second time in the Flask view."""
    from sqlalchemy.exc import OperationalError

    from expplatform import assignment

    attempts: list[str] = []

    def unavailable(store, definitions, request):
        attempts.append(request.customer_id)
        raise OperationalError("INSERT INTO exposures ...", {}, Exception("connection refused"))

    monkeypatch.setattr(assignment, "assign", unavailable)
    served = fast_assign.installed(app)
    by_flask = _call(served.flask_wsgi_app, client_key, "c1")
    assert attempts == ["c1"]
    by_fast_path = _call(served, client_key, "c2")
    assert attempts == ["c1", "c2"]  # the Flask view did not run it again
    assert by_fast_path == by_flask
    status, headers, body = by_fast_path
    assert status == "503 SERVICE UNAVAILABLE" and ("Retry-After", "1") in headers
    assert json.loads(body)["error"] == "database_unavailable"


def test_any_other_database_error_is_handed_to_flask(app, seeded, client_key, monkeypatch, caplog):
    """Not an outage (a bug, say): Flask answers it, logged, as it answers any such error."""
    from sqlalchemy.exc import IntegrityError

    from expplatform import assignment

    attempts: list[str] = []

    def broken(store, definitions, request):
        attempts.append(request.customer_id)
        raise IntegrityError("INSERT INTO exposures ...", {}, Exception("constraint"))

    monkeypatch.setattr(assignment, "assign", broken)
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)  # as served, not as tested
    status, _headers, body = _call(fast_assign.installed(app), client_key, "c1")
    assert attempts == ["c1", "c1"]
    assert status == "500 INTERNAL SERVER ERROR" and "error" in json.loads(body)
    assert any(r.exc_info and r.exc_info[0] is IntegrityError and r.name == "expplatform" for r in caplog.records)


class _Disconnecting(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise OSError("client went away")


@pytest.mark.parametrize(
    "stream", [io.BytesIO(b'{"customer_id": "c1"'), _Disconnecting()], ids=["short body", "disconnect"]
)
def test_a_body_cut_short_is_handed_to_flask_and_refused(app, seeded, client_key, stream):
    environ = EnvironBuilder(
        path=URL, method="POST", headers={"Authorization": f"Bearer {client_key}"}, content_type="application/json"
    ).get_environ()
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": "40"})
    response = Response.from_app(fast_assign.installed(app), environ)
    assert response.status_code == 400 and response.json["error"] == "malformed_json"
    assert exposures(seeded) == []


def test_a_refused_key_is_looked_up_once_not_again_by_the_flask_view(app, seeded, admin_key):
    from .assign_support import statements

    unknown = "xp_" + "n" * 43
    for key, status in ((unknown, 401), (admin_key, 403)):
        with statements(seeded) as seen:
            response = Client(app).post(URL, json={"customer_id": "c1"}, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == status
        lookups = [s for s in seen if re.search(r"FROM api_keys\s+WHERE api_keys.key_hash =", s)]
        assert len(lookups) == (1 if key == unknown else 0)


def test_the_app_runs_nothing_around_the_view_that_the_fast_path_does_not_know_it_may_skip(app):
    """Fails when something is added to the app that the fast path would skip: a request
    hook, an error handler, a signal receiver, a WSGI middleware. Handle it in
    api/fast_assign.py, then list it in SKIPPED with why skipping it is safe."""
    assert fast_assign.installed(app) is not None
    assert fast_assign.around_the_view(app) == SKIPPED.keys()


def _request_id(response):  # what a later change might add
    response.headers["X-Request-Id"] = "r-1"
    return response


@pytest.mark.parametrize(
    "add",
    [
        lambda app: app.before_request(lambda: None),
        lambda app: app.after_request(_request_id),
        lambda app: app.teardown_request(lambda exc: None),
        lambda app: app.teardown_appcontext(lambda exc: None),
        lambda app: app.register_error_handler(TimeoutError, lambda exc: ("late", 504)),
        lambda app: app.before_request_funcs.setdefault("api", []).append(lambda: None),
        lambda app: signals.request_started.connect(_request_id, app),
        lambda app: setattr(app, "wsgi_app", ProxyFix(app.wsgi_app)),
    ],
    ids=[
        "before_request",
        "after_request",
        "teardown_request",
        "teardown_appcontext",
        "error_handler",
        "blueprint before_request",
        "signal",
        "middleware",
    ],
)
def test_something_new_around_the_view_is_noticed_and_keeps_the_fast_path_out(tmp_path, add):
    from .conftest import make_test_app

    app = make_test_app("sqlite://", tmp_path)
    app.wsgi_app = fast_assign.installed(app).flask_wsgi_app  # as before fast_assign.init_app
    try:
        add(app)
        assert not fast_assign.around_the_view(app) <= SKIPPED.keys()
        fast_assign.init_app(app)
        assert fast_assign.installed(app) is None
    finally:
        signals.request_started.disconnect(_request_id)
        app.extensions["db"].engine.dispose()


def test_a_hook_of_another_blueprint_is_not_around_the_view(app):
    app.before_request_funcs.setdefault("web", []).append(lambda: None)
    assert fast_assign.around_the_view(app) == SKIPPED.keys()


def test_the_fast_path_serves_the_route_of_the_view_from_the_url_map(app):
    fast = fast_assign.installed(app)
    assert fast is not None and fast.path == "/api/v1/assign" == URL
    assert fast.access == {"scope": "client", "session_role": None}
