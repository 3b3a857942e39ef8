"""The JSON API for client apps and automation, under /api/v1.

Each feature module puts its routes on ``bp`` and publishes its part of the OpenAPI
document as ``OPENAPI`` (see ``openapi.py``); ``init_app`` lists the modules.
"""

from __future__ import annotations

from flask import Blueprint, Flask
from flask_wtf import CSRFProtect

from ..auth import public
from . import errors

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.get("/health")
@public
def health():
    """Liveness probe; needs no credentials and touches no database."""
    return {"status": "ok"}


def init_app(app: Flask, csrf: CSRFProtect) -> None:
    # The routes: each feature module's handlers put theirs on bp as it is imported
    # (imported here, not at the top, because they import bp from this package).
    from . import assign, events, experiments, journey_map, journeys, openapi, reports, warehouse  # noqa: F401

    errors.init_app(app)
    app.register_blueprint(bp)
    # Bearer keys authenticate here; a cookie session may change things only with a
    # JSON body, which a cross-site HTML form cannot send (see api/bodies.py).
    csrf.exempt(bp)
