"""The simulator's customers written straight into the configured database, each on
their simulated day (``expplatform simulate --backfill``; ``expplatform demo seed``).

Through HTTP the service stamps every exposure "now" (see ``runner``), so simulated
days cannot be backdated there. An operator with the database at hand can do what no
client can: record the exposures and events of past days. The customers, what they
do and the truth are those of the HTTP runner (``customers``: Population, Behaviour,
Truth); the rules are the service's own wherever it has them:

- lifecycle: ``experiments.change_status`` (audit log, layer buckets), then
  ``started_at``/``stopped_at`` set to the simulated moments, ``simulated`` set;
- assignment: ``assignment.assign`` on each experiment's stored definition
  (targeting, layer, traffic, forced variants, ``bucketing.place``), among the
  experiments running when the customer arrives (a scenario's ``days``);
- outcomes and counters, unmatched events included: ``ingest.rebuild_everything``
  from the stored rows, the rules of ingest in SQL.

When things happen: a customer is exposed on arrival; reaches each stage a few
minutes after the one before; rates a stage shortly after converting there; and
their events are received a moment later. The simulated days end yesterday (UTC), so
nothing is dated in the future. Faults, as far as they mean something offline: a
duplicate goes in twice and is stored once; a late event is received hours after it
happened (capped at now); an event before assignment is dated and received a minute
before the customer's exposure, so it counts nowhere (unmatched); a customer never
assigned sends unmatched events; the sample-ratio fault skips assignments as in HTTP.

A re-run adds nothing: customer and event ids derive from the scenario, the seed and
the customer's number, and rows go in with ``INSERT ... ON CONFLICT DO NOTHING``. Everything happens in the caller's
one write transaction, so an interrupted backfill leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from .. import experiments as experiment_service
from ..assignment import AssignRequest, Definitions, ExposureStore, LiveExperiment, _live, assign
from ..definitions import ExperimentDefinition, parse_definition
from ..errors import DomainError, NotFound
from ..ingest import rebuild_everything
from ..ingest.store import _EVENT_COLUMNS  # the events table as ingest writes it
from ..models import Experiment, Exposure, utcnow
from ..rawsql import RawConnection
from .customers import Behaviour, Calendar, Customer, Population, Sent, Truth, effects_of, uniforms
from .runner import Options, Result
from .scenario import Scenario
from .service import SimulationError, definition_for
from .summary import Summary, Tally

ACTOR = "simulate --backfill"
BEFORE_ASSIGNMENT = timedelta(seconds=60)
CHUNK_ROWS = 20_000  # rows per INSERT: bounded statements (and JSON parameters on PostgreSQL)
TIMESTAMPS = "simulated: exposures on each customer's arrival, events minutes after, all on the simulated days"
Say = Callable[[str], None]


@dataclass(frozen=True)
class _Running:
    """An experiment, reduced for assignment, and the simulated moments it ran."""

    live: LiveExperiment
    stages: frozenset[str]
    metrics: Mapping[str, str]
    started_at: datetime
    stopped_at: datetime | None

    def runs_at(self, moment: datetime) -> bool:
        return self.started_at <= moment and (self.stopped_at is None or moment < self.stopped_at)


@dataclass(frozen=True)
class _Exposed:
    experiment: _Running
    at: datetime
    forced: bool


class _Recorder:
    """Stands in for the service's ExposureStore: a simulated customer has no
    exposure yet (a re-run's rows are skipped on insert), and what assignment would
    insert is recorded instead."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, bool]] = []

    def existing(self, customer_id: str, experiment_ids: Sequence[int]) -> list[tuple]:
        return []

    def insert(
        self, customer_id: str, attributes: Mapping[str, Any], rows: Sequence[tuple[int, int, bool]]
    ) -> dict[int, int]:
        self.rows = list(rows)
        return {experiment_id: variant_id for experiment_id, variant_id, _forced in rows}

    def count_mismatches(self, exposure_ids: Sequence[int]) -> None:
        raise AssertionError("a customer with no exposure has no mismatch")


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def calendar_of(scenario: Scenario, options: Options, now: datetime) -> Calendar:
    """The simulated days: ``options.days`` ending ``options.last_day``, by default
    yesterday, so that no customer arrives in the future."""
    last = options.last_day or (now.date() - timedelta(days=1))
    return Calendar(last, options.days, scenario.weekday_weights)


# -- experiments -------------------------------------------------------------------------------


def create_experiment(
    session: Session, definition: ExperimentDefinition, actor: str, *, cloned_from: str | None = None
) -> Experiment:
    """A new draft from ``definition``; as the next iteration of ``cloned_from`` (a
    clone of it, changed to match) when given."""
    if cloned_from is None:
        return experiment_service.create_experiment(session, definition, actor).experiment
    experiment_service.clone_experiment(session, cloned_from, actor, new_key=definition.key)
    return experiment_service.apply_definition(session, definition, actor).experiment


def _stored(session: Session, scenario: Scenario, key: str, create: bool) -> Experiment:
    try:
        return experiment_service.get_experiment(session, key)
    except NotFound:
        if not create:
            raise SimulationError(f"experiment {key} does not exist (--create makes it from the scenario)") from None
    experiment = scenario.experiments[key]
    definition = parse_definition(definition_for(scenario, experiment, legacy=False))
    return create_experiment(session, definition, ACTOR, cloned_from=experiment.cloned_from)


def _has_exposures(session: Session, experiment: Experiment) -> bool:
    return session.scalar(select(Exposure.id).where(Exposure.experiment_id == experiment.id).limit(1)) is not None


def prepare(session: Session, scenario: Scenario, calendar: Calendar, *, create: bool, say: Say) -> dict[str, _Running]:
    """Each of the scenario's experiments in the lifecycle state its ``days`` say, with
    its simulated start (and stop) and ``simulated`` set; an experiment marked so
    already keeps its moments. Refuses experiments holding data that is not simulated."""
    running: dict[str, _Running] = {}
    end = calendar.days
    # Sources before their clones.
    order = sorted(scenario.experiments.values(), key=lambda e: e.cloned_from is not None)
    for spec in order:
        first, last = spec.days or (1, end)
        if last > end:
            raise SimulationError(f"experiment {spec.key} runs until day {last}, past the {end} days simulated")
        experiment = _stored(session, scenario, spec.key, create)
        if experiment.journey.key != scenario.journey:
            raise SimulationError(
                f"experiment {spec.key} belongs to journey {experiment.journey.key}, "
                f"the scenario's is {scenario.journey}"
            )
        if not experiment.simulated and _has_exposures(session, experiment):
            raise SimulationError(f"experiment {spec.key} has data that is not simulated: the backfill leaves it alone")
        stops = last < end
        if experiment.status == "paused" or (experiment.status == "stopped" and not stops):
            raise SimulationError(f"experiment {spec.key} is {experiment.status}: the scenario has it running")
        if experiment.status == "draft" and not create:
            raise SimulationError(f"experiment {spec.key} is a draft: start it, or run with --create")
        if experiment.status == "draft":
            experiment_service.change_status(session, spec.key, "start", ACTOR)
            say(f"started experiment {spec.key}")
        if stops and experiment.status == "running":
            experiment_service.change_status(session, spec.key, "stop", ACTOR)
            say(f"stopped experiment {spec.key}")
        if not experiment.simulated:
            experiment.simulated = True
            experiment.started_at = midnight(calendar.day(first - 1))
            experiment.stopped_at = midnight(calendar.day(last - 1) + timedelta(days=1)) if stops else None
        assert experiment.started_at is not None  # started above, or before
        running[spec.key] = _Running(
            _live(experiment),
            frozenset(experiment.stages),
            dict(experiment.metrics or {}),
            experiment.started_at,
            experiment.stopped_at,
        )
    session.flush()
    return running


# -- what each customer does -----------------------------------------------------------------------


class _Plan:
    """The rows a backfill writes, and what it did, customer by customer."""

    def __init__(self, scenario: Scenario, population: Population, now: datetime, clock_skew: timedelta) -> None:
        self.scenario = scenario
        self.population = population
        self.behaviour = Behaviour(scenario)
        self.truth = Truth(scenario)
        self.tally = Tally()
        self.now = now
        self.skew = clock_skew
        self.exposures: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.arrivals: Counter[date] = Counter()
        self._definitions: dict[tuple[str, ...], Definitions] = {}
        self._encoded: dict[tuple[str, str], str] = {}  # (persona, platform) -> the attributes as JSON
        self._timing_draws = len(scenario.stages) + len(scenario.questions) + 2

    def _definitions_of(self, chosen: Sequence[_Running]) -> Definitions:
        keys = tuple(r.live.key for r in chosen)
        found = self._definitions.get(keys)
        if found is None:
            live = tuple(r.live for r in chosen)
            found = self._definitions[keys] = Definitions({e.key: e for e in live}, {}, live, frozenset())
        return found

    def add(self, customer: Customer, running: Mapping[str, _Running]) -> None:
        scenario, population = self.scenario, self.population
        arrival = customer.arrival
        self.arrivals[arrival.date()] += 1
        offered = [r for r in running.values() if r.runs_at(arrival)]
        asked = [r for r in offered if not population.skips(r.live.key, customer)]
        self.tally.sample_ratio_skipped += len(offered) - len(asked)
        attributes = {scenario.persona_attribute: customer.persona, "platform": customer.platform}
        encoded = self._encoded.get((customer.persona, customer.platform))
        if encoded is None:
            encoded = self._encoded[(customer.persona, customer.platform)] = json.dumps(attributes)
        exposed: list[_Exposed] = []
        variants: dict[str, str] = {}
        if asked:
            recorder = _Recorder()
            request = AssignRequest(customer.id, attributes, tuple(r.live.key for r in asked))
            answers = assign(cast(ExposureStore, recorder), self._definitions_of(asked), request)
            by_id = {r.live.id: r for r in asked}
            for experiment_id, variant_id, forced in recorder.rows:
                self.exposures.append((experiment_id, variant_id, customer.id, arrival, encoded, forced, 0))
                exposed.append(_Exposed(by_id[experiment_id], arrival, forced))
            for answer in answers:
                if answer.enrolled and not answer.forced:
                    assert answer.variant is not None
                    variants[answer.experiment] = answer.variant
                    self.tally.exposures[(answer.experiment, answer.variant)] += 1
                elif not answer.enrolled:
                    self.tally.not_enrolled[(answer.experiment, answer.reason or "unknown")] += 1
        timing = iter(uniforms(f"{population.seed}:{scenario.name}:{customer.index}:times", self._timing_draws))
        latency = timedelta(seconds=0.05 + 1.45 * next(timing))
        lateness = timedelta(hours=1 + 35 * next(timing))
        if customer.before_assignment:
            moment = arrival - BEFORE_ASSIGNMENT
            self._event(population.early_event(customer), moment, moment, exposed)
            self.tally.before_assignment += 1
        outcome = self.behaviour.outcome(customer, effects_of(scenario, variants))
        fault_draws = iter(population.fault_draws(customer))
        moment = arrival
        reached: dict[str, datetime] = {}
        for stage in outcome.conversions:
            moment += (
                timedelta(seconds=30 + 1170 * next(timing)) if reached else timedelta(seconds=5 + 115 * next(timing))
            )
            reached[stage] = moment
        for sent in population.events(customer, outcome):
            occurred = reached[sent.stage]
            if sent.question is not None:
                occurred += timedelta(seconds=10 + 290 * next(timing))
            late = next(fault_draws) < scenario.faults.late_rate
            again = next(fault_draws) < scenario.faults.duplicate_rate
            received = occurred + (lateness if late else latency)
            self._event(sent, occurred, received, exposed, twice=again)
            self.tally.late_sent += late
            self.tally.duplicates_sent += again
        if customer.ghost:
            for ghost in population.ghost_events(customer):
                moment = arrival + timedelta(seconds=30)
                self._event(ghost, moment, moment + latency, [])
            self.tally.unknown_customers += 1
        self.truth.add(customer, variants)
        self.tally.customers += 1

    def _event(
        self, sent: Sent, occurred: datetime, received: datetime, exposed: Sequence[_Exposed], *, twice: bool = False
    ) -> None:
        received = min(received, self.now)
        occurred = min(occurred, received)
        cutoff = min(occurred + self.skew, received)
        counted = attribution_of(sent, occurred, received, cutoff, exposed)
        kind, metric = ("conversion", None) if sent.question is None else ("satisfaction", sent.question)
        row = (
            sent.event_id,
            sent.customer_id,
            sent.stage,
            kind,
            metric,
            sent.value,
            occurred,
            received,
            None,
            counted,
            cutoff,
        )
        self.events.extend([row, row] if twice else [row])
        self.tally.events += 2 if twice else 1


def attribution_of(
    sent: Sent, occurred: datetime, received: datetime, cutoff: datetime, exposed: Iterable[_Exposed]
) -> int:
    """Ingest's decision (``ingest/attribution.py``) for an event of a customer whose
    only exposures are ``exposed``: how many experiments it counts for (the event row's
    ``attributed``, which no counter reads)."""
    measuring = [x for x in exposed if sent.stage in x.experiment.stages and x.at <= received]
    counted = sum(
        1
        for x in measuring
        if (sent.question is None or x.experiment.metrics.get(sent.stage) == sent.question)
        and not x.forced
        and x.at <= cutoff
        and (x.experiment.stopped_at is None or occurred <= x.experiment.stopped_at)
    )
    return counted


# -- writing -----------------------------------------------------------------------------------------

_EXPOSURE_COLUMNS = (
    ("experiment_id", "integer"),
    ("variant_id", "integer"),
    ("customer_id", "text"),
    ("exposed_at", "timestamptz"),
    ("attributes", "json"),
    ("forced", "boolean"),
    ("mismatches", "integer"),
)
_TIMES = {"timestamptz"}


def _insert(
    sql: RawConnection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple], tail: str
) -> list[Any]:
    """Insert ``rows`` in chunks; what ``tail`` (ON CONFLICT ... [RETURNING]) returns."""
    time_in = sql.dialect.time_in
    times = [i for i, (_name, kind) in enumerate(columns) if kind in _TIMES]
    names = ", ".join(name for name, _kind in columns)
    found: list[Any] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = []
        for row in rows[start : start + CHUNK_ROWS]:
            values = list(row)
            for i in times:
                values[i] = time_in(values[i])
            chunk.append(tuple(values))
        found.extend(
            sql.rows(f"INSERT INTO {table} ({names}) {{rows}} {tail}", columns, chunk, fetch="RETURNING" in tail)
        )
    return found


def _write(session: Session, plan: _Plan) -> tuple[int, int]:
    """Insert the plan's exposures and events (those absent); (exposures inserted,
    events inserted)."""
    sql = RawConnection(session.connection())
    # In key order: the indexes then grow at their ends, not all over (several times faster).
    plan.exposures.sort(key=lambda row: (row[2], row[0]))
    plan.events.sort(key=lambda row: row[0])
    exposures = _insert(
        sql,
        "exposures",
        _EXPOSURE_COLUMNS,
        plan.exposures,
        "ON CONFLICT (experiment_id, customer_id) DO NOTHING RETURNING id",
    )
    inserted = [
        row[0]
        for row in _insert(
            sql, "events", _EVENT_COLUMNS, plan.events, "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        )
    ]
    return len(exposures), len(inserted)


# -- the run -----------------------------------------------------------------------------------------


def backfill(
    session: Session,
    scenario: Scenario,
    options: Options,
    *,
    clock_skew_seconds: float,
    say: Say = lambda _line: None,
    now: datetime | None = None,
) -> Result:
    """Write the scenario's customers of ``options.days`` past days into the database
    in the caller's write transaction, then rebuild the outcomes and counters. Uses
    ``customers``, ``days``, ``seed``, ``last_day`` and ``create`` of ``options``."""
    if options.customers < 1 or options.days < 1:
        raise SimulationError("customers and days must be at least 1")
    t0 = time.monotonic()
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":
        # An operator's bulk write: not bounded like a request's statements.
        session.execute(text("SET LOCAL statement_timeout = 0"))
        session.execute(text("SET LOCAL lock_timeout = '60s'"))
    calendar = calendar_of(scenario, options, now)
    if midnight(calendar.last + timedelta(days=1)) > now:
        raise SimulationError(f"the simulated days must end before today: {calendar.last} has not ended yet")
    try:
        running = prepare(session, scenario, calendar, create=options.create, say=say)
    except DomainError as exc:
        raise SimulationError(f"preparing the experiments failed: {exc.message}") from None
    population = Population(scenario, options.seed, calendar)
    plan = _Plan(scenario, population, now, timedelta(seconds=clock_skew_seconds))
    for index in population.in_arrival_order(options.customers):
        plan.add(population.customer(index), running)
    planned = time.monotonic()
    exposures, events = _write(session, plan)
    written = time.monotonic()
    say(
        f"{scenario.name}: {options.customers:,} customers over {calendar.days} days "
        f"({calendar.first} to {calendar.last}): {exposures:,} of {len(plan.exposures):,} exposures and "
        f"{events:,} of {len(plan.events):,} events were new ({planned - t0:.1f} s to simulate, "
        f"{written - planned:.1f} s to write)"
    )
    rebuild_everything(session)
    say(f"outcomes and counters rebuilt in {time.monotonic() - written:.1f} s")
    summary = Summary(
        scenario=scenario.name,
        planned=options.customers,
        tally=plan.tally,
        accepted=events,
        duplicates=len(plan.events) - events,
        rejected=0,
        rejections={},
        failed=0,
        dropped=0,
        elapsed=time.monotonic() - t0,
        ended="done",
        first_problems=[],
    )
    days = {calendar.day(i).isoformat(): plan.arrivals[calendar.day(i)] for i in range(calendar.days)}
    return Result(summary, plan.truth, days, timestamps=TIMESTAMPS)
