"""Journey definitions as plain data: the one validating parser of journeys, shared
by the JSON API, the TOML files and the web form, in the style (and with the
helpers and messages) of :mod:`expplatform.definitions`.

A journey arrives as a mapping and leaves :func:`parse_journey` as a frozen
:class:`JourneyDefinition`, or as one :class:`~expplatform.errors.InvalidInput`
naming every bad field by its dotted path (``stages.2.touchpoints.0``, lists counted
from 0). :func:`journey_to_mapping` is the canonical form (every default written
out), which the API returns, ``journeys export`` writes and tests compare.

Files: a TOML file is a journey when it says ``kind = "journey"`` at the top; any
other file is an experiment definition. :func:`load_files` reads both kinds from
the same paths (``experiments/`` holds the demo journey beside its experiments),
checks every file before any is used, and returns journeys apart from experiments
so that they can be applied first.

Hostile input, as for experiments: no text may hold a NUL or a lone surrogate, every
text and list has a length bound, and scale bounds are small whole numbers.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .definitions import (
    MAX_ATTRIBUTE,
    MAX_NAME,
    MAX_SCALE_SPAN,
    MAX_STAGES,
    MAX_TEXT,
    UNSTORABLE_MESSAGE,
    DefinitionFileError,
    ExperimentDefinition,
    _Errors,
    _slug,
    _text,
    _unknown,
    _whole,
    dump_toml,
    parse_definition,
    storable,
)
from .errors import InvalidInput, MalformedRequest
from .warehouse.sources import KIND as WAREHOUSE_KIND
from .warehouse.sources import SourceDefinition, parse_source

KIND = "journey"
DEFAULT_PERSONA_ATTRIBUTE = "persona"
MAX_TOUCHPOINTS = 20
MAX_TOUCHPOINT = 100
MAX_GOAL = 1_000
MAX_PERSONAS = 50
MAX_QUESTIONS = MAX_STAGES * 5
MAX_QUESTION_TEXT = 500
# Keys a journey cannot have: the pages under /journeys/ that are not journeys.
RESERVED_KEYS = frozenset({"new"})

TOP_LEVEL_FIELDS: tuple[str, ...] = (
    "kind",
    "key",
    "name",
    "description",
    "persona_attribute",
    "stages",
    "personas",
    "questions",
)
_STAGE_FIELDS = ("key", "name", "goal", "touchpoints")
_PERSONA_FIELDS = ("key", "name", "description")
_QUESTION_FIELDS = ("key", "text", "stage", "scale")
_SCALE_FIELDS = ("min", "max")


def stage_name(key: str) -> str:
    """A readable name made from a key: ``first-purchase`` -> ``First purchase``."""
    return key.replace("-", " ").replace("_", " ").capitalize()


@dataclass(frozen=True)
class StageDefinition:
    key: str
    name: str
    goal: str = ""
    touchpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class PersonaDefinition:
    """A persona: ``key`` is a value of the journey's persona attribute."""

    key: str
    name: str
    description: str = ""


@dataclass(frozen=True)
class QuestionDefinition:
    key: str
    text: str
    stage: str
    scale: tuple[int, int]


@dataclass(frozen=True)
class JourneyDefinition:
    key: str
    name: str
    stages: tuple[StageDefinition, ...]
    description: str = ""
    persona_attribute: str = DEFAULT_PERSONA_ATTRIBUTE
    personas: tuple[PersonaDefinition, ...] = ()
    questions: tuple[QuestionDefinition, ...] = ()
    notices: tuple[str, ...] = field(default=(), compare=False)

    @property
    def stage_keys(self) -> tuple[str, ...]:
        return tuple(stage.key for stage in self.stages)


# -- parsing ---------------------------------------------------------------------------


def _list(errors: _Errors, path: str, value: Any, low: int, high: int, what: str) -> list[Any] | None:
    if not isinstance(value, list) or not low <= len(value) <= high:
        errors.add(path, f"must be a list of {low} to {high} {what}")
        return None
    return value


def _row(errors: _Errors, path: str, item: Any, known: tuple[str, ...], what: str) -> Mapping[str, Any] | None:
    if not isinstance(item, Mapping):
        errors.add(path, f"must be an object with {what}")
        return None
    _unknown(errors, f"{path}.", item, known)
    for name in ("key",):
        if name not in item:
            errors.add(f"{path}.{name}", "is required")
    return item


def _duplicates(errors: _Errors, path: str, keys: list[str | None], what: str) -> None:
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            errors.add(f"{path}.{i}.key", f"duplicate {what} key {key!r}")
        seen.add(key)


def _touchpoints(errors: _Errors, path: str, value: Any) -> tuple[str, ...] | None:
    items = _list(errors, path, value, 0, MAX_TOUCHPOINTS, f"touchpoints of at most {MAX_TOUCHPOINT} characters")
    if items is None:
        return None
    touchpoints: list[str] = []
    for j, item in enumerate(items):
        text = _text(errors, f"{path}.{j}", item, max_length=MAX_TOUCHPOINT, required=True)
        if text is not None and text in touchpoints:
            errors.add(f"{path}.{j}", f"duplicate touchpoint {text!r}")
        elif text is not None:
            touchpoints.append(text)
    return None if errors.has_under(path) else tuple(touchpoints)


def _stages(errors: _Errors, value: Any) -> tuple[StageDefinition, ...] | None:
    items = _list(errors, "stages", value, 1, MAX_STAGES, "stages")
    if items is None:
        return None
    stages: list[StageDefinition] = []
    keys: list[str | None] = []
    for i, item in enumerate(items):
        path = f"stages.{i}"
        row = _row(errors, path, item, _STAGE_FIELDS, "a key, a name, a goal and touchpoints")
        if row is None:
            keys.append(None)
            continue
        key = _slug(errors, f"{path}.key", row["key"]) if "key" in row else None
        keys.append(key)
        name = _text(errors, f"{path}.name", row["name"], max_length=MAX_NAME, required=True) if "name" in row else ""
        goal = _text(errors, f"{path}.goal", row.get("goal", ""), max_length=MAX_GOAL, required=False)
        touchpoints = _touchpoints(errors, f"{path}.touchpoints", row.get("touchpoints", []))
        if key is not None and name is not None and goal is not None and touchpoints is not None:
            stages.append(StageDefinition(key=key, name=name or stage_name(key), goal=goal, touchpoints=touchpoints))
    _duplicates(errors, "stages", keys, "stage")
    return None if errors.has_under("stages") else tuple(stages)


def _personas(errors: _Errors, value: Any) -> tuple[PersonaDefinition, ...] | None:
    items = _list(errors, "personas", value, 0, MAX_PERSONAS, "personas")
    if items is None:
        return None
    personas: list[PersonaDefinition] = []
    keys: list[str | None] = []
    for i, item in enumerate(items):
        path = f"personas.{i}"
        row = _row(errors, path, item, _PERSONA_FIELDS, "a key (the persona attribute's value), a name, a description")
        if row is None:
            keys.append(None)
            continue
        key = _slug(errors, f"{path}.key", row["key"]) if "key" in row else None
        keys.append(key)
        name = _text(errors, f"{path}.name", row["name"], max_length=MAX_NAME, required=True) if "name" in row else ""
        description = _text(
            errors, f"{path}.description", row.get("description", ""), max_length=MAX_TEXT, required=False
        )
        if key is not None and name is not None and description is not None:
            personas.append(PersonaDefinition(key=key, name=name or stage_name(key), description=description))
    _duplicates(errors, "personas", keys, "persona")
    return None if errors.has_under("personas") else tuple(personas)


def _scale(errors: _Errors, path: str, value: Any) -> tuple[int, int] | None:
    if not isinstance(value, Mapping):
        errors.add(path, "must be an object with integer min and max")
        return None
    _unknown(errors, f"{path}.", value, _SCALE_FIELDS)
    bounds: list[int | None] = []
    for name in _SCALE_FIELDS:
        if name not in value:
            errors.add(f"{path}.{name}", "is required")
        else:
            bounds.append(_whole(errors, f"{path}.{name}", value[name]))
    if errors.has_under(path):
        return None
    low, high = bounds
    assert low is not None and high is not None
    if not 1 <= high - low <= MAX_SCALE_SPAN:
        errors.add(f"{path}.max", f"must be 1 to {MAX_SCALE_SPAN} above min")
        return None
    return low, high


def _questions(errors: _Errors, value: Any, stages: tuple[str, ...] | None) -> tuple[QuestionDefinition, ...] | None:
    items = _list(errors, "questions", value, 0, MAX_QUESTIONS, "rating questions")
    if items is None:
        return None
    questions: list[QuestionDefinition] = []
    keys: list[str | None] = []
    for i, item in enumerate(items):
        path = f"questions.{i}"
        row = _row(errors, path, item, _QUESTION_FIELDS, "a key, a text, a stage and a scale")
        if row is None:
            keys.append(None)
            continue
        for name in ("text", "stage", "scale"):
            if name not in row:
                errors.add(f"{path}.{name}", "is required")
        key = _slug(errors, f"{path}.key", row["key"]) if "key" in row else None
        keys.append(key)
        text = (
            _text(errors, f"{path}.text", row["text"], max_length=MAX_QUESTION_TEXT, required=True)
            if "text" in row
            else None
        )
        stage = _slug(errors, f"{path}.stage", row["stage"]) if "stage" in row else None
        if stage is not None and stages is not None and stage not in stages:
            errors.add(f"{path}.stage", f"must be one of the journey's stages: {', '.join(stages)}")
            stage = None
        scale = _scale(errors, f"{path}.scale", row["scale"]) if "scale" in row else None
        if key is not None and text is not None and stage is not None and scale is not None:
            questions.append(QuestionDefinition(key=key, text=text, stage=stage, scale=scale))
    _duplicates(errors, "questions", keys, "question")
    return None if errors.has_under("questions") else tuple(questions)


def _attribute(errors: _Errors, value: Any) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_ATTRIBUTE:
        errors.add("persona_attribute", f"must be an attribute name of 1 to {MAX_ATTRIBUTE} characters")
        return None
    if not storable(value):
        errors.add("persona_attribute", UNSTORABLE_MESSAGE)
        return None
    return value.strip()


def parse_journey(data: Any) -> JourneyDefinition:
    """Validate a journey mapping; raise InvalidInput naming every bad field."""
    if not isinstance(data, Mapping):
        raise MalformedRequest(fields={"journey": "must be an object"})
    errors = _Errors()
    _unknown(errors, "", data, TOP_LEVEL_FIELDS)
    if "kind" in data and data["kind"] != KIND:
        errors.add("kind", f"must be {KIND!r} (or left out)")
    values: dict[str, Any] = {}
    for name in ("key", "name", "stages"):
        if name not in data:
            errors.add(name, "is required")
    if "key" in data:
        key = _slug(errors, "key", data["key"])
        if key in RESERVED_KEYS:
            errors.add("key", f"{key!r} is reserved (it names a page); choose another key")
        values["key"] = key
    if "name" in data:
        values["name"] = _text(errors, "name", data["name"], max_length=MAX_NAME, required=True)
    values["description"] = _text(
        errors, "description", data.get("description", ""), max_length=MAX_TEXT, required=False
    )
    values["persona_attribute"] = _attribute(errors, data.get("persona_attribute", DEFAULT_PERSONA_ATTRIBUTE))
    stages = _stages(errors, data["stages"]) if "stages" in data else None
    values["stages"] = stages
    values["personas"] = _personas(errors, data.get("personas", []))
    stage_keys = tuple(stage.key for stage in stages) if stages is not None else None
    values["questions"] = _questions(errors, data.get("questions", []), stage_keys)
    if errors.fields:
        raise InvalidInput(errors.fields)
    return JourneyDefinition(**values)


# -- back to plain data ------------------------------------------------------------------


def journey_to_mapping(definition: JourneyDefinition) -> dict[str, Any]:
    """The canonical wire/TOML form: every field explicit (defaults written out), so
    that parsing it gives back an equal definition."""
    return {
        "key": definition.key,
        "name": definition.name,
        "description": definition.description,
        "persona_attribute": definition.persona_attribute,
        "stages": [
            {"key": s.key, "name": s.name, "goal": s.goal, "touchpoints": list(s.touchpoints)}
            for s in definition.stages
        ],
        "personas": [{"key": p.key, "name": p.name, "description": p.description} for p in definition.personas],
        "questions": [
            {"key": q.key, "text": q.text, "stage": q.stage, "scale": {"min": q.scale[0], "max": q.scale[1]}}
            for q in definition.questions
        ],
    }


def journey_toml(definition: JourneyDefinition) -> str:
    """The journey as a definition file (``kind = "journey"`` first), deterministic."""
    return dump_toml({"kind": KIND, **journey_to_mapping(definition)}, title="journey definition")


# -- files -------------------------------------------------------------------------------


def parse_journey_toml(text: str) -> JourneyDefinition:
    """Parse one journey file; TOML syntax errors are reported as the field ``toml``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput({"toml": str(exc)}, f"not valid TOML: {exc}") from None
    return parse_journey(data)


def _parse_file(text: str) -> JourneyDefinition | ExperimentDefinition | SourceDefinition:
    """A journey when the file says ``kind = "journey"``, a warehouse source when it
    says ``kind = "warehouse"``, else an experiment."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput({"toml": str(exc)}, f"not valid TOML: {exc}") from None
    if "kind" in data:
        if data["kind"] == WAREHOUSE_KIND:
            return parse_source(data, from_file=True)
        if data["kind"] != KIND:
            raise InvalidInput(
                {
                    "kind": f"must be {KIND!r} for a journey, or left out for an experiment "
                    f"({WAREHOUSE_KIND!r} for a warehouse source)"
                }
            )
        return parse_journey(data)
    stages = data.get("stages")
    if isinstance(stages, list) and stages and all(isinstance(stage, Mapping) for stage in stages):
        raise InvalidInput(
            {"kind": f'is required: stages given as tables describe a journey, which says kind = "{KIND}"'}
        )
    return parse_definition(data)


@dataclass(frozen=True)
class DefinitionFiles:
    """What a set of definition files holds: journeys and warehouse sources (to apply
    first), experiments."""

    journeys: list[tuple[Path, JourneyDefinition]]
    experiments: list[tuple[Path, ExperimentDefinition]]
    warehouses: list[tuple[Path, SourceDefinition]] = field(default_factory=list)


def load_files(paths: Iterable[Path]) -> DefinitionFiles:
    """Read every file given, or every ``*.toml`` in a folder given, in name order.
    All files are checked before any is used, and every fault in every file is
    reported, so an apply is all or nothing."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])
    problems: list[str] = []
    journeys: list[tuple[Path, JourneyDefinition]] = []
    experiments: list[tuple[Path, ExperimentDefinition]] = []
    warehouses: list[tuple[Path, SourceDefinition]] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in files:
        try:
            definition = _parse_file(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        except InvalidInput as exc:
            problems.extend(f"{path}: {name}: {why}" for name, why in exc.fields.items())
            continue
        kind = (
            "journey"
            if isinstance(definition, JourneyDefinition)
            else "warehouse"
            if isinstance(definition, SourceDefinition)
            else "experiment"
        )
        if (kind, definition.key) in seen:
            problems.append(f"{path}: key: {definition.key!r} is also defined in {seen[kind, definition.key]}")
            continue
        seen[kind, definition.key] = path
        if isinstance(definition, JourneyDefinition):
            journeys.append((path, definition))
        elif isinstance(definition, SourceDefinition):
            warehouses.append((path, definition))
        else:
            experiments.append((path, definition))
    questions: dict[str, Path] = {}
    for path, journey in journeys:
        for i, question in enumerate(journey.questions):
            if question.key in questions:
                problems.append(
                    f"{path}: questions.{i}.key: question {question.key!r} is also defined in "
                    f"{questions[question.key]} (question keys are unique across journeys)"
                )
            questions.setdefault(question.key, path)
    if not files:
        problems.append("no definition files found")
    if problems:
        raise DefinitionFileError(problems)
    return DefinitionFiles(journeys=journeys, experiments=experiments, warehouses=warehouses)


__all__ = [
    "KIND",
    "DefinitionFiles",
    "JourneyDefinition",
    "PersonaDefinition",
    "QuestionDefinition",
    "StageDefinition",
    "journey_to_mapping",
    "journey_toml",
    "load_files",
    "parse_journey",
    "parse_journey_toml",
    "stage_name",
]
