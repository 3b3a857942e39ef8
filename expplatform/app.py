"""The app factory: what the app is made of, in the order it is put together.

Every part wires itself into the app with its ``init_app``, called here and nowhere
else (no ``record_once``; the web and API packages' ``init_app`` list their route
modules), so this list is the whole of it. Nothing is done at import time, and PyMC is
never imported here (only the full-model path loads it, lazily).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_wtf import CSRFProtect
from sqlalchemy.exc import OperationalError

from .bundled import check_analysis

check_analysis()  # before anything imports `analysis`: a foreign one is a clear error, not a puzzle

from . import api, assignment, auth, db, jobs, migrations, observability, probes, reports, security, web
from .api import fast_assign
from .config import load_settings
from .cookie_session import CookieSessionInterface

log = logging.getLogger(__name__)


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    settings = load_settings(overrides)
    # Named after the package, not this module: the name is the logger's ("expplatform").
    app = Flask("expplatform", instance_path=str(settings.instance_path), instance_relative_config=False)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        TESTING=settings.testing,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        WTF_CSRF_ENABLED=settings.wtf_csrf_enabled,
        WTF_CSRF_TIME_LIMIT=None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    app.extensions["settings"] = settings
    app.session_interface = CookieSessionInterface()
    security.init_app(app)

    database = db.init_app(app, settings)
    if settings.check_migrations:
        try:
            migrations.require_current(database.engine)
        except OperationalError as exc:
            # Unreachable now (an outage, a read-only file): a worker that refused to boot
            # would make gunicorn stop the whole service. Serve; /readyz says not ready,
            # and requests answer 503 until the database is back.
            log.warning("starting with the database unreachable: %s", exc.orig)
    auth.init_app(app)
    assignment.init_app(app)
    jobs.init_app(app)
    reports.init_app(app)

    csrf = CSRFProtect(app)  # every form post; the API exempts itself
    web.init_app(app)
    api.init_app(app, csrf)
    probes.init_app(app)  # /healthz and /readyz
    # Last: it answers assignment calls in front of everything above, so it checks
    # that nothing was added that it would skip.
    fast_assign.init_app(app)
    # Outermost: the request id and the request log wrap the fast path too.
    observability.init_app(app)
    return app
