"""JSON error responses for everything under /api: never an HTML page, never a 500
for bad input, and a 503 the client may retry when the database is unreachable."""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from .. import errors as domain

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
        return exc
    status = exc.code or 500
    return error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)


def database_unavailable(exc: DBAPIError) -> Response | None:
    """The 503 (retry) for a database that cannot be reached or is locked, else None.
    The assignment fast path (api/fast_assign.py) answers with it too."""
    message = str(exc.orig).lower() if exc.orig is not None else ""
    if isinstance(exc, OperationalError) or exc.connection_invalidated or "locked" in message:
        response = error_response(
            503, "database_unavailable", "The database is unavailable; nothing was stored. Retry the request."
        )
        response.headers["Retry-After"] = "1"
        return response
    return None


def _handle_database_error(exc: DBAPIError):
    response = database_unavailable(exc) if _is_api_request() else None
    if response is None:
        raise exc
    return response


def _handle_unexpected(exc: Exception):
    if not _is_api_request():
        raise exc
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "An unexpected error occurred; it has been logged.")


def init_app(app: Flask) -> None:
    app.register_error_handler(domain.DomainError, _handle_domain_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(DBAPIError, _handle_database_error)
    app.register_error_handler(Exception, _handle_unexpected)
