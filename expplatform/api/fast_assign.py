"""The assignment hot path, answered in front of Flask.

Client apps call ``POST /api/v1/assign`` on every journey step, so its cost per call
is the platform's capacity. Flask's request machinery (request and app contexts, URL
matching, hooks, session, response object) costs more CPU than the assignment itself
(``bench/assign.py``), so the common call, well formed and sent with a client key, is
answered here at the WSGI level with the same functions the Flask view uses:
``auth.principal_for_key``, ``api.assign.parse_body`` and ``api.assign.answer``.

Everything else goes to the Flask view in ``api/assign.py``, which stays the one
reference for behaviour: other methods and paths, cookies (a browser session),
other content types, a missing or unusual ``Authorization`` header, a body of unknown
or excessive length. A call that fails here for any reason (bad JSON, a validation
error, a wrong key, a database error) is handed to Flask whole, body included, and
Flask answers it as it answers every call, errors and 503s alike. Assigning is
idempotent (the exposure is insert-if-absent), so a call that had already recorded
its exposure before failing is safely run again. ``tests/test_fast_assign.py`` checks
that both paths give byte-identical responses.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from sqlalchemy.exc import DBAPIError

from ..auth import KEY_LOOKUP_ENVIRON, principal_for_key
from ..errors import DomainError
from .assign import RESPONSE_HEADERS, answer, parse_body

log = logging.getLogger(__name__)
PATH = "/api/v1/assign"
_BEARER = "Bearer "
_STATIC_HEADERS = [("Content-Type", "application/json"), *RESPONSE_HEADERS.items()]
# Refusals the Flask view gives again, with its own error body: not worth a log line.
_EXPECTED = (DomainError, ValueError, DBAPIError)

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class FastAssign:
    """WSGI middleware: ``app.wsgi_app = FastAssign(app, app.wsgi_app)``."""

    def __init__(self, app: Flask, flask_wsgi_app: WSGIApp) -> None:
        self.app = app
        self.flask_wsgi_app = flask_wsgi_app
        self._max_body = app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = self._eligible_length(environ)
        if length is None:
            return self.flask_wsgi_app(environ, start_response)
        try:
            body = environ["wsgi.input"].read(length)
        except OSError:  # the client went away mid-body (gunicorn's NoMoreData is one)
            body = b""
        payload = self._answer(environ, body) if len(body) == length else None
        if payload is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask_wsgi_app(environ, start_response)
        start_response("200 OK", [*_STATIC_HEADERS, ("Content-Length", str(len(payload)))])
        return [payload]

    def _eligible_length(self, environ: dict[str, Any]) -> int | None:
        """The body length of a call this path may answer, else None."""
        if (
            environ.get("PATH_INFO") != PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or "HTTP_COOKIE" in environ
            or not environ.get("HTTP_AUTHORIZATION", "").startswith(_BEARER)
            or environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json"
        ):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self._max_body:
            return None
        return int(length)

    def _answer(self, environ: dict[str, Any], body: bytes) -> bytes | None:
        try:
            key = environ["HTTP_AUTHORIZATION"][len(_BEARER) :].strip()
            principal = principal_for_key(key, self.app)
            environ[KEY_LOOKUP_ENVIRON] = (key, principal)
            if principal is None or principal.scope != "client":
                return None
            return answer(self.app, parse_body(json.loads(body)))
        except _EXPECTED:
            return None
        except Exception:
            log.exception("assignment fast path failed; the Flask view answers this call")
            return None


def init_app(app: Flask) -> None:
    app.wsgi_app = FastAssign(app, app.wsgi_app)  # type: ignore[method-assign]
