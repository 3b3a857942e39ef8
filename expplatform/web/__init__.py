"""Server-rendered pages for product teams and analysts (no JavaScript needed)."""

from __future__ import annotations

from flask import Blueprint, Flask, abort, render_template
from flask_wtf.csrf import CSRFError

from .. import experiments as experiments_service
from ..auth import current_user
from ..db import get_session
from ..errors import NotFound
from ..models import Experiment

bp = Blueprint("web", __name__, template_folder="templates")


def init_app(app: Flask) -> None:
    # The routes: each page module's handlers put theirs on bp as it is imported
    # (imported here, not at the top, because they import bp from this package).
    from . import account, admin, display, experiments, integrate, journey_map, journeys, reports, warehouse  # noqa: F401

    app.register_blueprint(bp)
    app.context_processor(lambda: {"current_user": current_user()})
    app.register_error_handler(CSRFError, _csrf_failed)


def experiment_or_404(key: str) -> Experiment:
    """The experiment with ``key``, or the 404 page."""
    try:
        return experiments_service.get_experiment(get_session(), key)
    except NotFound:
        abort(404)


def _csrf_failed(error: CSRFError):
    return render_template("form_expired.html", reason=error.description), 400
