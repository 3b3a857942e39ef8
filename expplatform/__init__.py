"""expplatform: Bayesian A/B experiments along customer journeys.

``create_app`` is the only way to get an app; nothing is done at import time, and
PyMC is never imported here (only the full-model path loads it, lazily).
"""

from __future__ import annotations

from .bundled import check_analysis

check_analysis()  # before anything imports `analysis`: a foreign one is a clear error, not a puzzle

from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import auth, db, jobs, migrations, reports
from .config import load_settings
from .cookie_session import CookieSessionInterface


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    settings = load_settings(overrides)
    app = Flask(__name__, instance_path=str(settings.instance_path), instance_relative_config=False)
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

    database = db.init_app(app, settings)
    if settings.check_migrations:
        migrations.require_current(database.engine)
    auth.init_app(app)
    jobs.init_app(app)
    reports.init_app(app)

    from .api import init_app as init_api
    from .web import init_app as init_web

    init_web(app)
    init_api(app)
    return app
