"""The experiment form: what a product team types, turned into the same definition
mapping the JSON API and the TOML files use.

Every rule is checked once, by :func:`definitions.parse_definition`; this module only
converts text boxes to values (leaving text that is not a number as text, so the
parser names the field) and puts the parser's dotted-path messages back beside the
boxes they came from. Blank variant and targeting rows are ignored; buttons add rows
without JavaScript.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from decimal import Decimal, InvalidOperation
from typing import Any

from flask_wtf import FlaskForm
from wtforms import FieldList, Form, FormField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional

from analysis.types import DecisionRule, Prior

from ..definitions import DEFAULT_STAGES, MAX_VARIANTS, OPERATORS

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
    stages = StringField("Journey stages", default=", ".join(DEFAULT_STAGES))
    target_stage = StringField("Stage under test")
    variants = FieldList(FormField(VariantRow), min_entries=2, max_entries=MAX_VARIANTS)
    control = RadioField("Control", choices=[], default="0", validate_choice=False)
    traffic_percent = StringField("Traffic (% of eligible customers)", default="100")
    targeting = FieldList(FormField(RuleRow), min_entries=1, max_entries=MAX_RULE_ROWS)
    scale_min = StringField("Satisfaction scale from", default="1")
    scale_max = StringField("to", default="5")
    layer = StringField("Mutual-exclusion layer")
    layer_share_percent = StringField("Share of the layer (%)")
    forced_variants = TextAreaField("Forced variants for QA")
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

    def row_choices(self) -> None:
        self.control.choices = [SelectChoice(str(i), f"variant {i + 1}") for i in range(len(self.variants))]

    def field_for(self, path: str):
        """The form field a parser path (``variants.1.weight``) belongs to."""
        head, _, rest = path.partition(".")
        if head == "variants" and rest:
            return self._row_field(self.variants, getattr(self, "variant_rows", []), rest)
        if head == "targeting" and rest:
            return self._row_field(self.targeting, getattr(self, "rule_rows", []), rest)
        if head in {"decision", "prior"} and rest:
            return getattr(self, f"{head}_{rest}", None) or self.decision_ship_probability
        return {
            "traffic": self.traffic_percent,
            "layer_share": self.layer_share_percent,
            "satisfaction_scale": self.scale_max,
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
        """Parser messages keyed by the ``name`` of the input they belong to."""
        placed: dict[str, str] = {}
        for path, message in field_errors.items():
            target = self.field_for(path)
            placed.setdefault(target.name if target is not None else "form", message)
        return placed


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


def form_to_mapping(form: ExperimentForm) -> dict[str, Any]:
    """The definition mapping the form describes (blank rows and boxes left out)."""
    data: dict[str, Any] = {
        "key": (form.key.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "hypothesis": (form.hypothesis.data or "").strip(),
        "stages": _stage_list(form.stages.data or ""),
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
    data["satisfaction_scale"] = {
        "min": _number_or_text(form.scale_min.data or ""),
        "max": _number_or_text(form.scale_max.data or ""),
    }
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
    return data


def mapping_to_form_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Form values showing a stored definition (for edit and clone)."""
    values: dict[str, Any] = {
        "key": data["key"],
        "name": data["name"],
        "hypothesis": data.get("hypothesis", ""),
        "stages": ", ".join(data["stages"]),
        "target_stage": data["target_stage"],
        "variants": [
            {"key": v["key"], "description": v["description"], "weight": f"{v['weight']:g}"} for v in data["variants"]
        ],
        "control": str(next(i for i, v in enumerate(data["variants"]) if v["control"])),
        "traffic_percent": f"{Decimal(str(data['traffic'])) * 100:f}".rstrip("0").rstrip("."),
        "targeting": [
            {"attribute": r["attribute"], "op": r["op"], "value": _rule_text(r["value"])} for r in data["targeting"]
        ],
        "scale_min": str(data["satisfaction_scale"]["min"]),
        "scale_max": str(data["satisfaction_scale"]["max"]),
        "layer": data.get("layer") or "",
        "layer_share_percent": (
            f"{Decimal(str(data['layer_share'])) * 100:f}".rstrip("0").rstrip(".") if data.get("layer_share") else ""
        ),
        "forced_variants": "\n".join(f"{c} = {v}" for c, v in data.get("forced_variants", {}).items()),
    }
    for group, names in (("decision", DECISION_FIELDS), ("prior", PRIOR_FIELDS)):
        for name in names:
            value = data.get(group, {}).get(name)
            values[f"{group}_{name}"] = (
                "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
            )
    return values


def default_form_data() -> dict[str, Any]:
    """A new experiment's form, with the decision and prior defaults written out."""
    values: dict[str, Any] = {
        "variants": [
            {"key": "control", "description": "", "weight": "1"},
            {"key": "treatment", "description": "", "weight": "1"},
        ]
    }
    for group, cls in (("decision", DecisionRule), ("prior", Prior)):
        default = cls()
        for f in fields(cls):
            value = getattr(default, f.name)
            values[f"{group}_{f.name}"] = f"{value:g}" if isinstance(value, float) else str(value)
    return values
