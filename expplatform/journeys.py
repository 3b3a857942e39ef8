"""The journey service: reading journeys, and tying experiment definitions to them.

An experiment belongs to one journey, tests one of its stages, and measures some of
its stages with at most one rating question each. A definition may name its
journey, or (the form experiments had before journeys existed, still accepted from
the API, files and form) give only a stage list and a satisfaction scale: then the
*implicit journey* is the oldest journey whose stage keys are exactly that list,
made when none is, and at each stage the journey's question with that scale, made
when missing. Migration 0003 moved stored experiments into journeys by the same rule.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload

from .definitions import DEFAULT_STAGES, ExperimentDefinition
from .errors import InvalidInput, NotFound
from .models import Journey, JourneyStage, RatingQuestion, utcnow

DEFAULT_SCALE = (1, 5)
MAX_KEY = 64


def stage_name(key: str) -> str:
    """A readable name made from a stage key: ``first-purchase`` -> ``First purchase``."""
    return key.replace("-", " ").replace("_", " ").capitalize()


def _loaded() -> Select[Journey]:
    return select(Journey).options(
        selectinload(Journey.stages), selectinload(Journey.personas), selectinload(Journey.questions)
    )


def find_journey(session: Session, key: str) -> Journey | None:
    return session.scalars(_loaded().where(Journey.key == key)).one_or_none()


def get_journey(session: Session, key: str) -> Journey:
    journey = find_journey(session, key)
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
