"""JSON error responses for everything under /api: never an HTML page, never a 500
for bad input, and a 503 the client may retry when the database is unreachable,
locked or too slow (every database wait is bounded, see ``db.py``)."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from .. import errors as domain
from ..db import connection_is_broken

log = logging.getLogger(__name__)

# The one place where the domain's errors become HTTP statuses.
STATUS_FOR: dict[type[domain.DomainError], int] = {
    domain.MalformedRequest: 400,
    domain.AuthenticationRequired: 401,
    domain.Forbidden: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.TooLarge: 413,
    domain.InvalidInput: 422,
    domain.TooManyAttempts: 429,
}


def status_for(exc: domain.DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    raise TypeError(f"no HTTP status for {type(exc).__name__}")  # a new DomainError needs a row above


_HTTP_CODES = {
    400: "bad_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
}


def _is_api_request() -> bool:
    return request.path.startswith("/api/")


def error_response(status: int, code: str, message: str, **extra):
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def _handle_domain_error(exc: domain.DomainError):
    response = jsonify(exc.to_dict())
    response.status_code = status_for(exc)
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="expplatform"'
    if isinstance(exc, domain.TooManyAttempts):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _handle_http_exception(exc: HTTPException):
    if not _is_api_request():
        from ..web.error_page import error_page  # the pages' layout: the API does not need it

        return error_page(exc)
    status = exc.code or 500
    response = error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)
    # The exception's own headers (Allow on a 405, WWW-Authenticate, Retry-After), not its HTML's type.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


RETRY_AFTER_SECONDS = "1"
# PostgreSQL SQLSTATEs of a bounded wait that ran out: statement_timeout (query_canceled)
# and lock_timeout (lock_not_available).
_TIMED_OUT = {"57014": "statement timeout", "55P03": "lock timeout"}
_TIMED_OUT_MESSAGE = "The database did not answer in time; nothing was stored. Retry the request."
_UNAVAILABLE_MESSAGE = "The database is unavailable; nothing was stored. Retry the request."


def _unavailable(reason: str, message: str, *, api: bool, where: str) -> Response:
    """The 503 of a database that cannot serve now: JSON for the API, a line of text for
    the web pages; a log line either way, with the reason."""
    log.warning("503: database unavailable (%s) on %s", reason, where)
    if api:
        response = error_response(503, "database_unavailable", message)
    else:
        response = Response(message, status=503, mimetype="text/plain")
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def _unavailable_reason(exc: DBAPIError) -> str | None:
    """Why a database error is a 503 (a fault that should pass), or None for a bug."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _TIMED_OUT:
        return _TIMED_OUT[sqlstate]
    message = str(orig).lower() if orig is not None else ""
    if "locked" in message or "busy" in message:
        return "lock timeout"
    if exc.connection_invalidated or (orig is not None and connection_is_broken(orig)):
        return f"connection discarded: {str(orig).strip() or type(orig).__name__}"
    if isinstance(exc, OperationalError):
        return f"operational error: {str(orig).strip() or type(orig).__name__}"
    return None


def database_unavailable(exc: DBAPIError, *, where: str, api: bool = True) -> Response | None:
    """The 503 (retry) for a database fault that should pass (unreachable, locked, timed
    out, a discarded connection), else None: a bug, for the 500 handler. The assignment
    fast path (api/fast_assign.py) answers with it too, so both paths say the same."""
    reason = _unavailable_reason(exc)
    if reason is None:
        return None
    message = _TIMED_OUT_MESSAGE if reason in _TIMED_OUT.values() else _UNAVAILABLE_MESSAGE
    return _unavailable(reason, message, api=api, where=where)
    return None


def _handle_database_error(exc: DBAPIError):
    response = database_unavailable(exc, api=_is_api_request(), where=f"{request.method} {request.path}")
    if response is None:
        raise exc
    return response


def _handle_pool_timeout(_exc: PoolTimeout):
    """Every pooled connection is busy and none came free within the connect timeout."""
    return _unavailable(
        "no free connection", _TIMED_OUT_MESSAGE, api=_is_api_request(), where=f"{request.method} {request.path}"
    )


def _handle_unexpected(exc: Exception):
    if not _is_api_request():
        raise exc
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "An unexpected error occurred; it has been logged.")


def init_app(app: Flask) -> None:
    app.register_error_handler(domain.DomainError, _handle_domain_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(DBAPIError, _handle_database_error)
    app.register_error_handler(PoolTimeout, _handle_pool_timeout)
    app.register_error_handler(Exception, _handle_unexpected)
