"""Server-rendered pages for product teams and analysts (no JavaScript needed)."""

from __future__ import annotations

from flask import Blueprint, Flask
from flask_wtf import CSRFProtect

from ..auth import current_user

bp = Blueprint("web", __name__, template_folder="templates")


def init_app(app: Flask) -> None:
    CSRFProtect(app)
    from . import account  # noqa: F401  (registers routes on bp)

    app.register_blueprint(bp)
    app.context_processor(lambda: {"current_user": current_user()})
