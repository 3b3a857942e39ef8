"""The probes and the request log on a test app, for as long as create_app does not wire
them itself (and a no-op once it does)."""

from __future__ import annotations

from flask import Flask

from expplatform import observability, probes


def wired(app: Flask) -> Flask:
    if "probes" not in app.blueprints:
        probes.init_app(app)
    if not isinstance(app.wsgi_app, observability.RequestLog):
        observability.init_app(app)  # last, as in create_app
    return app
