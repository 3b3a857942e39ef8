"""The JSON API for client apps and automation, under /api/v1.

Each feature module registers its routes on ``bp`` and publishes its part of the
OpenAPI document as ``OPENAPI`` (see ``openapi.py``).
"""

from __future__ import annotations

from flask import Blueprint, Flask

from ..auth import public
from . import errors

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.get("/health")
@public
def health():
    """Liveness probe; needs no credentials and touches no database."""
    return {"status": "ok"}


def init_app(app: Flask) -> None:
    from . import fast_assign, openapi  # openapi registers routes on bp; imports every feature module

    errors.init_app(app)
    app.register_blueprint(bp)
    # Bearer keys authenticate here; a cookie session may change things only with a
    # JSON body, which a cross-site HTML form cannot send (see api/experiments.py).
    app.extensions["csrf"].exempt(bp)  # web.init_app created it
    fast_assign.init_app(app)
