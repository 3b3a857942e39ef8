"""The web pages' error page: the site's own layout and navigation, in words a person
can act on, instead of the framework's bare default. The API answers JSON instead
(``api/errors.py``, which calls this for every other path)."""

from __future__ import annotations

from flask import render_template
from werkzeug.exceptions import HTTPException

_ADVICE = {
    400: "The request could not be understood. Go back and try again.",
    403: "Your account's role does not allow this page or action. An admin can change your role.",
    404: "There is nothing at this address: the link may be old, or the experiment or journey was renamed.",
    405: "This address does not accept that kind of request.",
    413: "What was sent is too large.",
    429: "Too many attempts in a short time. Wait a minute and try again.",
}


def error_page(exc: HTTPException):
    status = exc.code or 500
    body = render_template(
        "error.html",
        status=status,
        title=exc.name,
        advice=_ADVICE.get(status, exc.description or ""),
    )
    headers = [(name, value) for name, value in exc.get_headers() if name.lower() != "content-type"]
    return body, status, headers
