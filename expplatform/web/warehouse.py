"""Warehouse source pages: the list (viewers), and for editors a form to define or
change a source, a button to check one against its warehouse now, and delete.

Handlers are thin, as for journeys: the form becomes the same mapping the JSON API
takes, ``warehouse.sources`` parses, checks and stores it, and its field messages are
put back beside the boxes. The URL box is never filled in: the page shows the stored
URL with its password masked, and a blank box keeps the stored URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, StringField

from ..api.errors import status_for
from ..auth import current_principal, login_required, role_at_least
from ..db import get_db, get_session
from ..errors import DomainError, InvalidInput, NotFound
from ..models import WarehouseSource
from ..warehouse import sources as service
from ..warehouse.mapping import EVENT_ROLES, EXPOSURE_ROLES
from . import bp
from .experiment_form import _number_or_text
from .forms import ConfirmForm

# Form field prefix per mapping: ``events__value`` is ``events_columns.value``.
PREFIXES = {"events_columns": "events__", "exposures_columns": "exposures__"}
UNMAPPED = "-"
AUDIT_SHOWN = 20


class SourceForm(FlaskForm):
    key = StringField("Key")
    name = StringField("Name")
    url = StringField("Connection URL")
    events_table = StringField("Events table")
    exposures_table = StringField("Exposures table")
    clock_skew_seconds = StringField("Clock skew (seconds)", default="5")
    export_exposures = BooleanField("expplatform copies its exposures into the exposures table", default=True)
    check = BooleanField("Check the tables in the warehouse before saving", default=True)

    def role_fields(self, mapping: str):
        prefix = PREFIXES[mapping]
        roles = EVENT_ROLES if mapping == "events_columns" else EXPOSURE_ROLES
        return [(role, self[prefix + role.name]) for role in roles]

    def errors_by_name(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Parser paths (``events_columns.value``) keyed by the input's name."""
        placed: dict[str, str] = {}
        for path, message in fields.items():
            head, _, role = path.partition(".")
            name = PREFIXES[head] + role if head in PREFIXES and role else head
            if name in self._fields:
                placed.setdefault(name, message)
            else:
                placed["form"] = "; ".join(filter(None, [placed.get("form"), f"{path}: {message}"]))
        return placed


for _mapping, _roles in (("events_columns", EVENT_ROLES), ("exposures_columns", EXPOSURE_ROLES)):
    for _role in _roles:
        setattr(SourceForm, PREFIXES[_mapping] + _role.name, StringField(_role.name))


def _actor() -> str:
    principal = current_principal()
    assert principal is not None  # login_required ran first
    return principal.actor


def _form_to_mapping(form: SourceForm) -> dict[str, Any]:
    """The source mapping the form describes: a blank URL is left out (kept), a
    blank role box is left out (its default), ``-`` leaves a role unmapped."""
    data: dict[str, Any] = {
        name: (form[name].data or "").strip() for name in ("key", "name", "events_table", "exposures_table")
    }
    if (form.url.data or "").strip():
        data["url"] = form.url.data.strip()
    for mapping in PREFIXES:
        columns: dict[str, Any] = {}
        for role, box in form.role_fields(mapping):
            text = (box.data or "").strip()
            if text:
                columns[role.name] = None if text == UNMAPPED else text
        data[mapping] = columns
    data["clock_skew_seconds"] = _number_or_text((form.clock_skew_seconds.data or "").strip() or "5")
    data["export_exposures"] = bool(form.export_exposures.data)
    data["check"] = bool(form.check.data)
    return data


def _form_data(source: WarehouseSource) -> dict[str, Any]:
    stored = service.export_source(source)
    data: dict[str, Any] = {
        "key": stored["key"],
        "name": stored["name"],
        "events_table": stored["events_table"],
        "exposures_table": stored["exposures_table"],
        "clock_skew_seconds": f"{stored['clock_skew_seconds']:g}",
        "export_exposures": stored["export_exposures"],
        "check": True,
    }
    for mapping, prefix in PREFIXES.items():
        for role, column in stored[mapping].items():
            data[prefix + role] = UNMAPPED if column is None else column
    return data


def _source_or_404(key: str) -> WarehouseSource:
    try:
        return service.get_source(get_session(), key)
    except NotFound:
        abort(404)


def _render(form: SourceForm, *, source: WarehouseSource | None = None, errors=None, status_code: int = 200):
    form.url.data = ""  # a URL typed in is never sent back: it may hold the password
    page = render_template(
        "warehouse/form.html",
        form=form,
        source=source,
        masked=service.masked_url(source.url) if source is not None else None,
        audit=service.audit_log(get_session(), source)[:AUDIT_SHOWN] if source is not None else [],
        schemes=service.SCHEMES,
        errors=errors or {},
    )
    return page, status_code


@bp.get("/warehouse-sources")
@login_required("viewer")
def warehouse_sources():
    session = get_session()
    rows = [(source, service.experiments_using(session, source)) for source in service.list_sources(session)]
    principal = current_principal()
    can_edit = principal is not None and role_at_least(principal.role, "editor")
    return render_template(
        "warehouse/list.html", rows=rows, masked_url=service.masked_url, can_edit=can_edit, confirm=ConfirmForm()
    )


@bp.get("/warehouse-sources/new")
@login_required("editor")
def new_warehouse_source():
    return _render(SourceForm())[0]


def _save(form: SourceForm, source: WarehouseSource | None):
    """Create (``source`` None) or update from the form; a response either way."""
    data = _form_to_mapping(form)
    try:
        if source is None:
            prepared = service.prepare(service.parse_source(data))
        else:
            definition, stored_url = service.update_definition(get_session(), source.key, data)
            prepared = service.prepare(definition, stored_url=stored_url)
        with get_db().write() as session:
            if source is None:
                saved = service.create_source(session, prepared, _actor())
            else:
                saved = service.update_source(session, source.key, prepared, _actor())
            key, action = saved.source.key, saved.action
    except InvalidInput as exc:
        return _render(form, source=source, errors=form.errors_by_name(exc.fields), status_code=422)
    except DomainError as exc:
        errors = form.errors_by_name(exc.fields) or {"form": exc.message}
        return _render(form, source=source, errors=errors, status_code=status_for(exc))
    for notice in saved.notices:
        flash(notice, "info")
    flash({"created": f"Warehouse source {key} created.", "unchanged": "No changes."}.get(action, "Saved."), "info")
    return redirect(url_for("web.warehouse_sources"))


@bp.post("/warehouse-sources/new")
@login_required("editor")
def create_warehouse_source():
    return _save(SourceForm(), None)


@bp.get("/warehouse-sources/<key>/edit")
@login_required("editor")
def edit_warehouse_source(key: str):
    source = _source_or_404(key)
    return _render(SourceForm(data=_form_data(source)), source=source)[0]


@bp.post("/warehouse-sources/<key>/edit")
@login_required("editor")
def update_warehouse_source(key: str):
    return _save(SourceForm(), _source_or_404(key))


@bp.post("/warehouse-sources/<key>/check")
@login_required("editor")
def check_warehouse_source(key: str):
    report = service.check_source(_source_or_404(key))
    flash(f"{key}: {report.message}", "info" if report.ok else "error")
    return redirect(url_for("web.warehouse_sources"))


@bp.post("/warehouse-sources/<key>/delete")
@login_required("editor")
def delete_warehouse_source(key: str):
    _source_or_404(key)
    try:
        with get_db().write() as session:
            service.delete_source(session, key, _actor())
    except DomainError as exc:
        flash(exc.message, "error")
    else:
        flash(f"Warehouse source {key} deleted.", "info")
    return redirect(url_for("web.warehouse_sources"))
