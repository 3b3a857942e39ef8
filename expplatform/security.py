"""Browser-facing hardening: security headers on every page (every response outside
``/api/``), and the session cookie's lifetime and ``Secure`` flag from the settings.

The pages need no JavaScript, so the Content-Security-Policy allows none, nor any
framing (``frame-ancestors 'none'``, clickjacking of the start/stop confirmations).
Styles come from our own stylesheets; the one inline allowance is ``style``
*attributes* (``style-src-attr``): the report pages set CSS custom properties
(``style="--variant: #..."``) and the inline SVG plots style their shapes with them.
Inline ``<style>`` and ``<script>`` elements stay blocked.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, request
from werkzeug.wrappers import Response

from .cookie_session import request_is_https

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000"


def _add_headers(response: Response) -> Response:
    if request.path.startswith("/api/"):
        # JSON for programs, not pages; and the assignment fast path
        # (api/fast_assign.py) must answer exactly as the Flask view does.
        return response
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request_is_https(request):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def init_app(app: Flask) -> None:
    settings = app.extensions["settings"]
    app.config.update(
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime_seconds),
        SESSION_COOKIE_SECURE=settings.secure_cookies,
    )
    app.after_request(_add_headers)
