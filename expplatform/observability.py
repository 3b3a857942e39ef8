"""Request ids and structured logs.

Every request gets an id: the caller's ``X-Request-ID`` when it is a sane token, else a
new one. It is echoed in the response's ``X-Request-ID`` and carried by every log line
written while the request runs, whichever logger writes it, so one grep finds all a
request did. Logs are one JSON object per line on stderr with time, level, pid, logger,
request id and message, plus the fields a line adds (``extra=``).

Each request ends with one line from ``expplatform.access``: method, path, route,
status and duration. It is an INFO line, or an ERROR line for a 5xx, so that
``EXPPLATFORM_LOG_LEVEL=WARNING`` drops the routine lines and keeps every failure.

The request log is WSGI middleware, not Flask hooks, so that it also sees the calls
the assignment fast path (``api/fast_assign.py``) answers in front of Flask: it must
be the outermost layer, which is why ``init_app`` comes last in ``create_app``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from flask.logging import default_handler

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
_ROUTE_ENVIRON = "expplatform.route"
# A caller's id is kept when it looks like an id (UUIDs, trace ids, ...): anything else
# could forge log content, so it is replaced.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("expplatform.access")

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def current_request_id() -> str | None:
    """The id of the request this thread is serving, if any."""
    return _request_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (as ``logging.lastResort``
    does), so that a replaced stderr (a test's capture) never gets a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _with_request_id(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = _request_id.get()
        return record

    make_record.adds_request_id = True  # type: ignore[attr-defined]
    return make_record


def configure_logging(level: str) -> None:
    """Put the request id on every record, set the level of our loggers, and give the
    process a JSON handler on stderr unless logging is configured already (gunicorn
    configures it from ``gunicorn.conf.py`` with the same formatter; tests capture it)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "adds_request_id", False):
        logging.setLogRecordFactory(_with_request_id(factory))
    logging.getLogger("expplatform").setLevel(level)
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)


class RequestLog:
    """WSGI middleware: the request id, and one access line per request."""

    def __init__(self, wsgi_app: WSGIApp) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        given = environ.get(_REQUEST_ID_ENVIRON, "")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        environ[_REQUEST_ID_ENVIRON] = request_id  # what Flask's request.headers shows
        token = _request_id.set(request_id)
        started = time.perf_counter()
        statuses: list[str] = []

        def start_with_id(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            statuses.append(status)
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, start_with_id)
        finally:
            status = int(statuses[-1][:3]) if statuses else 500
            if status >= 500 or access_log.isEnabledFor(logging.INFO):
                _log_request(environ, status, time.perf_counter() - started)
            _request_id.reset(token)


def _log_request(environ: dict[str, Any], status: int, seconds: float) -> None:
    method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
    access_log.log(
        logging.ERROR if status >= 500 else logging.INFO,
        "%s %s %d",
        method,
        path,
        status,
        extra={
            "method": method,
            "path": path,
            "route": _route(environ, path),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        },
    )


def _note_route() -> None:
    """Flask saw the request: record the URL rule that matched it (None: none did)."""
    rule = request.url_rule
    request.environ[_ROUTE_ENVIRON] = rule.rule if rule is not None else None


def _route(environ: dict[str, Any], path: str) -> str | None:
    """The URL rule that served the request (``/api/v1/experiments/<key>``). A request
    Flask never saw was answered by the assignment fast path, whose path is its route."""
    return environ.get(_ROUTE_ENVIRON, path)


def _note_route_of_request(_exc: BaseException | None) -> None:
    _note_route()


def init_app(app: Flask) -> None:
    """Last in ``create_app``: the request log must wrap every other WSGI layer."""
    configure_logging(app.extensions["settings"].log_level)
    app.logger.removeHandler(default_handler)  # Flask's plain-text handler: ours formats every line
    app.teardown_request(_note_route_of_request)  # runs for every request Flask handles, 404s too
    app.wsgi_app = RequestLog(app.wsgi_app)  # type: ignore[method-assign]
