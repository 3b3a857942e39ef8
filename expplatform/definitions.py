"""Experiment definitions as plain data: one validating parser shared by the JSON
API, the TOML files and the web form, so the three cannot drift apart.

A definition arrives as a mapping (a JSON object, a parsed TOML file, or a form
turned into a mapping) and leaves :func:`parse_definition` as a frozen
:class:`ExperimentDefinition`, or as one :class:`~expplatform.errors.InvalidInput`
naming every bad field by its dotted path (``variants.1.weight``: lists are
counted from 0). :func:`definition_to_mapping` is the inverse, and
:func:`dump_toml` writes it in a fixed order so an exported file diffs cleanly.

Weights: any positive numbers within bounds are accepted and normalised to sum to 1 on
save (the caller is told through ``ExperimentDefinition.notices``); weights that already
sum to 1 within 1e-9 are kept exactly as given, so export -> apply is a no-op.

Hostile input: every text (names, descriptions, attribute names and values, customer
ids) is refused if it holds a NUL or a lone surrogate, which PostgreSQL, JSON encoders
or UTF-8 cannot store; every number is bounded to a range where it means something
(see ``WEIGHT_*``, ``SETTING_BOUNDS``), so nothing overflows, underflows or turns
the analysis into a constant.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from analysis.exceptions import AnalysisInputError
from analysis.types import DecisionRule, Prior

from .bucketing import LAYER_BUCKETS
from .errors import InvalidInput, MalformedRequest

# Always matched whole (``SLUG.fullmatch``): with ``match``, ``$`` also accepts a
# trailing newline. The anchors stay for the OpenAPI ``pattern``, which searches.
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Characters no text field may hold: NUL (PostgreSQL refuses it) and lone surrogates
# (not encodable as UTF-8).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
DEFAULT_STAGES: tuple[str, ...] = ("awareness", "consideration", "purchase", "retention", "advocacy")
Operator = Literal["eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte"]
OPERATORS: tuple[str, ...] = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte")
LIST_OPERATORS = frozenset({"in", "not_in"})
NUMERIC_OPERATORS = frozenset({"lt", "lte", "gt", "gte"})
Scalar = str | int | float | bool

MAX_STAGES = 20
MIN_VARIANTS, MAX_VARIANTS = 2, 10
MAX_NAME = 200
MAX_TEXT = 10_000
MAX_ATTRIBUTE = 64
MAX_STRING_VALUE = 256
MAX_LIST_VALUES = 1_000
MAX_RULES = 50
MAX_FORCED = 1_000
MAX_CUSTOMER_ID = 256
MAX_SCALE_SPAN = 10
WEIGHT_TOLERANCE = 1e-9
WEIGHTS_NORMALISED = "weights normalised to sum to 1"  # the notice's start
# Weights are relative, but bounded so that normalising can neither overflow nor
# underflow, and so that every variant gets a share the bucketing can resolve.
WEIGHT_MIN, WEIGHT_MAX = 1e-6, 1e6
WEIGHT_MAX_RATIO = 1e6
# Whole numbers beyond this lose precision as floats (and overflow database integers).
MAX_EXACT_INTEGER = 2**53
SCALE_BOUND = 1000
# Meaningful ranges of the analysis settings (inclusive), checked on top of the
# analysis' own rules (``analysis.types``): a Beta(1e308, 1) prior gives a posterior
# mean of 1 whatever the data, and min_exposed = 2**70 can never be reached.
SETTING_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "decision": {
        "ship_probability": (0.5, 0.9999),
        "harm_probability": (0.0001, 0.5),
        "guardrail_probability": (0.0001, 0.5),
        "credible_level": (0.5, 0.9999),
        "srm_alpha": (1e-9, 0.1),
        "max_expected_loss": (0.0, 1.0),
        "min_exposed": (0, 1_000_000_000),
    },
    "prior": {
        "conversion_alpha": (0.01, 10_000.0),
        "conversion_beta": (0.01, 10_000.0),
        "rating_concentration": (0.01, 10_000.0),
    },
}

TOP_LEVEL_FIELDS: tuple[str, ...] = (
    "key",
    "name",
    "hypothesis",
    "journey",
    "stages",
    "metrics",
    "target_stage",
    "variants",
    "traffic",
    "targeting",
    "satisfaction_scale",
    "layer",
    "layer_share",
    "decision",
    "prior",
    "forced_variants",
    "warehouse_source",
)
_VARIANT_FIELDS = ("key", "description", "weight", "control")
_RULE_FIELDS = ("attribute", "op", "value")
_SCALE_FIELDS = ("min", "max")


@dataclass(frozen=True)
class VariantDefinition:
    key: str
    description: str
    weight: float
    is_control: bool


@dataclass(frozen=True)
class TargetingRule:
    """``attribute op value``; a list value (a tuple here) only with in/not_in."""

    attribute: str
    op: Operator
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class ExperimentDefinition:
    key: str
    name: str
    target_stage: str
    variants: tuple[VariantDefinition, ...]
    hypothesis: str = ""
    # The journey the experiment belongs to, the stages of it measured (None: all)
    # and the rating question measured at each (None: each stage's first). Without a
    # journey, ``stages`` (default: the five default stages) and ``scale`` (the
    # satisfaction scale, default 1-5) name an implicit journey (``journeys``). The
    # experiment service resolves every definition to the explicit form before it
    # is stored or compared, so exports always carry journey, stages and metrics.
    journey: str | None = None
    stages: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    scale: tuple[int, int] | None = None
    traffic: float = 1.0
    targeting: tuple[TargetingRule, ...] = ()
    layer: str | None = None
    layer_share: float | None = None
    decision: DecisionRule = field(default_factory=DecisionRule)
    prior: Prior = field(default_factory=Prior)
    forced_variants: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The warehouse source holding its outcomes (``warehouse.sources``), by key; None:
    # the built-in events.
    warehouse_source: str | None = None
    # What the parser did to the input that the caller should be told (not part of
    # the definition: two definitions differing only here are equal).
    notices: tuple[str, ...] = field(default=(), compare=False)

    @property
    def control(self) -> VariantDefinition:
        return next(v for v in self.variants if v.is_control)


# -- parsing -------------------------------------------------------------------------


class _Errors:
    """Collects one message per dotted field path; the first message for a path wins."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, path: str, message: str) -> None:
        self.fields.setdefault(path, message)

    def has_under(self, path: str) -> bool:
        return any(name == path or name.startswith(path + ".") for name in self.fields)


def _is_number(value: Any) -> bool:
    """A finite number (not true/false); whole numbers only up to 2**53, since a larger
    one cannot even be converted to a float without losing it (or overflowing)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_EXACT_INTEGER
    return isinstance(value, float) and math.isfinite(value)


def storable(value: str) -> bool:
    """Text that both databases store and every JSON encoder writes back."""
    return UNSTORABLE.search(value) is None


UNSTORABLE_MESSAGE = "must not contain NUL characters or unpaired surrogates"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool)) or _is_number(value)


def _slug(errors: _Errors, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not SLUG.fullmatch(value):
        errors.add(
            path,
            "must be a slug: 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit",
        )
        return None
    return value


def _text(errors: _Errors, path: str, value: Any, *, max_length: int, required: bool) -> str | None:
    if not isinstance(value, str):
        errors.add(path, "must be text")
        return None
    if not storable(value):
        errors.add(path, UNSTORABLE_MESSAGE)
        return None
    value = value.strip()
    if required and not value:
        errors.add(path, "must not be empty")
        return None
    if len(value) > max_length:
        errors.add(path, f"must be at most {max_length} characters")
        return None
    return value


def _fraction(errors: _Errors, path: str, value: Any) -> float | None:
    if not _is_number(value) or not 0 < value <= 1:
        errors.add(path, "must be a number greater than 0 and at most 1")
        return None
    return float(value)


def _whole(errors: _Errors, path: str, value: Any) -> int | None:
    if not _is_number(value) or float(value) != int(value):
        errors.add(path, "must be a whole number")
        return None
    if abs(value) > SCALE_BOUND:
        errors.add(path, f"must be between -{SCALE_BOUND} and {SCALE_BOUND}")
        return None
    return int(value)


def _unknown(errors: _Errors, prefix: str, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for name in data:
        if name not in known:
            errors.add(f"{prefix}{name}", "unknown field")


def _stages(errors: _Errors, value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STAGES:
        errors.add("stages", f"must be a list of 1 to {MAX_STAGES} stage slugs")
        return None
    stages = [_slug(errors, f"stages.{i}", item) for i, item in enumerate(value)]
    if errors.has_under("stages"):
        return None
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage in seen:
            errors.add(f"stages.{i}", f"duplicate stage {stage!r}")
            return None
        seen.add(stage)  # type: ignore[arg-type]
    return tuple(stages)  # type: ignore[arg-type]


def _keys(errors: _Errors, path: str, value: Any) -> tuple[str, ...] | None:
    # Empty is allowed: an experiment may measure no rating question at all.
    if not isinstance(value, list) or len(value) > MAX_STAGES * 5:
        errors.add(path, f"must be a list of at most {MAX_STAGES * 5} keys")
        return None
    keys = [_slug(errors, f"{path}.{i}", item) for i, item in enumerate(value)]
    for i, key in enumerate(keys):
        if key is not None and key in keys[:i]:
            errors.add(f"{path}.{i}", f"duplicate {key!r}")
    if errors.has_under(path):
        return None
    return tuple(keys)  # type: ignore[arg-type]


def _variants(errors: _Errors, value: Any) -> tuple[tuple[VariantDefinition, ...], tuple[str, ...]] | None:
    if not isinstance(value, list) or not MIN_VARIANTS <= len(value) <= MAX_VARIANTS:
        errors.add("variants", f"must be a list of {MIN_VARIANTS} to {MAX_VARIANTS} variants")
        return None
    parsed: list[tuple[str, str, float, bool]] = []
    for i, item in enumerate(value):
        path = f"variants.{i}"
        if not isinstance(item, Mapping):
            errors.add(path, "must be an object with key, description and weight")
            continue
        _unknown(errors, f"{path}.", item, _VARIANT_FIELDS)
        key = _slug(errors, f"{path}.key", item.get("key"))
        description = _text(
            errors, f"{path}.description", item.get("description", ""), max_length=MAX_TEXT, required=False
        )
        weight = item.get("weight", 1)
        if not _is_number(weight) or weight <= 0:
            errors.add(f"{path}.weight", "must be a positive number")
        elif not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            errors.add(f"{path}.weight", f"must be between {WEIGHT_MIN:g} and {WEIGHT_MAX:g}")
        control = item.get("control", False)
        if not isinstance(control, bool):
            errors.add(f"{path}.control", "must be true or false")
        if (
            key is not None
            and description is not None
            and _is_number(weight)
            and WEIGHT_MIN <= weight <= WEIGHT_MAX
            and isinstance(control, bool)
        ):
            parsed.append((key, description, float(weight), control))
    if errors.has_under("variants"):
        return None
    keys = [key for key, *_ in parsed]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            errors.add(f"variants.{i}.key", f"duplicate variant key {key!r}")
            return None
    controls = [i for i, (*_, control) in enumerate(parsed) if control]
    if len(controls) > 1:
        errors.add(f"variants.{controls[1]}.control", "only one variant can be the control")
        return None
    control_index = controls[0] if controls else 0
    largest = max(weight for _, _, weight, _ in parsed)
    for i, (*_, weight, _) in enumerate(parsed):
        if weight * WEIGHT_MAX_RATIO < largest:
            errors.add(f"variants.{i}.weight", f"must be at least 1/{WEIGHT_MAX_RATIO:g} of the largest weight")
            return None
    total = math.fsum(weight for _, _, weight, _ in parsed)
    notices: tuple[str, ...] = ()
    if abs(total - 1) > WEIGHT_TOLERANCE:
        notices = (f"{WEIGHTS_NORMALISED} (they summed to {total:g})",)
        parsed = [(k, d, w / total, c) for k, d, w, c in parsed]
    variants = tuple(
        VariantDefinition(key=k, description=d, weight=w, is_control=(i == control_index))
        for i, (k, d, w, _) in enumerate(parsed)
    )
    return variants, notices


def _rule(errors: _Errors, path: str, item: Any) -> TargetingRule | None:
    if not isinstance(item, Mapping):
        errors.add(path, "must be an object with attribute, op and value")
        return None
    _unknown(errors, f"{path}.", item, _RULE_FIELDS)
    attribute = item.get("attribute")
    if not isinstance(attribute, str) or not 1 <= len(attribute.strip()) <= MAX_ATTRIBUTE:
        errors.add(f"{path}.attribute", f"must be an attribute name of 1 to {MAX_ATTRIBUTE} characters")
        attribute = None
    elif not storable(attribute):
        errors.add(f"{path}.attribute", UNSTORABLE_MESSAGE)
        attribute = None
    op = item.get("op")
    if op not in OPERATORS:
        errors.add(f"{path}.op", f"must be one of {', '.join(OPERATORS)}")
        op = None
    if "value" not in item:
        errors.add(f"{path}.value", "is required")
        return None
    value = item["value"]
    if op in LIST_OPERATORS:
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST_VALUES:
            errors.add(f"{path}.value", f"must be a list of 1 to {MAX_LIST_VALUES} values for '{op}'")
            return None
        for j, element in enumerate(value):
            if not _is_scalar(element) or (isinstance(element, str) and len(element) > MAX_STRING_VALUE):
                errors.add(f"{path}.value.{j}", "must be text, a number or true/false")
                return None
            if isinstance(element, str) and not storable(element):
                errors.add(f"{path}.value.{j}", UNSTORABLE_MESSAGE)
                return None
        value = tuple(value)
    elif op in NUMERIC_OPERATORS:
        if not _is_number(value):
            errors.add(f"{path}.value", f"must be a number for '{op}'")
            return None
    elif op is not None and (not _is_scalar(value) or (isinstance(value, str) and len(value) > MAX_STRING_VALUE)):
        errors.add(f"{path}.value", f"must be text, a number or true/false for '{op}'")
        return None
    elif isinstance(value, str) and not storable(value):
        errors.add(f"{path}.value", UNSTORABLE_MESSAGE)
        return None
    if attribute is None or op is None:
        return None
    return TargetingRule(attribute=attribute.strip(), op=op, value=value)


def _targeting(errors: _Errors, value: Any) -> tuple[TargetingRule, ...] | None:
    if not isinstance(value, list) or len(value) > MAX_RULES:
        errors.add("targeting", f"must be a list of at most {MAX_RULES} rules")
        return None
    rules = [_rule(errors, f"targeting.{i}", item) for i, item in enumerate(value)]
    return None if errors.has_under("targeting") else tuple(rules)  # type: ignore[arg-type]


def _scale(errors: _Errors, value: Any) -> tuple[int, int] | None:
    if not isinstance(value, Mapping):
        errors.add("satisfaction_scale", "must be an object with integer min and max")
        return None
    _unknown(errors, "satisfaction_scale.", value, _SCALE_FIELDS)
    bounds = []
    for name in _SCALE_FIELDS:
        if name not in value:
            errors.add(f"satisfaction_scale.{name}", "is required")
        else:
            bounds.append(_whole(errors, f"satisfaction_scale.{name}", value[name]))
    if errors.has_under("satisfaction_scale"):
        return None
    low, high = bounds
    if not 1 <= high - low <= MAX_SCALE_SPAN:  # type: ignore[operator]
        errors.add("satisfaction_scale.max", f"must be 1 to {MAX_SCALE_SPAN} above min")
        return None
    return low, high  # type: ignore[return-value]


def _settings(
    errors: _Errors, name: str, value: Any, cls: type[DecisionRule] | type[Prior]
) -> DecisionRule | Prior | None:
    """Validate each setting on its own first (so every bad one is named), then together
    (for rules that relate two settings), blaming the setting the message starts with."""
    if not isinstance(value, Mapping):
        errors.add(name, "must be an object of settings")
        return None
    bounds = SETTING_BOUNDS[name]
    for setting, setting_value in value.items():
        path = f"{name}.{setting}"
        numeric = isinstance(setting_value, (int, float)) and not isinstance(setting_value, bool)
        if numeric and not _is_number(setting_value):
            errors.add(path, "must be a finite number")
            continue
        try:
            cls.from_mapping({setting: setting_value})
        except AnalysisInputError as exc:
            message = str(exc)
            errors.add(path, "unknown setting" if message.startswith("unknown") else message)
            continue
        if setting in bounds:
            low, high = bounds[setting]
            if not low <= setting_value <= high:
                errors.add(path, f"must be between {low:g} and {high:g}")
    if errors.has_under(name):
        return None
    try:
        return cls.from_mapping(value)
    except AnalysisInputError as exc:
        message = str(exc)
        blamed = message.split(" ", 1)[0]
        errors.add(f"{name}.{blamed}" if blamed in value else name, message)
        return None


def _forced(errors: _Errors, value: Any, variant_keys: set[str] | None) -> Mapping[str, str] | None:
    if not isinstance(value, Mapping) or len(value) > MAX_FORCED:
        errors.add("forced_variants", f"must map at most {MAX_FORCED} customer ids to variant keys")
        return None
    for customer, variant in value.items():
        path = f"forced_variants.{customer}"
        if not isinstance(customer, str) or not 1 <= len(customer) <= MAX_CUSTOMER_ID:
            errors.add(path, f"customer ids must be 1 to {MAX_CUSTOMER_ID} characters")
        elif not storable(customer):
            # The path itself would carry the character into the error response.
            errors.add(f"forced_variants.{UNSTORABLE.sub('?', customer)}", f"customer ids {UNSTORABLE_MESSAGE}")
        elif not isinstance(variant, str):
            errors.add(path, "must be a variant key")
        elif variant_keys is not None and variant not in variant_keys:
            errors.add(path, f"no variant {variant!r} in this experiment")
    if errors.has_under("forced_variants"):
        return None
    return MappingProxyType(dict(sorted(value.items())))


def parse_definition(data: Any) -> ExperimentDefinition:
    """Validate a definition mapping; raise InvalidInput naming every bad field."""
    if not isinstance(data, Mapping):
        raise MalformedRequest(fields={"definition": "must be an object"})
    errors = _Errors()
    _unknown(errors, "", data, TOP_LEVEL_FIELDS)
    values: dict[str, Any] = {}

    for name in ("key", "name", "target_stage", "variants"):
        if name not in data:
            errors.add(name, "is required")
    if "key" in data:
        values["key"] = _slug(errors, "key", data["key"])
    if "name" in data:
        values["name"] = _text(errors, "name", data["name"], max_length=MAX_NAME, required=True)
    values["hypothesis"] = _text(errors, "hypothesis", data.get("hypothesis", ""), max_length=MAX_TEXT, required=False)
    journey = data.get("journey")
    if journey is not None:
        values["journey"] = _slug(errors, "journey", journey)
    stages = _stages(errors, data["stages"]) if data.get("stages") is not None else None
    values["stages"] = stages
    if data.get("metrics") is not None:
        values["metrics"] = _keys(errors, "metrics", data["metrics"])
        if journey is None:
            errors.add("metrics", "needs a journey: metrics are the journey's rating question keys")
    if "target_stage" in data:
        target = _slug(errors, "target_stage", data["target_stage"])
        if target is not None and stages and target not in stages:
            errors.add("target_stage", f"must be one of the stages: {', '.join(stages)}")
        values["target_stage"] = target
    variants = _variants(errors, data["variants"]) if "variants" in data else None
    notices: tuple[str, ...] = ()
    if variants is not None:
        values["variants"], notices = variants
    if "traffic" in data:
        values["traffic"] = _fraction(errors, "traffic", data["traffic"])
    if "targeting" in data:
        values["targeting"] = _targeting(errors, data["targeting"])
    if data.get("satisfaction_scale") is not None:
        if journey is not None:
            errors.add(
                "satisfaction_scale",
                "applies only without a journey: a journey's rating questions carry their own scales",
            )
        else:
            values["scale"] = _scale(errors, data["satisfaction_scale"])

    layer = data.get("layer")
    if layer is not None:
        values["layer"] = _slug(errors, "layer", layer)
        if data.get("layer_share") is None:
            errors.add("layer_share", "is required with a layer: the share of the layer this experiment takes")
        else:
            share = _fraction(errors, "layer_share", data["layer_share"])
            if share is not None and round(share * LAYER_BUCKETS) < 1:
                errors.add("layer_share", f"must be at least {1 / LAYER_BUCKETS:g} (one of {LAYER_BUCKETS} buckets)")
            values["layer_share"] = share
    elif data.get("layer_share") is not None:
        errors.add("layer_share", "only applies together with a layer")

    for name, cls in (("decision", DecisionRule), ("prior", Prior)):
        if name in data:
            values[name] = _settings(errors, name, data[name], cls)
    if "forced_variants" in data:
        known = {v.key for v in variants[0]} if variants is not None else None
        values["forced_variants"] = _forced(errors, data["forced_variants"], known)

    if data.get("warehouse_source") is not None:
        values["warehouse_source"] = _slug(errors, "warehouse_source", data["warehouse_source"])

    if errors.fields:
        raise InvalidInput(errors.fields)
    return ExperimentDefinition(**values, notices=notices)


# -- back to plain data --------------------------------------------------------------


def definition_to_mapping(definition: ExperimentDefinition) -> dict[str, Any]:
    """The canonical wire/TOML form: every field explicit (defaults written out), no
    nulls (TOML has none), so that parsing it gives back an equal definition."""
    data: dict[str, Any] = {
        "key": definition.key,
        "name": definition.name,
        "hypothesis": definition.hypothesis,
    }
    if definition.journey is not None:
        data["journey"] = definition.journey
    if definition.stages is not None:
        data["stages"] = list(definition.stages)
    if definition.metrics is not None:
        data["metrics"] = list(definition.metrics)
    data |= {
        "target_stage": definition.target_stage,
        "traffic": definition.traffic,
        "variants": [
            {"key": v.key, "description": v.description, "weight": v.weight, "control": v.is_control}
            for v in definition.variants
        ],
        "targeting": [
            {"attribute": r.attribute, "op": r.op, "value": list(r.value) if isinstance(r.value, tuple) else r.value}
            for r in definition.targeting
        ],
    }
    if definition.scale is not None:
        data["satisfaction_scale"] = {"min": definition.scale[0], "max": definition.scale[1]}
    if definition.layer is not None:
        data["layer"] = definition.layer
        data["layer_share"] = definition.layer_share
    data["decision"] = asdict(definition.decision)
    data["prior"] = asdict(definition.prior)
    data["forced_variants"] = dict(definition.forced_variants)
    if definition.warehouse_source is not None:
        data["warehouse_source"] = definition.warehouse_source
    return data


# -- TOML ------------------------------------------------------------------------------


def parse_toml(text: str) -> ExperimentDefinition:
    """Parse one definition file; TOML syntax errors are reported as the field ``toml``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput({"toml": str(exc)}, f"not valid TOML: {exc}") from None
    return parse_definition(data)


class DefinitionFileError(ValueError):
    """One or more definition files cannot be used; ``problems`` has a line per fault.
    (Files are read by ``journey_definitions.load_files``, which knows both kinds.)"""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("TOML export needs finite numbers")
        return repr(value)  # shortest text that reads back as the same float
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):  # an inline table: only inside an array of tables
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(item) for item in value)


def _toml_lines(data: Mapping[str, Any]) -> list[str]:
    return [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items()]


def dump_toml(data: Mapping[str, Any], *, title: str = "experiment definition") -> str:
    """Write a definition mapping as TOML, in the mapping's order: plain values first,
    then tables, then arrays of tables. Deterministic, so exports diff cleanly.

    Only the shapes a definition has are supported: one level of tables and arrays
    of tables whose values are plain or inline tables (a journey question's
    ``scale = { min = 1, max = 5 }``); an empty array of tables is written as
    ``name = []``.
    """
    plain = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    tables = {k: v for k, v in data.items() if _is_table(v)}
    arrays = {k: v for k, v in data.items() if _is_table_array(v)}
    lines = [f"# expplatform {title}", *_toml_lines(plain)]
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]", *_toml_lines(table)]
    for name, items in arrays.items():
        for item in items:
            lines += ["", f"[[{_toml_key(name)}]]", *_toml_lines(item)]
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_STAGES",
    "OPERATORS",
    "DefinitionFileError",
    "ExperimentDefinition",
    "TargetingRule",
    "VariantDefinition",
    "definition_to_mapping",
    "dump_toml",
    "parse_definition",
    "parse_toml",
]
