"""Experiment pages for product teams: list, create/edit form, detail with the
lifecycle buttons, clone as next iteration. Viewers read; editors change.

Handlers are thin: parse the form, call ``expplatform.experiments``, render or
redirect. CSRF is checked for every POST by Flask-WTF before a handler runs; every
other rule is the definition parser's, so the form, the API and the files report the
same messages. Rule violations come back as the same errors the JSON API returns and are
shown beside the inputs (validation) or as a flash message (conflicts).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session

from .. import experiments as service
from .. import journeys
from ..api.errors import status_for
from ..auth import current_principal, login_required, role_at_least
from ..db import get_db, get_session
from ..definitions import DEFAULT_STAGES, parse_definition
from ..errors import DomainError, InvalidInput, NotFound
from ..models import Experiment, Journey, RatingQuestion, utcnow
from ..reports.planning import duration_panel
from ..warehouse import sources
from . import bp, experiment_or_404
from .experiment_form import (
    MAX_RULE_ROWS,
    NO_QUESTION,
    QUESTION_PREFIX,
    ExperimentForm,
    JourneyChoice,
    default_form_data,
    form_to_mapping,
    journey_form_data,
    mapping_to_form_data,
    stored_questions,
)
from .form_planning import ESTIMATE_BUTTON, FormDuration, form_duration
from .forms import ConfirmForm
from .guided import current_call, overviews

PER_PAGE = 25
ACTION_HELP = {
    "start": "Customers will be enrolled and exposures recorded from now on. Variants, weights, the journey, "
    "the stage under test, the measured stages and their questions are frozen once it starts.",
    "pause": "No new customers are enrolled and everyone is shown the control experience until you resume.",
    "resume": "Enrolment continues with the same buckets: enrolled customers keep their variants.",
    "stop": "Stopping is final: the experiment becomes read-only and everyone gets the control experience. "
    "Reports stay available. To run it again, clone it as its next iteration.",
}


def _actor() -> str:
    principal = current_principal()
    assert principal is not None  # login_required ran first
    return principal.actor


def _can_edit() -> bool:
    principal = current_principal()
    return principal is not None and role_at_least(principal.role, "editor")


@bp.get("/experiments")
@login_required("viewer")
def experiments():
    status = request.args.get("status") or None
    stage = request.args.get("stage") or None
    page_number = max(request.args.get("page", 1, type=int) or 1, 1)
    page = service.list_experiments(
        get_session(),
        statuses=[status] if status in service.STATUSES else (),
        stage=stage,
        page=page_number,
        per_page=PER_PAGE,
    )
    return render_template(
        "experiments/list.html",
        page=page,
        status=status,
        stage=stage,
        statuses=service.STATUSES,
        can_edit=_can_edit(),
        overviews=overviews(page.items, utcnow()),
    )


def _shown(form: ExperimentForm, choices: list[Journey]) -> JourneyChoice:
    """The journey whose stages the form shows: the one selected, if it exists."""
    found = next((journey for journey in choices if journey.key == (form.journey.data or "")), None)
    return JourneyChoice.of(found) if found is not None else JourneyChoice.default()


def _render_form(
    form: ExperimentForm,
    *,
    experiment=None,
    errors=None,
    status_code=200,
    note=None,
    duration: FormDuration | None = None,
):
    choices = journeys.list_journeys(get_session())
    shown = _shown(form, choices)
    form.row_choices(choices, shown)
    form.source_choices([(source.key, source.name) for source in sources.list_sources(get_session())])
    frozen = experiment is not None and experiment.status in service.STARTED
    return (
        render_template(
            "experiments/form.html",
            form=form,
            experiment=experiment,
            shown=shown,
            questions=getattr(form, "questions_by_stage", {}),
            no_question=NO_QUESTION,
            question_prefix=QUESTION_PREFIX,
            note=note,
            errors=errors or {},
            advanced_open=any(name.startswith(("decision_", "prior_", "forced_variants")) for name in errors or {}),
            frozen=frozen,
            max_rules=MAX_RULE_ROWS,
            duration=duration or form_duration(get_session(), form, request.form, experiment),
            estimate_button=ESTIMATE_BUTTON,
        ),
        status_code,
    )


@bp.get("/experiments/new")
@login_required("editor")
def new_experiment():
    choices = journeys.list_journeys(get_session())
    asked = request.args.get("journey")
    found = next((j for j in choices if j.key == asked), choices[0] if choices else None)
    shown = JourneyChoice.of(found) if found is not None else JourneyChoice.default()
    form = ExperimentForm(data=default_form_data(shown, request.args.get("stage")))
    form.questions_by_stage = stored_questions(shown, list(shown.stage_keys), shown.first_questions())
    return _render_form(form)[0]


def _journey_changed(form: ExperimentForm) -> bool:
    """Whether the journey select names another journey than the stage boxes were
    made for (or its button asks to show them): then they are shown again first."""
    shown = form.shown_journey.data
    return "pick_journey" in request.form or (shown is not None and shown != (form.journey.data or ""))


def _show_journey(form: ExperimentForm, experiment=None):
    """The form again, with the chosen journey's stages and questions to choose from."""
    shown = _shown(form, journeys.list_journeys(get_session()))
    values = journey_form_data(shown, form.target_stage.data)
    for name in ("shown_journey", "target_stage", "measured"):
        form[name].data = values[name]
    form.questions_by_stage = stored_questions(shown, values["measured"], shown.first_questions())
    note = (
        f"These are the stages of {shown.name}: choose the stage under test, the stages to measure and their questions."
    )
    return _render_form(form, experiment=experiment, note=note)


def _estimate(form: ExperimentForm, experiment=None):
    """The 'Estimate duration' button: the form again as entered, unsaved, with the
    estimate (422 with the bad boxes named when it cannot be made)."""
    found = form_duration(get_session(), form, request.form, experiment)
    return _render_form(
        form, experiment=experiment, errors=found.rule_errors, status_code=422 if found.failed else 200, duration=found
    )


def _grow_rows(form: ExperimentForm) -> bool:
    """Handle the 'add a row' buttons; True when the form should just be shown again."""
    if "add_variant" in request.form and len(form.variants) < form.variants.max_entries:
        form.variants.append_entry()
        return True
    if "add_rule" in request.form and len(form.targeting) < MAX_RULE_ROWS:
        form.targeting.append_entry()
        return True
    return "add_variant" in request.form or "add_rule" in request.form


@bp.post("/experiments/new")
@login_required("editor")
def create_experiment():
    form = ExperimentForm()
    form.read_questions(request.form)
    if _grow_rows(form):
        return _render_form(form)
    if ESTIMATE_BUTTON in request.form:
        return _estimate(form)
    if _journey_changed(form):
        return _show_journey(form)
    try:
        with get_db().write() as session:
            if form.shown_journey.data == "" and not form.journey.data:
                _on_the_default_journey(session, form)
            saved = service.create_experiment(session, parse_definition(form_to_mapping(form)), _actor())
            key = saved.experiment.key
    except InvalidInput as exc:
        errors = form.errors_by_name(exc.fields)
        if _key_taken(form.key.data):  # said with the rest, not only once the rest is fixed
            errors.setdefault(form.key.name, "is taken")
        return _render_form(form, errors=errors, status_code=422)
    except DomainError as exc:
        return _render_form(
            form, errors=form.errors_by_name(exc.fields) or {"form": exc.message}, status_code=status_for(exc)
        )
    for notice in saved.notices:
        flash(notice, "info")
    flash(f"Experiment {key} created as a draft.", "info")
    return redirect(url_for("web.experiment", key=key))


def _key_taken(key: str | None) -> bool:
    try:
        service.get_experiment(get_session(), (key or "").strip())
    except NotFound:
        return False
    return True


@dataclass(frozen=True)
class MeasuredStage:
    key: str
    name: str
    question: RatingQuestion | None


def _measured(experiment: Experiment) -> list[MeasuredStage]:
    """The measured stages in journey order, each with the question measured there."""
    names = {stage.key: stage.name for stage in experiment.journey.stages}
    questions = {question.key: question for question in experiment.journey.questions}
    return [
        MeasuredStage(stage, names.get(stage, stage), questions.get(experiment.metrics.get(stage, "")))
        for stage in experiment.stages
    ]


def _on_the_default_journey(session: Session, form: ExperimentForm) -> None:
    """A new installation's form shows the default journey before it exists: make it
    (with its 1-5 questions, as the definitions from before journeys do) in the
    transaction that saves the experiment, and measure its questions."""
    journey, questions = journeys.implicit_journey(session, DEFAULT_STAGES, journeys.DEFAULT_SCALE)
    form.journey.data = journey.key
    form.questions_by_stage = questions


@bp.get("/experiments/<key>")
@login_required("viewer")
def experiment(key: str):
    session = get_session()
    found = experiment_or_404(key)
    now = utcnow()
    return render_template(
        "experiments/detail.html",
        experiment=found,
        overview=overviews([found], now)[found.id],
        call=current_call(found, now),
        measured=_measured(found),
        duration=duration_panel(session, found, request.args, now),
        definition=service.export_definition(found),
        audit=service.audit_log(session, found),
        can_edit=_can_edit(),
        transitions=[a for a, (sources, _t, _v) in service.TRANSITIONS.items() if found.status in sources],
        confirm=ConfirmForm(),
    )


@bp.get("/experiments/<key>/edit")
@login_required("editor")
def edit_experiment(key: str):
    found = experiment_or_404(key)
    if found.status == "stopped":
        flash("A stopped experiment is read-only; clone it to run it again.", "error")
        return redirect(url_for("web.experiment", key=key))
    definition = service.export_definition(found)
    form = ExperimentForm(data=mapping_to_form_data(definition))
    form.questions_by_stage = stored_questions(JourneyChoice.of(found.journey), definition["stages"], found.metrics)
    return _render_form(form, experiment=found)[0]


@bp.post("/experiments/<key>/edit")
@login_required("editor")
def update_experiment(key: str):
    found = experiment_or_404(key)
    form = ExperimentForm()
    form.read_questions(request.form)
    if _grow_rows(form):
        return _render_form(form, experiment=found)
    if ESTIMATE_BUTTON in request.form:
        return _estimate(form, found)
    if found.status not in service.STARTED and _journey_changed(form):
        return _show_journey(form, found)
    try:
        with get_db().write() as session:
            saved = service.update_experiment(session, key, parse_definition(form_to_mapping(form)), _actor())
    except InvalidInput as exc:
        return _render_form(form, experiment=found, errors=form.errors_by_name(exc.fields), status_code=422)
    except DomainError as exc:
        return _render_form(
            form,
            experiment=found,
            errors=form.errors_by_name(exc.fields) or {"form": exc.message},
            status_code=status_for(exc),
        )
    for notice in saved.notices:
        flash(notice, "info")
    flash("No changes." if saved.action == "unchanged" else "Saved.", "info")
    return redirect(url_for("web.experiment", key=key))


@bp.get("/experiments/<key>/<action>")
@login_required("editor")
def confirm_action(key: str, action: str):
    if action not in service.TRANSITIONS:
        abort(404)
    found = experiment_or_404(key)
    return render_template(
        "experiments/confirm.html", experiment=found, action=action, help=ACTION_HELP[action], form=ConfirmForm()
    )


@bp.post("/experiments/<key>/<action>")
@login_required("editor")
def change_status(key: str, action: str):
    if action not in service.TRANSITIONS:
        abort(404)
    try:
        with get_db().write() as session:
            service.change_status(session, key, action, _actor())  # type: ignore[arg-type]
    except NotFound:
        abort(404)
    except DomainError as exc:
        flash(exc.message, "error")
    else:
        flash(f"Experiment {key} is now {service.TRANSITIONS[action][1]}.", "info")
    return redirect(url_for("web.experiment", key=key))


@bp.post("/experiments/<key>/clone")
@login_required("editor")
def clone_experiment(key: str):
    try:
        with get_db().write() as session:
            saved = service.clone_experiment(session, key, _actor())
            new_key = saved.experiment.key
    except NotFound:
        abort(404)
    except DomainError as exc:
        flash(exc.message, "error")
        return redirect(url_for("web.experiment", key=key))
    flash(f"Cloned as {new_key}: a new draft with the same definition. Change it, then start it.", "info")
    return redirect(url_for("web.edit_experiment", key=new_key))
