"""Flask's signed-cookie session, without its cost on requests that carry no cookie.

API clients never send a cookie, yet Flask builds a signing serializer (which
serialises a probe object to learn its type) and parses the Cookie header on every
request: about 20 us, more than a tenth of a small API call through Flask (measured
on assignment calls before they got their own path, ``api/fast_assign.py``). So the
serializer is built once per set of keys, and a request without a Cookie header gets
an empty session straight away.
Behaviour is otherwise Flask's own: same cookie format, same signing, same rotation
through ``SECRET_KEY_FALLBACKS``, except that the cookie is marked ``Secure`` also when
the request itself came over TLS, directly or (``X-Forwarded-Proto: https``) through a
proxy, not only when ``SESSION_COOKIE_SECURE`` (``EXPPLATFORM_SECURE_COOKIES``) says so.

The cookie itself proves nothing on its own: it carries the token of a server-side
login session (``auth.SESSION_TOKEN``), which logout and password changes end.
"""

from __future__ import annotations

from flask import Flask, Request, has_request_context, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer


class CookieSessionInterface(SecureCookieSessionInterface):
    def __init__(self) -> None:
        self._serializers: dict[tuple, URLSafeTimedSerializer | None] = {}

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        serializer = self._serializers.get(keys)
        if serializer is None:
            serializer = self._serializers[keys] = super().get_signing_serializer(app)
        return serializer

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if "HTTP_COOKIE" not in request.environ and app.secret_key:
            return self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or (has_request_context() and request_is_https(request))


def request_is_https(req: Request) -> bool:
    """Whether the browser reached us over TLS: directly, or through a proxy saying so.
    Trusting the proxy header costs nothing here: a client that forges it only makes
    its own cookie Secure."""
    forwarded = req.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return req.is_secure or forwarded == "https"
