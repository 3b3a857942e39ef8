"""The journey service: reading journeys, and tying experiment definitions to them.

An experiment belongs to one journey, tests one of its stages, and measures some of
its stages with at most one rating question each. A definition may name its
journey, or (the form experiments had before journeys existed, still accepted from
the API, files and form) give only a stage list and a satisfaction scale: then the
*implicit journey* is the oldest journey whose stage keys are exactly that list,
made when none is, and at each stage the journey's question with that scale, made
when missing. Migration 0003 moved stored experiments into journeys by the same rule.

Changing journeys (create, update, patch, apply from files) works like the
experiment service: each call takes a validated :class:`JourneyDefinition`, runs in
the caller's transaction, begins with ``bump_version`` (which serialises definition
changes and makes every worker reload its cached journeys), and records who changed
what in ``journey_audit_log``. What experiments and stored ratings rely on is
frozen; the rules, in one place:

- a journey's key, its stage keys and its question keys are identities: a renamed
  stage or question is a new one (the old one is removed, if that is allowed);
- a stage measured by any experiment cannot be removed (``stage_in_use``); while an
  experiment that is running or paused, or has enrolled customers, measures
  several stages, they keep their order relative to one another (others may be
  added or moved around them); a draft's stages follow a reordered journey;
- a question measured by any experiment, or that has answers (stored events name
  it), cannot be removed (``question_in_use``) nor moved to another stage, and its
  scale cannot change once it has answers or an experiment that is running or
  paused or has enrolled customers measures it (``frozen_field``);
- names, goals, touchpoints, texts, descriptions and personas may always change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, Literal

from sqlalchemy import Select, exists, select
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload

from .definitions import DEFAULT_STAGES, ExperimentDefinition
from .errors import Conflict, InvalidInput, NotFound
from .journey_definitions import (
    JourneyDefinition,
    PersonaDefinition,
    QuestionDefinition,
    StageDefinition,
    journey_to_mapping,
    parse_journey,
    stage_name,
)
from .models import (
    AuditEntry,
    Event,
    Experiment,
    Exposure,
    Journey,
    JourneyAuditEntry,
    JourneyPersona,
    JourneyStage,
    RatingQuestion,
    utcnow,
)
from .versioning import bump_version

DEFAULT_SCALE = (1, 5)
MAX_KEY = 64


def _loaded() -> Select[Journey]:
    return select(Journey).options(
        selectinload(Journey.stages), selectinload(Journey.personas), selectinload(Journey.questions)
    )


def find_journey(session: Session, key: str, *, fresh: bool = False) -> Journey | None:
    query = _loaded().where(Journey.key == key)
    if fresh:  # re-read after taking the lock, over anything the identity map holds
        query = query.execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def get_journey(session: Session, key: str, *, fresh: bool = False) -> Journey:
    journey = find_journey(session, key, fresh=fresh)
    if journey is None:
        raise NotFound(f"No journey with key {key!r}.", code="journey_not_found")
    return journey


def list_journeys(session: Session) -> list[Journey]:
    return list(session.scalars(_loaded().order_by(Journey.key)))


def _free(session: Session, column: InstrumentedAttribute[str], candidates: list[str]) -> str:
    """The first candidate key no row has in ``column``, else the last one numbered."""
    for candidate in candidates:
        if session.scalar(select(column).where(column == candidate)) is None:
            return candidate
    base = candidates[-1][: MAX_KEY - 6]
    number = 2
    while session.scalar(select(column).where(column == f"{base}-{number}")) is not None:
        number += 1
    return f"{base}-{number}"


def implicit_journey(
    session: Session, stages: tuple[str, ...], scale: tuple[int, int]
) -> tuple[Journey, dict[str, str]]:
    """The journey of a definition that names none (see the module docstring), and
    its question with ``scale`` at each stage, made where missing."""
    journeys = session.scalars(_loaded().order_by(Journey.id)).all()
    existing = next((j for j in journeys if [s.key for s in j.stages] == list(stages)), None)
    if existing is not None:
        journey = existing
    else:
        default = stages == DEFAULT_STAGES
        digest = hashlib.sha1("\n".join(stages).encode()).hexdigest()[:10]
        now = utcnow()
        journey = Journey(
            key=_free(session, Journey.key, ["default" if default else f"journey-{digest}"]),
            name="Default journey" if default else ("Journey: " + " → ".join(stages))[:200],
            description="Made from an experiment's stage list.",
            persona_attribute="persona",
            created_at=now,
            updated_at=now,
            stages=[
                JourneyStage(key=s, name=stage_name(s), position=i, goal="", touchpoints=[])
                for i, s in enumerate(stages)
            ],
        )
        session.add(journey)
        session.flush()
    questions: dict[str, str] = {}
    for stage in stages:
        question = next(
            (q for q in journey.questions if q.stage == stage and (q.scale_min, q.scale_max) == scale),
            None,
        )
        if question is None:
            lo, hi = scale
            suffix = f"-rating-{lo}-{hi}"
            question = RatingQuestion(
                key=_free(
                    session,
                    RatingQuestion.key,
                    [f"{stage[: MAX_KEY - 7]}-rating", f"{stage[: MAX_KEY - len(suffix)]}{suffix}"],
                ),
                stage=stage,
                text=f"How would you rate the {stage_name(stage).lower()} step? ({lo}-{hi})",
                scale_min=lo,
                scale_max=hi,
                position=len(journey.questions),
            )
            journey.questions.append(question)
            session.flush()
        questions[stage] = question.key
    return journey, questions


def resolve_definition(session: Session, definition: ExperimentDefinition) -> ExperimentDefinition:
    """The definition in its explicit form: journey, measured stages (in journey
    order) and one question per measured stage that has any; raises InvalidInput
    naming each field that does not fit the journey."""
    if definition.journey is None:
        stages = definition.stages or DEFAULT_STAGES
        if definition.target_stage not in stages:
            raise InvalidInput({"target_stage": f"must be one of the stages: {', '.join(stages)}"})
        journey, questions = implicit_journey(session, stages, definition.scale or DEFAULT_SCALE)
        return replace(
            definition, journey=journey.key, stages=stages, metrics=tuple(questions[s] for s in stages), scale=None
        )
    found = find_journey(session, definition.journey)
    if found is None:
        raise InvalidInput({"journey": f"no journey has the key {definition.journey!r}"})
    journey = found
    order = [s.key for s in journey.stages]
    errors: dict[str, str] = {}
    chosen = definition.stages if definition.stages is not None else tuple(order)
    for i, stage in enumerate(chosen):
        if stage not in order:
            errors[f"stages.{i}"] = f"{stage!r} is not a stage of journey {journey.key!r} ({', '.join(order)})"
    stages = tuple(s for s in order if s in chosen)
    if definition.target_stage not in stages and "target_stage" not in errors:
        errors["target_stage"] = f"must be one of the measured stages: {', '.join(stages) or 'none'}"
    by_key = {q.key: q for q in journey.questions}
    if definition.metrics is None:
        first: dict[str, str] = {}
        for question in journey.questions:
            first.setdefault(question.stage, question.key)
        metrics = tuple(first[s] for s in stages if s in first)
    else:
        at: dict[str, str] = {}
        for i, key in enumerate(definition.metrics):
            asked = by_key.get(key)
            if asked is None:
                errors[f"metrics.{i}"] = f"{key!r} is not a rating question of journey {journey.key!r}"
            elif asked.stage not in stages:
                errors[f"metrics.{i}"] = f"{key!r} is asked at stage {asked.stage!r}, which is not measured"
            elif asked.stage in at:
                errors[f"metrics.{i}"] = (
                    f"{key!r} is a second question at stage {asked.stage!r} (after {at[asked.stage]!r}): "
                    "an experiment measures one question per stage"
                )
            else:
                at[asked.stage] = key
        metrics = tuple(at[s] for s in stages if s in at)
    if errors:
        raise InvalidInput(errors)
    return replace(definition, stages=stages, metrics=metrics)


def question_scales(journey: Journey) -> dict[str, tuple[int, int]]:
    """Question key -> (min, max)."""
    return {q.key: (q.scale_min, q.scale_max) for q in journey.questions}


def implicit_fields(
    session: Session, stages: list[str] | tuple[str, ...], scale: tuple[int, int] = DEFAULT_SCALE
) -> dict[str, Any]:
    """``journey`` and ``metrics`` for an :class:`Experiment` row made directly (tests,
    benchmarks, the demo): its implicit journey and that journey's questions."""
    journey, questions = implicit_journey(session, tuple(stages), scale)
    return {"journey": journey, "metrics": questions}


# -- journeys as definitions ---------------------------------------------------------------

STARTED = ("running", "paused")


@dataclass(frozen=True)
class SavedJourney:
    """The outcome of a create/update/apply, for the caller to report."""

    journey: Journey
    action: Literal["created", "updated", "unchanged"]
    # field -> {"from": old, "to": new}, in the canonical (wire) form.
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    notices: tuple[str, ...] = ()


def journey_definition_of(journey: Journey) -> JourneyDefinition:
    return JourneyDefinition(
        key=journey.key,
        name=journey.name,
        description=journey.description,
        persona_attribute=journey.persona_attribute,
        stages=tuple(
            StageDefinition(key=s.key, name=s.name, goal=s.goal, touchpoints=tuple(s.touchpoints))
            for s in journey.stages
        ),
        personas=tuple(PersonaDefinition(key=p.key, name=p.name, description=p.description) for p in journey.personas),
        questions=tuple(
            QuestionDefinition(key=q.key, text=q.text, stage=q.stage, scale=(q.scale_min, q.scale_max))
            for q in journey.questions
        ),
    )


def export_journey(journey: Journey) -> dict[str, Any]:
    """The journey in the canonical wire/TOML form: what the API returns, what
    ``journeys export`` writes, and what tests compare to show that the API, files
    and web form store identical journeys."""
    return journey_to_mapping(journey_definition_of(journey))


def journey_diff(old: JourneyDefinition, new: JourneyDefinition) -> dict[str, dict[str, Any]]:
    before, after = journey_to_mapping(old), journey_to_mapping(new)
    return {
        name: {"from": before.get(name), "to": after.get(name)}
        for name in dict.fromkeys([*before, *after])
        if before.get(name) != after.get(name)
    }


def journey_with_changes(journey: Journey, changes: Mapping[str, Any]) -> JourneyDefinition:
    """The definition after a partial update (a PATCH body): each top-level field
    given replaces the stored one; ``null`` resets it to its default."""
    merged = export_journey(journey)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return parse_journey(merged)


def journey_audit_log(session: Session, journey: Journey) -> list[JourneyAuditEntry]:
    """Newest first."""
    return list(
        session.scalars(
            select(JourneyAuditEntry)
            .where(JourneyAuditEntry.journey_id == journey.id)
            .order_by(JourneyAuditEntry.id.desc())
        )
    )


# -- what relies on a journey ----------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentUse:
    """An experiment of the journey, as far as the journey's rules care."""

    key: str
    status: str
    stages: tuple[str, ...]
    metrics: Mapping[str, str]  # stage -> question
    # Running or paused, or has enrolled customers: its stages' order and its
    # questions' scales are what its data means.
    locking: bool

    @property
    def label(self) -> str:
        return f"{self.status} experiment {self.key!r}"


@dataclass(frozen=True)
class Usage:
    experiments: tuple[ExperimentUse, ...]
    # Question keys (of those asked about) that stored events answer.
    answered: frozenset[str]

    def measuring_stage(self, stage: str) -> list[ExperimentUse]:
        return [e for e in self.experiments if stage in e.stages]

    def measuring_question(self, question: str) -> list[ExperimentUse]:
        return [e for e in self.experiments if question in e.metrics.values()]


def journey_usage(session: Session, journey: Journey, answered_among: Iterable[str] | None = None) -> Usage:
    """The journey's experiments and which questions have answers (among
    ``answered_among``; default: all of the journey's questions)."""
    uses: list[ExperimentUse] = []
    if journey.id is not None:
        enrolled = exists().where(Exposure.experiment_id == Experiment.id)
        rows = session.execute(
            select(Experiment.key, Experiment.status, Experiment.stages, Experiment.metrics, enrolled)
            .where(Experiment.journey_id == journey.id)
            .order_by(Experiment.key)
        )
        for key, status, stages, metrics, has_exposures in rows:
            uses.append(
                ExperimentUse(
                    key=key,
                    status=status,
                    stages=tuple(stages),
                    metrics=dict(metrics or {}),
                    locking=status in STARTED or bool(has_exposures),
                )
            )
    keys = sorted(set(answered_among if answered_among is not None else (q.key for q in journey.questions)))
    answered: set[str] = set()
    if keys:
        # events.metric has no index: one pass over the events, only when a question
        # that may have answers is being removed, moved or rescaled (or shown frozen).
        answered = set(session.scalars(select(Event.metric).where(Event.metric.in_(keys)).distinct()))
    return Usage(experiments=tuple(uses), answered=frozenset(answered))


def _names(uses: list[ExperimentUse]) -> str:
    return ", ".join(use.label for use in uses)


def _check_frozen(session: Session, journey: Journey, old: JourneyDefinition, new: JourneyDefinition) -> None:
    """Raise Conflict for a change that stored experiments or ratings forbid (see
    the module docstring), naming every offending field at once."""
    position = {key: i for i, key in enumerate(new.stage_keys)}
    removed_stages = [key for key in old.stage_keys if key not in position]
    old_questions = {q.key: q for q in old.questions}
    new_questions = {q.key: (i, q) for i, q in enumerate(new.questions)}
    removed = [key for key in old_questions if key not in new_questions]
    moved = [
        key for key, (_, q) in new_questions.items() if key in old_questions and old_questions[key].stage != q.stage
    ]
    rescaled = [
        key for key, (_, q) in new_questions.items() if key in old_questions and old_questions[key].scale != q.scale
    ]
    reordered = [key for key in old.stage_keys if key in position] != sorted(
        (key for key in old.stage_keys if key in position), key=position.__getitem__
    )
    if not (removed_stages or removed or moved or rescaled or reordered):
        return
    usage = journey_usage(session, journey, answered_among=[*removed, *moved, *rescaled])
    fields: dict[str, str] = {}
    codes: list[str] = []

    in_use = [
        f"{stage!r} is measured by {_names(users)}"
        for stage in removed_stages
        if (users := usage.measuring_stage(stage))
    ]
    if in_use:
        fields["stages"] = "; ".join(in_use) + ": a stage in use cannot be removed"
        codes.append("stage_in_use")
    for use in (u for u in usage.experiments if u.locking):
        kept = [stage for stage in use.stages if stage in position]
        for before, after in pairwise(kept):
            if position[after] < position[before]:
                fields.setdefault(
                    f"stages.{position[after]}",
                    f"{after!r} must stay after {before!r}: {use.label} measures them in that order",
                )
                codes.append("stage_in_use")

    gone: list[str] = []
    for key in removed:
        users = usage.measuring_question(key)
        if users:
            gone.append(f"{key!r} is measured by {_names(users)}")
        elif key in usage.answered:
            gone.append(f"{key!r} has answers")
    if gone:
        fields["questions"] = "; ".join(gone) + ": such a question cannot be removed"
        codes.append("question_in_use")
    for key in moved:
        index, _ = new_questions[key]
        users = usage.measuring_question(key)
        if users or key in usage.answered:
            why = f"measured by {_names(users)}" if users else "it has answers"
            fields[f"questions.{index}.stage"] = (
                f"frozen: {why} at stage {old_questions[key].stage!r}; ask a new question there instead"
            )
            codes.append("frozen_field")
    for key in rescaled:
        index, _ = new_questions[key]
        users = [use for use in usage.measuring_question(key) if use.locking]
        if users or key in usage.answered:
            why = f"measured by {_names(users)}" if users else "it has answers"
            low, high = old_questions[key].scale
            fields[f"questions.{index}.scale"] = (
                f"frozen at {low}-{high}: {why}; ask a new question (a new key) with the new scale instead"
            )
            codes.append("frozen_field")
    if fields:
        raise Conflict(
            codes[0],
            f"Journey {journey.key!r} cannot change this way: "
            + "; ".join(f"{name}: {why}" for name, why in fields.items()),
            fields=fields,
        )


def _check_question_keys(session: Session, journey: Journey, definition: JourneyDefinition) -> None:
    """Question keys are unique across journeys (a rating event names its question alone)."""
    keys = [q.key for q in definition.questions]
    if not keys:
        return
    query = select(RatingQuestion.key, Journey.key).join(Journey).where(RatingQuestion.key.in_(keys))
    if journey.id is not None:
        query = query.where(RatingQuestion.journey_id != journey.id)
    taken: dict[str, str] = {key: owner for key, owner in session.execute(query)}
    if taken:
        raise Conflict(
            "duplicate_question",
            "Rating question keys are unique across journeys: "
            + ", ".join(f"{key!r} is asked in journey {owner!r}" for key, owner in taken.items())
            + ".",
            fields={
                f"questions.{i}.key": f"is taken by journey {taken[key]!r}"
                for i, key in enumerate(keys)
                if key in taken
            },
        )


def _store_journey(journey: Journey, definition: JourneyDefinition) -> None:
    """Copy a definition onto the rows. Stages, personas and questions are matched
    by key and updated in place, so their ids survive edits."""
    journey.name = definition.name
    journey.description = definition.description
    journey.persona_attribute = definition.persona_attribute
    stages = {s.key: s for s in journey.stages}
    journey.stages = [
        _set(
            stages.get(spec.key) or JourneyStage(key=spec.key),
            name=spec.name,
            position=i,
            goal=spec.goal,
            touchpoints=list(spec.touchpoints),
        )
        for i, spec in enumerate(definition.stages)
    ]
    personas = {p.key: p for p in journey.personas}
    journey.personas = [
        _set(
            personas.get(spec.key) or JourneyPersona(key=spec.key),
            name=spec.name,
            description=spec.description,
            position=i,
        )
        for i, spec in enumerate(definition.personas)
    ]
    questions = {q.key: q for q in journey.questions}
    journey.questions = [
        _set(
            questions.get(spec.key) or RatingQuestion(key=spec.key),
            text=spec.text,
            stage=spec.stage,
            scale_min=spec.scale[0],
            scale_max=spec.scale[1],
            position=i,
        )
        for i, spec in enumerate(definition.questions)
    ]


def _set(row: Any, **values: Any) -> Any:
    for name, value in values.items():
        if getattr(row, name, None) != value:
            setattr(row, name, value)
    return row


def _journey_audit(session: Session, journey: Journey, actor: str, action: str, details: dict[str, Any]) -> None:
    session.add(
        JourneyAuditEntry(
            journey_id=journey.id, journey_key=journey.key, actor=actor, action=action, details=details, at=utcnow()
        )
    )


def _follow_order(session: Session, journey: Journey, actor: str) -> tuple[str, ...]:
    """Put the stages of the journey's experiments that do not lock their order
    (drafts, and experiments without enrolled customers) back in journey order after
    a reordering, recorded in each one's audit log; return what to tell the caller."""
    position = {stage.key: stage.position for stage in journey.stages}
    usage = journey_usage(session, journey, answered_among=())
    moved: list[str] = []
    for use in usage.experiments:
        ordered = sorted(use.stages, key=position.__getitem__)
        if use.locking or list(use.stages) == ordered:
            continue
        experiment = session.scalars(select(Experiment).where(Experiment.key == use.key)).one()
        experiment.stages = ordered
        experiment.updated_at = utcnow()
        session.add(
            AuditEntry(
                experiment_id=experiment.id,
                experiment_key=experiment.key,
                actor=actor,
                action="updated",
                details={"changes": {"stages": {"from": list(use.stages), "to": ordered}}, "journey": journey.key},
                at=utcnow(),
            )
        )
        moved.append(use.key)
    if not moved:
        return ()
    return (f"the stages of {', '.join(moved)} now follow the journey's new order",)


def _create_journey(session: Session, definition: JourneyDefinition, actor: str) -> SavedJourney:
    if find_journey(session, definition.key) is not None:
        raise Conflict(
            "duplicate_key",
            f"A journey with key {definition.key!r} exists already; keys are unique.",
            fields={"key": "is taken"},
        )
    now = utcnow()
    journey = Journey(key=definition.key, created_at=now, updated_at=now)
    _check_question_keys(session, journey, definition)
    _store_journey(journey, definition)
    session.add(journey)
    session.flush()
    _journey_audit(session, journey, actor, "created", {})
    session.flush()
    return SavedJourney(journey, "created", notices=definition.notices)


def create_journey(session: Session, definition: JourneyDefinition, actor: str) -> SavedJourney:
    bump_version(session)
    return _create_journey(session, definition, actor)


def _update_journey(session: Session, journey: Journey, definition: JourneyDefinition, actor: str) -> SavedJourney:
    if definition.key != journey.key:
        raise Conflict(
            "key_immutable",
            "A journey's key cannot change; experiments and events name it.",
            fields={"key": f"must stay {journey.key!r}"},
        )
    old = journey_definition_of(journey)
    changes = journey_diff(old, definition)
    if not changes:
        return SavedJourney(journey, "unchanged", notices=definition.notices)
    _check_frozen(session, journey, old, definition)
    _check_question_keys(session, journey, definition)
    _store_journey(journey, definition)
    journey.updated_at = utcnow()
    session.flush()
    notices = _follow_order(session, journey, actor) if "stages" in changes else ()
    _journey_audit(session, journey, actor, "updated", {"changes": changes})
    session.flush()
    return SavedJourney(journey, "updated", changes=changes, notices=definition.notices + notices)


def update_journey(session: Session, key: str, definition: JourneyDefinition, actor: str) -> SavedJourney:
    """Replace the definition of journey ``key`` (as far as what relies on it allows)."""
    bump_version(session)
    return _update_journey(session, get_journey(session, key, fresh=True), definition, actor)


def patch_journey(session: Session, key: str, changes: Mapping[str, Any], actor: str) -> SavedJourney:
    """Apply a partial update (see :func:`journey_with_changes`), merged under the lock
    so that two concurrent patches of different fields both survive."""
    bump_version(session)
    journey = get_journey(session, key, fresh=True)
    return _update_journey(session, journey, journey_with_changes(journey, changes), actor)


def apply_journey(session: Session, definition: JourneyDefinition, actor: str) -> SavedJourney:
    """Create, or update, a journey so that it matches ``definition``: the
    definition files' way in. An unchanged definition writes nothing (not even the
    version, so re-applying a folder does not make every worker reload)."""
    current = find_journey(session, definition.key)
    if current is not None and not journey_diff(journey_definition_of(current), definition):
        return SavedJourney(current, "unchanged", notices=definition.notices)
    bump_version(session)
    current = find_journey(session, definition.key, fresh=True)
    if current is None:
        return _create_journey(session, definition, actor)
    return _update_journey(session, current, definition, actor)
