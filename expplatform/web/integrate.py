"""The Integrate pages: how a client app connects, for one experiment
(``/experiments/<key>/integrate``) and for the whole service (``/integrate``).

Each shows the assign and events calls as copy-ready curl, Python client and
JavaScript snippets, filled in with this service's URL and the experiment's key,
variants, stages and rating questions; the client keys by name and prefix (never a
secret: only a digest is stored), with a form for editors to make one, whose secret
is shown once, filled into the snippets; and a live status of the exposures.

The pages run no JavaScript (the Content-Security-Policy allows none): the status
is a small page in a frame that refreshes itself (``<meta http-equiv="refresh">``),
so these two responses widen the policy just enough to frame our own status page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app, render_template, request
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import HiddenField, StringField
from wtforms.validators import DataRequired, Length

from .. import auth
from .. import experiments as experiments_service
from ..activity import LiveStatus, TimedMemo, live_status
from ..auth import current_principal, login_required, role_at_least
from ..db import get_db, get_session
from ..journeys import list_journeys
from ..models import ApiKey, Experiment, Journey, utcnow
from ..security import CONTENT_SECURITY_POLICY
from . import bp, experiment_or_404

STATUS_REFRESH_SECONDS = 3
STATUS_MEMO_SECONDS = 2.0  # however many watch, the database is asked once per period
KEY_PLACEHOLDER = "$EXPPLATFORM_KEY"
CUSTOMER = "customer-123"
PAGE_POLICY = CONTENT_SECURITY_POLICY + "; frame-src 'self'"
FRAMED_POLICY = CONTENT_SECURITY_POLICY.replace("frame-ancestors 'none'", "frame-ancestors 'self'")


class ClientKeyForm(FlaskForm):
    name = StringField("What uses it", validators=[DataRequired(), Length(max=100)])
    experiment = HiddenField()  # the Integrate page to come back to ('' for the service's)


# -- the snippets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleEvent:
    """One event of the snippets: a conversion at a stage, or a rating of a question."""

    stage: str
    metric: str | None = None
    value: int | None = None

    def body(self, number: int) -> dict[str, Any]:
        event: dict[str, Any] = {"event_id": f"{CUSTOMER}-{number}", "customer_id": CUSTOMER}
        if self.metric is None:
            event.update(stage=self.stage, type="conversion")
        else:
            event.update(type="rating", metric=self.metric, value=self.value)
        return event


@dataclass(frozen=True)
class Snippets:
    """The calls of one Integrate page, in three forms."""

    base_url: str
    key: str  # the secret just made, or a placeholder
    experiments: tuple[str, ...]  # empty: every running experiment
    attributes: dict[str, str]
    events: tuple[ExampleEvent, ...]
    control: str = "control"

    def _assign_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"customer_id": CUSTOMER}
        if self.experiments:
            body["experiments"] = list(self.experiments)
        if self.attributes:
            body["attributes"] = self.attributes
        return body

    def _events_body(self) -> dict[str, Any]:
        return {"events": [event.body(n) for n, event in enumerate(self.events, 1)]}

    def _events_json(self) -> str:
        """The events body, one event a line."""
        events = ",\n".join("    " + json.dumps(event) for event in self._events_body()["events"])
        return '{"events": [\n' + events + "\n  ]}"

    @property
    def curl(self) -> str:
        key_line = (
            f"EXPPLATFORM_KEY={_shell_quote(self.key)}"
            if self.key != KEY_PLACEHOLDER
            else "EXPPLATFORM_KEY=xp_...   # a client key (below)"
        )
        return "\n".join(
            [
                key_line,
                "# Which variant does this customer see? (once per page view or session)",
                f"curl -s -X POST {self.base_url}/api/v1/assign \\",
                "  -H \"Authorization: Bearer $EXPPLATFORM_KEY\" -H 'Content-Type: application/json' \\",
                f"  -d {_shell_quote(json.dumps(self._assign_body()))}",
                "# What did they do? (conversions and ratings, in batches)",
                f"curl -s -X POST {self.base_url}/api/v1/events \\",
                "  -H \"Authorization: Bearer $EXPPLATFORM_KEY\" -H 'Content-Type: application/json' \\",
                f"  -d {_shell_quote(self._events_json())}",
            ]
        )

    @property
    def python(self) -> str:
        placeholder = self.key == KEY_PLACEHOLDER
        lines = ["import os", ""] if placeholder else []
        key = 'os.environ["EXPPLATFORM_KEY"]' if placeholder else repr(self.key)
        lines += ["from expplatform.client import Client", ""]
        lines.append(f"with Client({self.base_url!r}, {key}, timeout=1.5) as exp:")
        attributes = f", attributes={self.attributes!r}" if self.attributes else ""
        if self.experiments:
            first = self.experiments[0]
            lines += [
                f"    assigned = exp.assign({CUSTOMER!r}, {list(self.experiments)!r}{attributes})",
                f"    variant = assigned[{first!r}].variant or {self.control!r}  # None: not enrolled",
            ]
        else:
            lines += [
                f"    assigned = exp.assign({CUSTOMER!r}{attributes})  # every running experiment",
                "    variants = {key: a.variant for key, a in assigned.items() if a.enrolled}",
            ]
        for event in self.events:
            if event.metric is None:
                lines.append(f"    exp.track({CUSTOMER!r}, {event.stage!r}, 'conversion')")
            else:
                lines.append(f"    exp.rate({CUSTOMER!r}, {event.metric!r}, {event.value})  # at {event.stage}")
        lines.append("# leaving the block sends what is still queued")
        return "\n".join(lines)

    @property
    def javascript(self) -> str:
        key = self.key if self.key != KEY_PLACEHOLDER else "xp_..."
        events = ",\n".join(
            "    " + _js_object({**event.body(n), "event_id": _JsCode("crypto.randomUUID()")})
            for n, event in enumerate(self.events, 1)
        )
        if self.experiments:
            pick = (
                f"const assignment = assignments.find((a) => a.experiment === {json.dumps(self.experiments[0])});\n"
                f"const variant = assignment && assignment.enrolled ? assignment.variant : {json.dumps(self.control)};"
            )
        else:
            pick = (
                "const variants = Object.fromEntries(\n"
                "  assignments.filter((a) => a.enrolled).map((a) => [a.experiment, a.variant]));"
            )
        return "\n".join(
            [
                f"const EXPPLATFORM = {json.dumps(self.base_url + '/api/v1')};",
                f'const headers = {{ "Authorization": "Bearer {key}", "Content-Type": "application/json" }};',
                "",
                "const answer = await fetch(`${EXPPLATFORM}/assign`, {",
                f'  method: "POST", headers, body: JSON.stringify({_js_object(self._assign_body())}),',
                "  signal: AbortSignal.timeout(1500),",
                "});",
                "const { assignments } = await answer.json();",
                pick,
                "",
                "await fetch(`${EXPPLATFORM}/events`, {",
                '  method: "POST", headers, body: JSON.stringify({ events: [',
                events,
                "  ] }),",
                "});",
            ]
        )


class _JsCode(str):
    """Written into a JavaScript object as code, not as a string."""


def _js_object(value: Any) -> str:
    if isinstance(value, _JsCode):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k}: {_js_object(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_js_object(v) for v in value) + "]"
    return json.dumps(value)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _example_attributes(journey: Journey | None) -> dict[str, str]:
    attributes = {"platform": "web"}
    if journey is not None and journey.personas:
        attributes = {journey.persona_attribute: journey.personas[0].key, **attributes}
    return attributes


def experiment_events(experiment: Experiment) -> tuple[ExampleEvent, ...]:
    """A conversion at the stage under test, and a rating of each question it measures."""
    questions = {q.key: q for q in experiment.journey.questions}
    events = [ExampleEvent(experiment.target_stage)]
    for stage in experiment.stages:
        question = questions.get(experiment.metrics.get(stage, ""))
        if question is not None:
            events.append(ExampleEvent(stage, question.key, question.scale_max))
    return tuple(events)


def journey_events(journey: Journey | None) -> tuple[ExampleEvent, ...]:
    if journey is None or not journey.stages:
        return (ExampleEvent("purchase"),)
    events = [ExampleEvent(journey.stages[-1].key)]
    events += [ExampleEvent(q.stage, q.key, q.scale_max) for q in journey.questions[:1]]
    return tuple(events)


# -- the pages --------------------------------------------------------------------------------


def _can_edit() -> bool:
    principal = current_principal()
    return principal is not None and role_at_least(principal.role, "editor")


def _base_url() -> str:
    return request.host_url.rstrip("/")


def _client_keys() -> Sequence[ApiKey]:
    query = select(ApiKey).where(ApiKey.scope == "client").order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    return get_session().scalars(query).all()


def _page(experiment: Experiment | None, *, form: ClientKeyForm | None = None, new_key: str | None = None, status=200):
    key = new_key or KEY_PLACEHOLDER
    if experiment is not None:
        control = next((v.key for v in experiment.variants if v.is_control), "control")
        snippets = Snippets(
            _base_url(),
            key,
            (experiment.key,),
            _example_attributes(experiment.journey),
            experiment_events(experiment),
            control,
        )
        journeys = [experiment.journey]
        experiments: Sequence[Experiment] = ()
    else:
        journeys = list_journeys(get_session())
        snippets = Snippets(
            _base_url(),
            key,
            (),
            _example_attributes(journeys[0] if journeys else None),
            journey_events(journeys[0] if journeys else None),
        )
        experiments = experiments_service.list_experiments(get_session(), page=1, per_page=100).items
    body = render_template(
        "integrate.html",
        experiment=experiment,
        experiments=experiments,
        journeys=journeys,
        snippets=snippets,
        keys=_client_keys(),
        new_key=new_key,
        form=form or ClientKeyForm(formdata=None, experiment=experiment.key if experiment else ""),
        can_edit=_can_edit(),
        refresh=STATUS_REFRESH_SECONDS,
    )
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


@bp.get("/integrate")
@login_required("viewer")
def integrate():
    return _page(None)


@bp.get("/experiments/<key>/integrate")
@login_required("viewer")
def integrate_experiment(key: str):
    return _page(experiment_or_404(key))


@bp.post("/integrate/keys")
@login_required("editor")
def create_client_key():
    """A client key (only ever scope ``client``: it ships inside apps), shown once."""
    form = ClientKeyForm()
    experiment = experiment_or_404(form.experiment.data) if form.experiment.data else None
    if not form.validate():
        return _page(experiment, form=form, status=422)
    principal = current_principal()
    with get_db().write() as session:
        _record, plaintext = auth.create_api_key(
            session, "client", (form.name.data or "").strip(), created_by=principal.actor if principal else "web"
        )
    get_session().rollback()  # the request's reads began before the write: read anew, with the new key
    # Rendered, not redirected: the secret exists only in this response.
    return _page(experiment, new_key=plaintext, status=201)


def _status(experiment: Experiment | None) -> LiveStatus:
    memo: TimedMemo[int | None, LiveStatus] = current_app.extensions.setdefault(
        "live_status_memo", TimedMemo(STATUS_MEMO_SECONDS)
    )
    key = experiment.id if experiment is not None else None
    return memo.get_many([key], lambda _keys: {key: live_status(get_session(), experiment, utcnow())})[key]


def _status_page(experiment: Experiment | None):
    body = render_template(
        "integrate_status.html",
        experiment=experiment,
        status=_status(experiment),
        now=utcnow(),
        refresh=STATUS_REFRESH_SECONDS,
    )
    response = Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = FRAMED_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/integrate/status")
@login_required("viewer")
def integrate_status():
    return _status_page(None)


@bp.get("/experiments/<key>/integrate/status")
@login_required("viewer")
def integrate_experiment_status(key: str):
    return _status_page(experiment_or_404(key))
