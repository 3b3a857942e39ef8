"""The experiment form: what a product team types, turned into the same definition
mapping the JSON API and the TOML files use.

Every rule is checked once, by :func:`definitions.parse_definition` and the
experiment service; this module only converts boxes to values (leaving text that is
not a number as text, so the parser names the field) and puts the dotted-path
messages back beside the boxes they came from. Blank variant and targeting rows are
ignored; buttons add rows without JavaScript.

The journey part: a journey select, the stage under test as a select of that
journey's stages, the measured stages as checkboxes and, per stage, a select of its
rating questions (or none). Without JavaScript the stage boxes cannot follow the
journey select, so a changed journey shows its stages again before anything is
saved (the hidden ``shown_journey`` says which journey the boxes were made for).
The form from before journeys (a ``stages`` text and ``scale_min``/``scale_max``,
no journey) is still accepted when posted, and resolves to an implicit journey.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    FieldList,
    Form,
    FormField,
    HiddenField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional

from analysis.types import DecisionRule, Prior

from ..definitions import DEFAULT_STAGES, MAX_VARIANTS, OPERATORS
from ..journey_definitions import stage_name
from ..models import Journey

MAX_RULE_ROWS = 20
OPERATOR_LABELS = {
    "eq": "equals",
    "ne": "does not equal",
    "in": "is one of",
    "not_in": "is none of",
    "lt": "<",
    "lte": "≤",
    "gt": ">",
    "gte": "≥",
}
DECISION_FIELDS = tuple(f.name for f in fields(DecisionRule))
PRIOR_FIELDS = tuple(f.name for f in fields(Prior))
NO_QUESTION = "none"
QUESTION_PREFIX = "question-"


@dataclass(frozen=True)
class QuestionChoice:
    key: str
    text: str
    scale: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.text} ({self.scale[0]} to {self.scale[1]})"


@dataclass(frozen=True)
class JourneyChoice:
    """The journey whose stages and questions the form shows; key '' is the default
    journey of an installation that has none yet (made when the experiment is saved,
    with a 1-5 question at each stage)."""

    key: str
    name: str
    stages: tuple[tuple[str, str], ...]  # (key, name) in journey order
    questions: Mapping[str, tuple[QuestionChoice, ...]]  # stage key -> its questions
    # Suggested in the targeting rows: the attribute clients send the persona in, and
    # the journey's personas as its values.
    persona_attribute: str = "persona"
    personas: tuple[tuple[str, str], ...] = ()  # (key, name)

    @classmethod
    def of(cls, journey: Journey) -> JourneyChoice:
        questions: dict[str, list[QuestionChoice]] = {}
        for q in journey.questions:
            questions.setdefault(q.stage, []).append(QuestionChoice(q.key, q.text, (q.scale_min, q.scale_max)))
        return cls(
            key=journey.key,
            name=journey.name,
            stages=tuple((s.key, s.name) for s in journey.stages),
            questions={stage: tuple(items) for stage, items in questions.items()},
            persona_attribute=journey.persona_attribute,
            personas=tuple((p.key, p.name) for p in journey.personas),
        )

    @classmethod
    def default(cls) -> JourneyChoice:
        return cls(
            key="", name="Default journey", stages=tuple((s, stage_name(s)) for s in DEFAULT_STAGES), questions={}
        )

    @property
    def stage_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.stages)

    def first_questions(self) -> dict[str, str]:
        """Each stage's first question (what a new experiment measures there)."""
        return {stage: items[0].key for stage, items in self.questions.items() if items}


class VariantRow(Form):
    key = StringField("Key", validators=[Optional()])
    description = StringField("Description", validators=[Optional()])
    weight = StringField("Weight", validators=[Optional()])


class RuleRow(Form):
    attribute = StringField("Attribute", validators=[Optional()])
    op = SelectField("Operator", choices=[SelectChoice(op, OPERATOR_LABELS[op]) for op in OPERATORS], default="eq")
    value = StringField("Value", validators=[Optional()])


class ExperimentForm(FlaskForm):
    key = StringField("Key")
    name = StringField("Name")
    hypothesis = TextAreaField("Hypothesis")
    journey = SelectField("Journey", choices=[], validate_choice=False)
    shown_journey = HiddenField()
    target_stage = SelectField("Stage under test", choices=[], validate_choice=False)
    measured = SelectMultipleField("Measured stages", choices=[], validate_choice=False)
    # The form from before journeys: accepted when posted, no longer shown.
    stages = StringField("Journey stages")
    scale_min = StringField("Satisfaction scale from")
    scale_max = StringField("to")
    variants = FieldList(FormField(VariantRow), min_entries=2, max_entries=MAX_VARIANTS)
    control = RadioField("Control", choices=[], default="0", validate_choice=False)
    traffic_percent = StringField("Traffic (% of eligible customers)", default="100")
    targeting = FieldList(FormField(RuleRow), min_entries=1, max_entries=MAX_RULE_ROWS)
    layer = StringField("Mutual-exclusion layer")
    layer_share_percent = StringField("Share of the layer (%)")
    forced_variants = TextAreaField("Forced variants for QA")
    warehouse_source = SelectField("Events from", choices=[], validate_choice=False)
    decision_ship_probability = StringField("Ship when P(better) ≥")
    decision_harm_probability = StringField("Harmful when P(better) ≤")
    decision_max_expected_loss = StringField("Largest expected relative loss to ship")
    decision_min_exposed = StringField("Customers needed per variant")
    decision_guardrail_probability = StringField("Guardrail: harmful downstream when P(better) ≤")
    decision_credible_level = StringField("Credible level")
    decision_srm_alpha = StringField("Sample-ratio check: flag when p <")
    prior_conversion_alpha = StringField("Conversion prior α")
    prior_conversion_beta = StringField("Conversion prior β")
    prior_rating_concentration = StringField("Rating prior concentration")

    # The question chosen at each stage (stage -> question key or NO_QUESTION): the
    # ``question-<stage>`` selects, which depend on the journey shown.
    questions_by_stage: dict[str, str]
    # The stage of each entry of the mapping's ``metrics`` (set by form_to_mapping).
    metric_stages: list[str]

    def read_questions(self, formdata: Mapping[str, str]) -> None:
        self.questions_by_stage = {
            name[len(QUESTION_PREFIX) :]: value for name, value in formdata.items() if name.startswith(QUESTION_PREFIX)
        }

    def row_choices(self, journeys: list[Journey] | None = None, shown: JourneyChoice | None = None) -> None:
        self.control.choices = [SelectChoice(str(i), f"variant {i + 1}") for i in range(len(self.variants))]
        if journeys is None or shown is None:
            return
        current = self.journey.data or ""
        choices = [SelectChoice(j.key, f"{j.name} ({j.key})") for j in journeys]
        if not journeys or current not in {j.key for j in journeys}:
            label = current or "Default journey: the five default stages, made when saved"
            choices.append(SelectChoice(current, label))
        self.journey.choices = choices
        target = self.target_stage.data or ""
        stage_choices = [SelectChoice(key, name) for key, name in shown.stages]
        if target and target not in shown.stage_keys:
            stage_choices.append(SelectChoice(target, target))  # as typed, beside its error
        self.target_stage.choices = stage_choices
        self.measured.choices = [SelectChoice(key, name) for key, name in shown.stages]

    def source_choices(self, sources: list[tuple[str, str]]) -> None:
        """The warehouse source select: (key, name) of each source, after the
        built-in events (the empty choice); a key typed that is not one stays shown."""
        current = self.warehouse_source.data or ""
        choices = [
            SelectChoice("", "Built-in events"),
            *(SelectChoice(key, f"{name} ({key})") for key, name in sources),
        ]
        if current and current not in {key for key, _ in sources}:
            choices.append(SelectChoice(current, current))
        self.warehouse_source.choices = choices

    def field_for(self, path: str):
        """The form field a parser path (``variants.1.weight``) belongs to."""
        head, _, rest = path.partition(".")
        if head == "stages":
            return self.measured
        if head == "metrics":
            stages = getattr(self, "metric_stages", [])
            index = rest.split(".")[0]
            if index.isdigit() and int(index) < len(stages):
                return _Named(f"{QUESTION_PREFIX}{stages[int(index)]}")
            return self.measured
        if head == "variants" and rest:
            return self._row_field(self.variants, getattr(self, "variant_rows", []), rest)
        if head == "targeting" and rest:
            return self._row_field(self.targeting, getattr(self, "rule_rows", []), rest)
        if head in {"decision", "prior"} and rest:
            return getattr(self, f"{head}_{rest}", None) or self.decision_ship_probability
        return {
            "traffic": self.traffic_percent,
            "layer_share": self.layer_share_percent,
            "satisfaction_scale": _Named("form"),
            "decision": self.decision_ship_probability,
            "prior": self.prior_conversion_alpha,
        }.get(head) or getattr(self, head, None)

    @staticmethod
    def _row_field(rows: FieldList, indices: list[int], rest: str):
        index, _, name = rest.partition(".")
        if not index.isdigit():
            return rows
        position = int(index)
        row = rows[indices[position]] if position < len(indices) else rows[-1]
        if name == "control":
            return row.key
        return row.form[name] if name in row.form._fields else row.key

    def errors_by_name(self, field_errors: Mapping[str, str]) -> dict[str, str]:
        """Parser messages keyed by the ``name`` of the input they belong to, said in
        the form's terms where the parser's are the API's."""
        placed: dict[str, str] = {}
        for path, message in field_errors.items():
            target = self.field_for(path)
            if path == "stages" and not self.measured.data and self.shown_journey.data is not None:
                message = "tick at least one stage to measure"
            elif (
                path == "target_stage"
                and self.shown_journey.data is not None
                and message.startswith("must be one of the")
                and (self.target_stage.data or "") not in (self.measured.data or [])
            ):
                message = "must be one of the stages measured: tick it, or test another stage"
            elif path.startswith("satisfaction_scale"):
                message = f"satisfaction scale: {message}"
            elif path in {"traffic", "layer_share"}:
                message = _in_percent(message)
            placed.setdefault(target.name if target is not None else "form", _operators_named(message))
        return placed


_FRACTION = re.compile(r"\b(?:0(?:\.\d+)?|1(?:\.0+)?|\d\.\d+e-\d+)\b")
_QUOTED_OPERATOR = re.compile(r"'(" + "|".join(OPERATORS) + r")'")


def _in_percent(message: str) -> str:
    """A message about a share in the form's unit: the box takes percent, the parser
    and the service speak in fractions ("must be at least 0.333" -> "at least 33.3%")."""
    if message == "must be a number greater than 0 and at most 1":
        return "must be a percentage greater than 0 and at most 100"
    return _FRACTION.sub(lambda m: _percent_text(Decimal(m.group()) * 100) + "%", message)


def _percent_text(number: Decimal) -> str:
    text = f"{number:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _operators_named(message: str) -> str:
    """The operator as the form shows it: "for '>'", not "for 'gt'"."""
    return _QUOTED_OPERATOR.sub(lambda m: f"'{OPERATOR_LABELS[m.group(1)]}'", message)


@dataclass(frozen=True)
class _Named:
    """Where an error goes that has no form field of its own."""

    name: str


def _number_or_text(text: str) -> Any:
    """``"0.5"`` -> 0.5 and ``"100"`` -> 100; anything else stays text for the parser to
    reject with a message beside the box."""
    text = text.strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return text
    return (
        int(number)
        if number == number.to_integral_value() and "." not in text and "e" not in text.lower()
        else float(number)
    )


def _percent(text: str) -> Any:
    text = text.strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    return float(number / 100) if number.is_finite() else text


def _rule_value(text: str, op: str) -> Any:
    """Values of a targeting rule. Numbers and true/false are typed; put a value in
    double quotes to keep it text (``"02134"``). Lists are comma-separated."""

    def one(item: str) -> Any:
        item = item.strip()
        if len(item) >= 2 and item[0] == item[-1] == '"':
            return item[1:-1]
        if item in {"true", "false"}:
            return item == "true"
        return _number_or_text(item)

    if op in {"in", "not_in"}:
        return [one(part) for part in text.split(",") if part.strip()]
    return one(text)


def _rule_text(value: Any) -> str:
    def one(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str):
            needs_quotes = item in {"true", "false"} or not isinstance(_number_or_text(item), str) or "," in item
            return json.dumps(item) if needs_quotes else item
        return f"{item:g}" if isinstance(item, float) else str(item)

    return ", ".join(one(v) for v in value) if isinstance(value, list) else one(value)


def _stage_list(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def _journey_fields(form: ExperimentForm) -> dict[str, Any]:
    """``journey``, ``stages`` and ``metrics``, or (no journey chosen: the form from
    before journeys, or the default journey of a new installation) ``stages`` and
    ``satisfaction_scale`` for the implicit journey."""
    journey = (form.journey.data or "").strip()
    measured = [stage.strip() for stage in form.measured.data or [] if stage.strip()]
    form.metric_stages = []
    if journey:
        chosen = getattr(form, "questions_by_stage", {})
        metrics = []
        for stage in measured:
            question = (chosen.get(stage) or NO_QUESTION).strip()
            if question != NO_QUESTION:
                form.metric_stages.append(stage)
                metrics.append(question)
        return {"journey": journey, "stages": measured, "metrics": metrics}
    data: dict[str, Any] = {}
    stages = measured or _stage_list(form.stages.data or "")
    if stages or form.shown_journey.data is not None:
        data["stages"] = stages
    low, high = (form.scale_min.data or "").strip(), (form.scale_max.data or "").strip()
    if low or high:
        data["satisfaction_scale"] = {"min": _number_or_text(low), "max": _number_or_text(high)}
    return data


def form_to_mapping(form: ExperimentForm) -> dict[str, Any]:
    """The definition mapping the form describes (blank rows and boxes left out)."""
    data: dict[str, Any] = {
        "key": (form.key.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "hypothesis": (form.hypothesis.data or "").strip(),
        **_journey_fields(form),
        "target_stage": (form.target_stage.data or "").strip(),
    }
    variants: list[dict[str, Any]] = []
    form.variant_rows = []
    control = form.control.data or "0"
    for index, row in enumerate(form.variants):
        if not any((row.form[name].data or "").strip() for name in ("key", "description", "weight")):
            continue
        form.variant_rows.append(index)
        weight_text = (row.form["weight"].data or "").strip()
        variants.append(
            {
                "key": (row.form["key"].data or "").strip(),
                "description": (row.form["description"].data or "").strip(),
                "weight": _number_or_text(weight_text) if weight_text else "",
                "control": str(index) == control,
            }
        )
    if variants and not any(v["control"] for v in variants):
        variants[0]["control"] = True
    data["variants"] = variants
    data["traffic"] = _percent(form.traffic_percent.data or "100")
    rules: list[dict[str, Any]] = []
    form.rule_rows = []
    for index, row in enumerate(form.targeting):
        attribute, value = (row.form["attribute"].data or "").strip(), row.form["value"].data or ""
        if not attribute and not value.strip():
            continue
        form.rule_rows.append(index)
        op = row.form["op"].data or "eq"
        rules.append({"attribute": attribute, "op": op, "value": _rule_value(value, op)})
    data["targeting"] = rules
    if (form.layer.data or "").strip():
        data["layer"] = form.layer.data.strip()
        if (form.layer_share_percent.data or "").strip():
            data["layer_share"] = _percent(form.layer_share_percent.data)
    elif (form.layer_share_percent.data or "").strip():
        data["layer_share"] = _percent(form.layer_share_percent.data)
    for group, names in (("decision", DECISION_FIELDS), ("prior", PRIOR_FIELDS)):
        values = {}
        for name in names:
            text = (getattr(form, f"{group}_{name}").data or "").strip()
            if text:
                values[name] = _number_or_text(text)
        data[group] = values
    forced: dict[str, str] = {}
    for line in (form.forced_variants.data or "").splitlines():
        if not line.strip():
            continue
        customer, sep, variant = line.partition("=")
        forced[customer.strip() if sep else line.strip()] = variant.strip() if sep else ""
    data["forced_variants"] = forced
    if (form.warehouse_source.data or "").strip():
        data["warehouse_source"] = form.warehouse_source.data.strip()
    return data


def mapping_to_form_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Form values showing a stored definition (for edit and clone); the questions
    of its stages are ``questions_by_stage`` (:func:`stored_questions`)."""
    values: dict[str, Any] = {
        "key": data["key"],
        "name": data["name"],
        "hypothesis": data.get("hypothesis", ""),
        "journey": data["journey"],
        "shown_journey": data["journey"],
        "measured": list(data["stages"]),
        "target_stage": data["target_stage"],
        "variants": [
            {"key": v["key"], "description": v["description"], "weight": f"{v['weight']:g}"} for v in data["variants"]
        ],
        "control": str(next(i for i, v in enumerate(data["variants"]) if v["control"])),
        "traffic_percent": _percent_text(Decimal(str(data["traffic"])) * 100),
        "targeting": [
            {"attribute": r["attribute"], "op": r["op"], "value": _rule_text(r["value"])} for r in data["targeting"]
        ],
        "layer": data.get("layer") or "",
        "layer_share_percent": (
            _percent_text(Decimal(str(data["layer_share"])) * 100) if data.get("layer_share") else ""
        ),
        "forced_variants": "\n".join(f"{c} = {v}" for c, v in data.get("forced_variants", {}).items()),
        "warehouse_source": data.get("warehouse_source") or "",
    }
    for group, names in (("decision", DECISION_FIELDS), ("prior", PRIOR_FIELDS)):
        for name in names:
            value = data.get(group, {}).get(name)
            values[f"{group}_{name}"] = (
                "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
            )
    return values


def journey_form_data(shown: JourneyChoice, target_stage: str | None = None) -> dict[str, Any]:
    """The journey part of a new experiment's form on ``shown``: every stage measured,
    each with its first question; the stage under test ``target_stage`` if it is one
    of the journey's, else the first."""
    stages = shown.stage_keys
    return {
        "journey": shown.key,
        "shown_journey": shown.key,
        "target_stage": target_stage if target_stage in stages else (stages[0] if stages else ""),
        "measured": list(stages),
    }


def stored_questions(shown: JourneyChoice, measured: list[str], metrics: Mapping[str, str]) -> dict[str, str]:
    """The question select of each stage: the stored question of a measured stage
    (none if it has none), the first question of a stage not measured."""
    first = shown.first_questions()
    return {
        stage: metrics.get(stage, NO_QUESTION) if stage in measured else first.get(stage, NO_QUESTION)
        for stage in shown.stage_keys
    }


def default_form_data(shown: JourneyChoice, target_stage: str | None = None) -> dict[str, Any]:
    """A new experiment's form, with the decision and prior defaults written out."""
    values: dict[str, Any] = {
        **journey_form_data(shown, target_stage),
        "variants": [
            {"key": "control", "description": "", "weight": "1"},
            {"key": "treatment", "description": "", "weight": "1"},
        ],
    }
    for group, cls in (("decision", DecisionRule), ("prior", Prior)):
        default = cls()
        for f in fields(cls):
            value = getattr(default, f.name)
            values[f"{group}_{f.name}"] = f"{value:g}" if isinstance(value, float) else str(value)
    return values
