"""Journey pages for editors: create and edit a journey's stages, personas and rating
questions (the list and the map, ``/journeys`` and ``/journeys/<key>``, are in
``journey_map.py``).

Handlers are thin, as for experiments: parse the form, call ``expplatform.journeys``,
render or redirect. Every rule is the journey parser's and service's, so the form,
the API and the files report the same messages, shown beside the inputs.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import abort, current_app, flash, redirect, render_template, request, url_for

from .. import journeys as service
from ..api.errors import status_for
from ..auth import current_principal, login_required
from ..db import get_db, get_session
from ..errors import DomainError, InvalidInput, NotFound
from ..journey_definitions import parse_journey
from ..models import Journey
from . import bp
from .journey_form import Frozen, JourneyForm, default_form_data, form_to_mapping, mapping_to_form_data, rows_with_move

ROW_BUTTONS = ("add_stage", "add_persona", "add_question", "move_up")


@bp.app_template_global()
def journey_map_url(key: str | None = None) -> str:
    """The journey's map page, or the list of journeys without a key (both are
    ``journey_map.py``'s: endpoints ``web.journey`` and ``web.journeys``)."""
    endpoint = "web.journeys" if key is None else "web.journey"
    if endpoint in current_app.view_functions:
        return url_for(endpoint) if key is None else url_for(endpoint, key=key)
    return f"{request.script_root}/journeys" + ("" if key is None else f"/{quote(key, safe='')}")


def _actor() -> str:
    principal = current_principal()
    assert principal is not None  # login_required ran first
    return principal.actor


def _journey_or_404(key: str) -> Journey:
    try:
        return service.get_journey(get_session(), key)
    except NotFound:
        abort(404)


def _render(form: JourneyForm, *, journey: Journey | None = None, errors=None, status_code: int = 200):
    form.row_choices()
    frozen = Frozen()
    if journey is not None:
        frozen = Frozen.of(journey, service.journey_usage(get_session(), journey))
    return (
        render_template("journeys/form.html", form=form, journey=journey, frozen=frozen, errors=errors or {}),
        status_code,
    )


def _grow_rows(form: JourneyForm) -> JourneyForm | None:
    """Handle the row buttons; the form to show again, or None to save."""
    if not any(name in request.form for name in ROW_BUTTONS):
        return None
    if "move_up" in request.form:
        index = request.form.get("move_up", "")
        data = form.data
        if index.isdigit():
            data = rows_with_move(data, int(index))
        return JourneyForm(formdata=None, data=data)
    for button, rows in (("add_stage", form.stages), ("add_persona", form.personas), ("add_question", form.questions)):
        if button in request.form and len(rows) < (rows.max_entries or 0):
            rows.append_entry()
    return form


def _save(form: JourneyForm, journey: Journey | None):
    """Create (``journey`` None) or update from the form; a response either way."""
    try:
        with get_db().write() as session:
            definition = parse_journey(form_to_mapping(form))
            if journey is None:
                saved = service.create_journey(session, definition, _actor())
            else:
                saved = service.update_journey(session, journey.key, definition, _actor())
            key = saved.journey.key
    except InvalidInput as exc:
        return _render(form, journey=journey, errors=form.errors_by_name(exc.fields), status_code=422)
    except DomainError as exc:
        errors = form.errors_by_name(exc.fields) or {"form": exc.message}
        return _render(form, journey=journey, errors=errors, status_code=status_for(exc))
    for notice in saved.notices:
        flash(notice, "info")
    if saved.action == "created":
        flash(f"Journey {key} created.", "info")
    else:
        flash("No changes." if saved.action == "unchanged" else "Journey saved.", "info")
    return redirect(journey_map_url(key))


@bp.get("/journeys/new")
@login_required("editor")
def new_journey():
    return _render(JourneyForm(data=default_form_data()))[0]


@bp.post("/journeys/new")
@login_required("editor")
def create_journey():
    form = JourneyForm()
    grown = _grow_rows(form)
    if grown is not None:
        return _render(grown)
    return _save(form, None)


@bp.get("/journeys/<key>/edit")
@login_required("editor")
def edit_journey(key: str):
    found = _journey_or_404(key)
    return _render(JourneyForm(data=mapping_to_form_data(service.export_journey(found))), journey=found)[0]


@bp.post("/journeys/<key>/edit")
@login_required("editor")
def update_journey(key: str):
    found = _journey_or_404(key)
    form = JourneyForm()
    grown = _grow_rows(form)
    if grown is not None:
        return _render(grown, journey=found)
    return _save(form, found)
