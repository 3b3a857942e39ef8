"""The assignment hot path, answered in front of Flask.

Client apps call ``POST /api/v1/assign`` on every journey step, so its cost per call
is the platform's capacity. Flask's request machinery (request and app contexts, URL
matching, hooks, session, response object) costs more CPU than the assignment itself
(``bench/assign.py``), so the common call, well formed and sent with a key, is
answered here at the WSGI level with the functions the Flask view and its guard use:
``auth.key_principal`` and ``auth.check_access`` (with the view's own ``api_access``
requirements), ``api.assign.parse_body`` and ``api.assign.answer``. Its path is the
view's, read from the URL map.

Everything else goes to the Flask view in ``api/assign.py``, which stays the one
reference for behaviour: other methods and paths, cookies (a browser session), other
content types, no ``Authorization`` header, a body of unknown or excessive length. A
call refused here (bad JSON, a validation error, a wrong key) or failing unexpectedly
is handed to Flask whole, body included, and Flask answers it as it answers every
call; assigning is idempotent (the exposure is insert-if-absent), so running it again
is safe. A database that cannot be reached is answered here, with the 503 of
``api/errors.py``: running the assignment again in Flask would only double the load
on a database in trouble.

Answering in front of Flask also skips what the app runs around a view: request hooks,
error handlers, signal receivers, its session interface, WSGI middleware. ``SKIPPED``
lists each one the app has, with why this path may skip it. ``init_app`` leaves every
call to Flask (and says so in the log) if the app has one not listed, and
``tests/test_fast_assign.py`` fails until it is listed, so that something added later
(a request id, an access log) is handled here rather than silently skipped. The same
tests check that both paths give byte-identical responses.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from flask import signals as flask_signals
from sqlalchemy.exc import DBAPIError

from ..auth import check_access, key_principal
from ..errors import DomainError
from .assign import RESPONSE_HEADERS, answer, parse_body, post_assign
from .errors import database_unavailable

log = logging.getLogger(__name__)
_STATIC_HEADERS = [("Content-Type", "application/json"), *RESPONSE_HEADERS.items()]
# Refusals the Flask view gives again, with its own error body: not worth a log line.
_EXPECTED = (DomainError, ValueError, RecursionError)

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]

# What Flask runs around the assignment view that this path does not, as named by
# around_the_view(), and why skipping each one is safe.
_HANDED_OVER = "this path hands every error but an unreachable database to Flask, which answers it"
SKIPPED: dict[str, str] = {
    "before_request flask_wtf.csrf.CSRFProtect.init_app.<locals>.csrf_protect": (
        "the API blueprint is exempt from CSRF (api/__init__.py)"
    ),
    "after_request expplatform.security._add_headers": (
        "it adds the pages' security headers, and leaves every response under /api/ as it is"
    ),
    "teardown_appcontext expplatform.db._close_session": (
        "it closes the request's session (db.get_session), which this path never opens"
    ),
    "error_handler expplatform.errors.DomainError expplatform.api.errors._handle_domain_error": _HANDED_OVER,
    "error_handler werkzeug.exceptions.HTTPException expplatform.api.errors._handle_http_exception": _HANDED_OVER,
    "error_handler builtins.Exception expplatform.api.errors._handle_unexpected": _HANDED_OVER,
    "error_handler sqlalchemy.exc.DBAPIError expplatform.api.errors._handle_database_error": (
        "this path answers an unreachable database with the same api.errors.database_unavailable, "
        "and hands other database errors to Flask"
    ),
    "error_handler sqlalchemy.exc.TimeoutError expplatform.api.errors._handle_pool_timeout": (
        "this path writes through its own connection per thread, never the pool"
    ),
    "teardown_request expplatform.observability._note_route_of_request": (
        "it tells the request log the route Flask matched; the log (outside this path) names this path's own"
    ),
    "error_handler flask_wtf.csrf.CSRFError expplatform.web._csrf_failed": "CSRF is not checked on the API",
    "session_interface expplatform.cookie_session.CookieSessionInterface": (
        "a call with a cookie goes to Flask; without one the session is empty and never saved"
    ),
    "wsgi_app flask.app.Flask.wsgi_app": "no WSGI middleware stands between this path and Flask",
}

_SIGNALS = (
    "request_started",
    "request_finished",
    "got_request_exception",
    "request_tearing_down",
    "appcontext_pushed",
    "appcontext_tearing_down",
    "appcontext_popped",
)


class FastAssign:
    """WSGI middleware: ``app.wsgi_app = FastAssign(app, app.wsgi_app, path, access)``."""

    def __init__(self, app: Flask, flask_wsgi_app: WSGIApp, path: str, access: Mapping[str, Any]) -> None:
        self.app = app
        self.flask_wsgi_app = flask_wsgi_app
        self.path = path
        self.access = dict(access)
        self._max_body = app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = self._eligible_length(environ)
        if length is None:
            return self.flask_wsgi_app(environ, start_response)
        try:
            body = environ["wsgi.input"].read(length)
        except OSError:  # the client went away mid-body (gunicorn's NoMoreData is one)
            body = b""
        try:
            payload = self._answer(environ, body) if len(body) == length else None
        except DBAPIError as exc:
            with self.app.app_context():
                unavailable = database_unavailable(exc, where=f"POST {self.path}")
            if unavailable is not None:
                return unavailable(environ, start_response)
            payload = None  # Flask answers it (and logs it) as it answers every database error
        if payload is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask_wsgi_app(environ, start_response)
        start_response("200 OK", [*_STATIC_HEADERS, ("Content-Length", str(len(payload)))])
        return [payload]

    def _eligible_length(self, environ: dict[str, Any]) -> int | None:
        """The body length of a call this path may answer, else None."""
        if (
            environ.get("PATH_INFO") != self.path
            or environ.get("REQUEST_METHOD") != "POST"
            or "HTTP_COOKIE" in environ
            or not environ.get("HTTP_AUTHORIZATION")
            or environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json"
        ):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self._max_body:
            return None
        return int(length)

    def _answer(self, environ: dict[str, Any], body: bytes) -> bytes | None:
        """The 200 body, or None to hand the call to Flask; raises DBAPIError."""
        try:
            check_access(key_principal(environ["HTTP_AUTHORIZATION"], environ, self.app), **self.access)
            return answer(self.app, parse_body(json.loads(body)))
        except _EXPECTED:
            return None
        except DBAPIError:
            raise
        except Exception:
            log.exception("assignment fast path failed; the Flask view answers this call")
            return None


def installed(app: Flask) -> FastAssign | None:
    """The fast path in the app's WSGI chain, or None. Layers outside it (the request
    log) see every call, so only what lies inside it can be skipped."""
    layer: Any = app.wsgi_app
    while layer is not None and not isinstance(layer, FastAssign):
        layer = getattr(layer, "wsgi_app", None)
    return layer


def around_the_view(app: Flask) -> frozenset[str]:
    """Everything Flask would run around the assignment view besides the view itself,
    named as in ``SKIPPED``: request hooks, error handlers and signal receivers of
    the app and the view's blueprints, the session interface, and the WSGI app this
    path stands in front of."""
    endpoint = _assign_rule(app).endpoint
    parts = endpoint.split(".")[:-1]
    scopes: list[str | None] = [None, *(".".join(parts[:i]) for i in range(1, len(parts) + 1))]
    found: set[str] = set()
    hooks: dict[str, Mapping[str | None, Iterable[Callable]]] = {
        "before_request": app.before_request_funcs,
        "after_request": app.after_request_funcs,
        "teardown_request": app.teardown_request_funcs,
        "url_value_preprocessor": app.url_value_preprocessors,
    }
    for kind, registry in hooks.items():
        for scope in scopes:
            found.update(f"{kind} {_name(function)}" for function in registry.get(scope, ()))
    found.update(f"teardown_appcontext {_name(function)}" for function in app.teardown_appcontext_funcs)
    for scope in scopes:
        for by_class in app.error_handler_spec.get(scope, {}).values():
            found.update(f"error_handler {_name(cls)} {_name(handler)}" for cls, handler in by_class.items())
    for signal_name in _SIGNALS:
        receivers = getattr(flask_signals, signal_name).receivers_for(app)
        found.update(f"signal {signal_name} {_name(receiver)}" for receiver in receivers)
    found.add(f"session_interface {_name(type(app.session_interface))}")
    fast = installed(app)
    wrapped = fast.flask_wsgi_app if fast is not None else app.wsgi_app
    found.add(f"wsgi_app {_name(wrapped)}")
    return frozenset(found)


def _name(thing: Any) -> str:
    qualname = getattr(thing, "__qualname__", None) or type(thing).__qualname__
    module = getattr(thing, "__module__", None) or type(thing).__module__
    return f"{module}.{qualname}"


def _assign_rule(app: Flask) -> Any:
    """The URL rule of the Flask view this path answers for (POST assignment)."""
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        if app.view_functions.get(rule.endpoint) is post_assign and "POST" in (rule.methods or ())
    ]
    if len(rules) != 1 or rules[0].arguments:
        raise LookupError(f"the assignment view must have one POST route without arguments, not {rules}")
    return rules[0]


def init_app(app: Flask) -> None:
    """Put the fast path in front of the app, last, once everything else is in place;
    unless the app runs something around the view that is not in ``SKIPPED``: then
    Flask answers every call, slower but with everything the app does."""
    unknown = sorted(around_the_view(app) - SKIPPED.keys())
    if unknown:
        log.warning(
            "assignment fast path not installed: the app runs %s around the view, which it would skip "
            "(see SKIPPED in %s)",
            ", ".join(unknown),
            __name__,
        )
        return
    rule = _assign_rule(app)
    access = post_assign.required_access  # set by auth.api_access
    app.wsgi_app = FastAssign(app, app.wsgi_app, rule.rule, access)  # type: ignore[method-assign]
