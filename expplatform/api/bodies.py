"""Reading JSON request bodies, the same way on every endpoint that takes one."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from werkzeug.exceptions import BadRequest

from ..auth import current_principal
from ..errors import MalformedRequest, TooLarge


def json_body() -> Any:
    """The request body parsed as JSON, of any shape (each endpoint checks its own).

    Only ``application/json`` is read: besides saying what the body is, that content
    type is one a cross-site HTML form cannot send.
    """
    if not request.is_json:
        raise MalformedRequest(
            code="invalid_content_type", message="Send a JSON body with 'Content-Type: application/json'."
        )
    _refuse_a_streamed_body_over_the_limit()
    try:
        return request.get_json()
    except BadRequest:
        raise MalformedRequest(code="malformed_json", message="The body is not valid JSON.") from None
    except RecursionError:  # Python's parser recurses per level: a hostile body nests ~1,000 deep
        raise MalformedRequest(code="json_too_deep", message="The body nests too deeply to be a request.") from None


def _refuse_a_streamed_body_over_the_limit() -> None:
    """A chunked body (no Content-Length) is cut at the size limit by Werkzeug without
    a word, which would turn it into 'not valid JSON'; say 413 instead."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None or limit is None:
        return  # a declared length over the limit is a 413 from Werkzeug already
    data = request.get_data(cache=True)
    if len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise TooLarge(code="payload_too_large", message=f"The body is larger than {limit} bytes.")


def json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    With ``optional``, an empty body means ``{}``: from a key with any content type,
    but from a cookie session only as ``application/json``, which a cross-site HTML
    form cannot send (this keeps the CSRF-exempt API safe for sessions).
    """
    if optional and not request.get_data(cache=True):
        principal = current_principal()
        if (principal is not None and principal.kind == "key") or request.is_json:
            return {}
    body = json_body()
    if not isinstance(body, dict):
        raise MalformedRequest(code="invalid_body", message="The body must be a JSON object.")
    return body
