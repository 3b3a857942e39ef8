"""What events may name: the journeys' stages and rating questions, read once and
cached per process (per :class:`~expplatform.db.Database`), reloaded when the
definitions version moves (``versioning``), so ingest does not read the journeys on
every batch.

Each stage and question is resolved here once, when the catalog is loaded, into
what an event naming it does (:class:`Target`): the stage and ``events.metric`` it
is stored with, the journeys whose counters it moves, the question it answers in
each journey, and the scales its value must fit. Ingest then looks an event up in a
dict. The rules:

- a conversion at a stage moves every journey that has the stage;
- a rating naming its question moves the journey that asks it;
- a rating naming only its stage is that stage's one question in each journey that
  has the stage, and is refused when some journey has none or several there
  (``ambiguous_metric``; ``no_question`` when no journey asks anything there). With
  one such journey it is stored with that question's key; with several, with no key
  (NULL), and counted per journey as that journey's question (as ``rebuild`` does).
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database
from ..models import Journey, JourneyPersona, JourneyStage, RatingQuestion
from ..versioning import VersionedCache


@dataclass(frozen=True, slots=True)
class Question:
    key: str
    journey_id: int
    stage: str
    scale_min: int
    scale_max: int


@dataclass(frozen=True, slots=True)
class JourneyInfo:
    id: int
    key: str
    persona_attribute: str
    personas: frozenset[str]


@dataclass(frozen=True, slots=True)
class Target:
    """What an event naming a stage (conversion), a question, or a stage alone
    (rating) is stored as and moves."""

    stage: str
    # events.metric: the question's key, or None (conversions; a stage-only rating
    # at a stage that several journeys share, each with its one question).
    metric: str | None
    # (journey id, journey_outcomes.metric): '' for conversions, else the question.
    journeys: tuple[tuple[int, str], ...]
    # Journey id -> the question the event answers in that journey (ratings).
    asks: dict[int, str]
    # The questions whose scales a rating's value must fit.
    questions: tuple[Question, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a stage-only rating cannot be resolved: the code and message to reject with."""

    error: str
    message: str


@dataclass(frozen=True)
class JourneyCatalog:
    conversions: dict[str, Target]  # by stage
    by_question: dict[str, Target]  # by question key
    stage_ratings: dict[str, Target | Refusal]  # by stage: a rating naming only its stage
    questions: dict[str, Question]
    journeys: dict[int, JourneyInfo]

    @property
    def has_personas(self) -> bool:
        """Whether any journey declares personas (else ingest reads no attributes)."""
        return any(journey.personas for journey in self.journeys.values())


def load_catalog(session: Session) -> JourneyCatalog:
    """Read every journey's stages, personas and questions (four short queries)."""
    journeys: dict[int, JourneyInfo] = {}
    personas: dict[int, set[str]] = defaultdict(set)
    for journey_id, key in session.execute(select(JourneyPersona.journey_id, JourneyPersona.key)):
        personas[journey_id].add(key)
    for journey_id, key, attribute in session.execute(select(Journey.id, Journey.key, Journey.persona_attribute)):
        journeys[journey_id] = JourneyInfo(journey_id, key, attribute, frozenset(personas[journey_id]))
    having: dict[str, list[int]] = defaultdict(list)  # stage -> journeys, by id
    for journey_id, stage in session.execute(
        select(JourneyStage.journey_id, JourneyStage.key).order_by(JourneyStage.journey_id, JourneyStage.position)
    ):
        having[stage].append(journey_id)
    questions: dict[str, Question] = {}
    asked: dict[tuple[int, str], list[Question]] = defaultdict(list)
    for row in session.execute(
        select(
            RatingQuestion.key,
            RatingQuestion.journey_id,
            RatingQuestion.stage,
            RatingQuestion.scale_min,
            RatingQuestion.scale_max,
        ).order_by(RatingQuestion.journey_id, RatingQuestion.position, RatingQuestion.id)
    ):
        question = Question(*row)
        questions[question.key] = question
        asked[(question.journey_id, question.stage)].append(question)

    conversions = {stage: Target(stage, None, tuple((j, "") for j in ids), {}, ()) for stage, ids in having.items()}
    by_question = {
        q.key: Target(q.stage, q.key, ((q.journey_id, q.key),), {q.journey_id: q.key}, (q,)) for q in questions.values()
    }
    stage_ratings: dict[str, Target | Refusal] = {}
    for stage, ids in having.items():
        per_journey = {j: asked.get((j, stage), []) for j in ids}
        if all(len(found) == 1 for found in per_journey.values()):
            ones = tuple(found[0] for found in per_journey.values())
            stage_ratings[stage] = Target(
                stage,
                ones[0].key if len(ones) == 1 else None,
                tuple((q.journey_id, q.key) for q in ones),
                {q.journey_id: q.key for q in ones},
                ones,
            )
            continue
        keys = [q.key for found in per_journey.values() for q in found]
        if not keys:
            stage_ratings[stage] = Refusal("no_question", f"no journey asks a rating question at stage {stage!r}")
        else:
            stage_ratings[stage] = Refusal(
                "ambiguous_metric",
                f"stage {stage!r} has no single rating question; name one in 'metric': {', '.join(keys)}",
            )
    return JourneyCatalog(conversions, by_question, stage_ratings, questions, journeys)


_caches: weakref.WeakKeyDictionary[Database, VersionedCache[JourneyCatalog]] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def catalog_cache(database: Database) -> VersionedCache[JourneyCatalog]:
    """This process's cache of the database's catalog (one per database)."""
    cache = _caches.get(database)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(database)
            if cache is None:
                cache = VersionedCache(load_catalog, database.settings.definitions_refresh_seconds)
                _caches[database] = cache
    return cache


def cached_catalog(database: Database) -> JourneyCatalog:
    """The database's catalog as this process last read it, reloaded when the
    definitions version has moved (checked at most every
    ``definitions_refresh_seconds``, as the assignment cache is)."""
    return catalog_cache(database).get(database.sessionmaker)
