"""Server-rendered pages for product teams and analysts (no JavaScript needed)."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template
from flask_wtf import CSRFProtect
from flask_wtf.csrf import CSRFError

from ..auth import current_user

bp = Blueprint("web", __name__, template_folder="templates")


def init_app(app: Flask) -> None:
    csrf = CSRFProtect(app)
    # The JSON API registers first and so found no CSRFProtect to exempt itself from:
    # exempt it here (bearer keys authenticate its writes), or every API POST is a 400.
    api = app.blueprints.get("api")
    if api is not None:
        csrf.exempt(api)
    from . import account, experiments  # noqa: F401  (register routes on bp)

    app.register_blueprint(bp)
    app.context_processor(lambda: {"current_user": current_user()})
    app.register_error_handler(CSRFError, _csrf_failed)


def _csrf_failed(error: CSRFError):
    return render_template("form_expired.html", reason=error.description), 400
