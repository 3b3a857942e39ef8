"""The journey form: stages, personas and rating questions as repeated rows, turned
into the same journey mapping the JSON API and the TOML files use.

Every rule is checked once, by :func:`journey_definitions.parse_journey` and the
journey service; this module converts boxes to values (text that is not a number
stays text, so the parser names the field) and puts the dotted-path messages back
beside the boxes they came from. Blank rows and rows marked "remove" are left out;
buttons add rows and move stages up without JavaScript. Touchpoints are one per line.

What stored experiments and answers freeze (``journeys.Usage``) is shown read-only
with the reason: a stored stage's or question's key (a renamed one is a new one), the
"remove" box of a stage or question in use, a question's scale and stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, FieldList, Form, FormField, SelectField, StringField, TextAreaField
from wtforms.validators import Optional

from ..definitions import DEFAULT_STAGES, MAX_STAGES
from ..journey_definitions import DEFAULT_PERSONA_ATTRIBUTE, MAX_PERSONAS, MAX_QUESTIONS, stage_name
from ..journeys import Usage
from ..models import Journey
from .experiment_form import _number_or_text


class StageRow(Form):
    key = StringField("Key", validators=[Optional()])
    name = StringField("Name", validators=[Optional()])
    goal = StringField("Goal", validators=[Optional()])
    touchpoints = TextAreaField("Touchpoints", validators=[Optional()])
    remove = BooleanField("Remove")


class PersonaRow(Form):
    key = StringField("Value", validators=[Optional()])
    name = StringField("Name", validators=[Optional()])
    description = StringField("Description", validators=[Optional()])
    remove = BooleanField("Remove")


class QuestionRow(Form):
    key = StringField("Key", validators=[Optional()])
    text = StringField("Question", validators=[Optional()])
    stage = SelectField("Stage", choices=[], validate_choice=False)
    scale_min = StringField("Scale from", validators=[Optional()])
    scale_max = StringField("to", validators=[Optional()])
    remove = BooleanField("Remove")


class JourneyForm(FlaskForm):
    key = StringField("Key")
    name = StringField("Name")
    description = TextAreaField("Description")
    persona_attribute = StringField("Persona attribute", default=DEFAULT_PERSONA_ATTRIBUTE)
    stages = FieldList(FormField(StageRow), min_entries=1, max_entries=MAX_STAGES)
    personas = FieldList(FormField(PersonaRow), min_entries=1, max_entries=MAX_PERSONAS)
    questions = FieldList(FormField(QuestionRow), min_entries=1, max_entries=MAX_QUESTIONS)

    # Indices of the rows that went into the mapping (set by form_to_mapping), so a
    # parser path (``stages.1.goal``) finds its row.
    stage_rows: list[int]
    persona_rows: list[int]
    question_rows: list[int]

    def stage_keys(self) -> list[str]:
        """The stage keys typed so far (the questions' stage choices)."""
        keys = [(row.form["key"].data or "").strip() for row in self.stages if not row.form["remove"].data]
        return [key for key in keys if key]

    def row_choices(self) -> None:
        keys = self.stage_keys()
        for row in self.questions:
            current = row.form["stage"].data or ""
            choices = keys if current in keys or not current else [*keys, current]
            row.form["stage"].choices = [(key, key) for key in choices]

    def field_for(self, path: str) -> str:
        """The ``name`` of the input a parser or service path belongs to."""
        head, _, rest = path.partition(".")
        rows = {
            "stages": (self.stages, getattr(self, "stage_rows", [])),
            "personas": (self.personas, getattr(self, "persona_rows", [])),
            "questions": (self.questions, getattr(self, "question_rows", [])),
        }
        if head in rows:
            entries, indices = rows[head]
            index, _, name = rest.partition(".")
            if not index.isdigit():
                return head
            position = int(index)
            row = entries[indices[position]] if position < len(indices) else entries[-1]
            name = name.split(".")[0]
            if head == "questions" and name == "scale":
                name = "scale_max" if rest.endswith(".max") else "scale_min"
            return row.form[name].name if name in row.form._fields else row.form["key"].name
        if head in self._fields:
            return self[head].name
        return "form"

    def errors_by_name(self, field_errors: Mapping[str, str]) -> dict[str, str]:
        """Messages keyed by the ``name`` of the input they belong to."""
        placed: dict[str, str] = {}
        for path, message in field_errors.items():
            placed.setdefault(self.field_for(path), message)
        return placed


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _text(row: Form, name: str) -> str:
    return (row.form[name].data or "").strip()


def form_to_mapping(form: JourneyForm) -> dict[str, Any]:
    """The journey mapping the form describes (blank and removed rows left out)."""
    data: dict[str, Any] = {
        "key": (form.key.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "description": (form.description.data or "").strip(),
    }
    attribute = (form.persona_attribute.data or "").strip()
    if attribute:
        data["persona_attribute"] = attribute
    stages: list[dict[str, Any]] = []
    form.stage_rows = []
    for index, row in enumerate(form.stages):
        values = {name: _text(row, name) for name in ("key", "name", "goal", "touchpoints")}
        if row.form["remove"].data or not any(values.values()):
            continue
        form.stage_rows.append(index)
        stage: dict[str, Any] = {"key": values["key"]}
        if values["name"]:
            stage["name"] = values["name"]
        stage["goal"] = values["goal"]
        stage["touchpoints"] = _lines(row.form["touchpoints"].data or "")
        stages.append(stage)
    data["stages"] = stages
    personas: list[dict[str, Any]] = []
    form.persona_rows = []
    for index, row in enumerate(form.personas):
        values = {name: _text(row, name) for name in ("key", "name", "description")}
        if row.form["remove"].data or not any(values.values()):
            continue
        form.persona_rows.append(index)
        persona = {"key": values["key"], "description": values["description"]}
        if values["name"]:
            persona["name"] = values["name"]
        personas.append(persona)
    data["personas"] = personas
    questions: list[dict[str, Any]] = []
    form.question_rows = []
    for index, row in enumerate(form.questions):
        if row.form["remove"].data or not (_text(row, "key") or _text(row, "text")):
            continue
        form.question_rows.append(index)
        questions.append(
            {
                "key": _text(row, "key"),
                "text": _text(row, "text"),
                "stage": _text(row, "stage"),
                "scale": {
                    "min": _number_or_text(_text(row, "scale_min")),
                    "max": _number_or_text(_text(row, "scale_max")),
                },
            }
        )
    data["questions"] = questions
    return data


def mapping_to_form_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Form values showing a stored journey (for edit)."""
    return {
        "key": data["key"],
        "name": data["name"],
        "description": data.get("description", ""),
        "persona_attribute": data.get("persona_attribute", DEFAULT_PERSONA_ATTRIBUTE),
        "stages": [
            {"key": s["key"], "name": s["name"], "goal": s["goal"], "touchpoints": "\n".join(s["touchpoints"])}
            for s in data["stages"]
        ],
        "personas": [{"key": p["key"], "name": p["name"], "description": p["description"]} for p in data["personas"]]
        or [{}],
        "questions": [
            {
                "key": q["key"],
                "text": q["text"],
                "stage": q["stage"],
                "scale_min": str(q["scale"]["min"]),
                "scale_max": str(q["scale"]["max"]),
            }
            for q in data["questions"]
        ]
        or [{}],
    }


def default_form_data() -> dict[str, Any]:
    """A new journey's form: the five default stages to start from."""
    return {
        "persona_attribute": DEFAULT_PERSONA_ATTRIBUTE,
        "stages": [{"key": key, "name": stage_name(key)} for key in DEFAULT_STAGES],
        "personas": [{}],
        "questions": [{"scale_min": "1", "scale_max": "5"}],
    }


def rows_with_move(data: dict[str, Any], index: int) -> dict[str, Any]:
    """``data`` with stage row ``index`` moved one place up."""
    stages = list(data["stages"])
    if 0 < index < len(stages):
        stages[index - 1], stages[index] = stages[index], stages[index - 1]
    return {**data, "stages": stages}


@dataclass
class Frozen:
    """What the edit page shows read-only, with the reason, by stored key."""

    stage_keys: set[str] = field(default_factory=set)  # stored: the key box is read-only
    question_keys: set[str] = field(default_factory=set)
    stage_in_use: dict[str, str] = field(default_factory=dict)  # key -> why it cannot be removed
    stage_order: dict[str, str] = field(default_factory=dict)  # key -> why its order is kept
    question_in_use: dict[str, str] = field(default_factory=dict)  # key -> why it cannot go or move
    scale: dict[str, str] = field(default_factory=dict)  # key -> why its scale cannot change

    @classmethod
    def of(cls, journey: Journey, usage: Usage) -> Frozen:
        frozen = cls(stage_keys={s.key for s in journey.stages}, question_keys={q.key for q in journey.questions})
        for stage in journey.stages:
            users = usage.measuring_stage(stage.key)
            if users:
                frozen.stage_in_use[stage.key] = "measured by " + ", ".join(use.label for use in users)
            locking = [use for use in users if use.locking and len(use.stages) > 1]
            if locking:
                frozen.stage_order[stage.key] = "keeps its order among the stages " + ", ".join(
                    f"{use.label} measures ({' → '.join(use.stages)})" for use in locking
                )
        for question in journey.questions:
            users = usage.measuring_question(question.key)
            reasons = []
            if users:
                reasons.append("measured by " + ", ".join(use.label for use in users))
            if question.key in usage.answered:
                reasons.append("it has answers")
            if reasons:
                frozen.question_in_use[question.key] = " and ".join(reasons)
            locking = [use for use in users if use.locking]
            if question.key in usage.answered or locking:
                frozen.scale[question.key] = (
                    "it has answers" if question.key in usage.answered else "measured by " + locking[0].label
                )
        return frozen
