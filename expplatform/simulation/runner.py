"""Driving synthetic customers through the real HTTP API with the Python client.

Worker threads (``concurrency``) take customers in simulated arrival order. For each:
assign on the scenario's experiments (attributes: the persona and the platform), draw
what they do given the variants they got (``customers.Behaviour``), and ``track``
their conversions and ratings through the worker's own :class:`~expplatform.client.Client`,
which sends them in background batches with retries. A worker waits while its client
has more than a few batches pending, so memory stays bounded at any speed.

Timestamps. The service stamps an exposure when the customer is assigned, i.e. now,
and counts an event for an experiment only when ``exposed_at <= min(timestamp + clock
skew, received)``: an event dated on a simulated day in the past would be a
"before exposure" event and count nowhere, and it has no way to record an exposure
in the past (no backfill path). So every event carries the real time the customer
"did" it, just after their assignment; the simulated days (``--days``, weekends
lighter) decide the order customers arrive in and are written to the truth file, but
the service sees the whole run on today's date. Late events keep the time they
happened and are sent at the end of the run.

Faults, at the scenario's rates: an event sent a second time (same ``event_id``,
after the first was acknowledged: counted as a duplicate, stored once); an event held
back and sent at the end (late, still counted); an event sent before the assign call
and dated before it (counts nowhere: "before exposure", or "unmatched" if it arrives
first); a customer never assigned who sends events ("unmatched"); and the
sample-ratio fault (see ``scenario.SampleRatioFault``).

Every id (customers, events) derives from the scenario name, the seed and the
customer's number, so a second run with the same seed stores nothing new: its
assignments return the recorded variants and all its events come back as duplicates.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from ..client import Client, ClientError, Failure
from .customers import Behaviour, Calendar, Customer, Population, Truth, effects_of
from .scenario import Scenario
from .service import SimulationError, check_reachable, prepare_experiments
from .summary import Summary, Tally

BEFORE_ASSIGNMENT = timedelta(seconds=60)  # how long before the assign call the early event is dated
PENDING_BATCHES = 4  # a worker waits while its client has this many batches queued or in flight
ASSIGN_TIMEOUT = 10.0
UNUSABLE_REASONS = frozenset({"unknown_experiment", "not_running", "paused"})


@dataclass(frozen=True)
class Options:
    url: str = "http://127.0.0.1:8000"
    key: str = ""
    customers: int = 5000
    days: int = 28
    seed: int = 1
    concurrency: int = 8
    max_seconds: float | None = None
    admin_key: str | None = None
    create: bool = False
    legacy: bool = False  # a service before journeys: legacy definitions, metric-less satisfaction ratings
    batch_size: int = 250
    last_day: date | None = None  # the last simulated day (default: today, UTC)


# -- the run ----------------------------------------------------------------------------------------


class _Worker:
    """One thread's client and what it did."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.tally = Tally()
        self.truth = Truth(run.scenario)
        self.held: list[dict[str, Any]] = []  # track() arguments of late events and re-sends
        options = run.options
        self.client = Client(
            options.url,
            options.key,
            timeout=ASSIGN_TIMEOUT,
            batch_size=options.batch_size,
            max_queue=max(10_000, options.batch_size * (PENDING_BATCHES + 2)),
            on_error=run.on_error,
        )

    def track(self, args: dict[str, Any], fault_draws: Iterator[float]) -> None:
        late = next(fault_draws) < self.run.scenario.faults.late_rate
        again = next(fault_draws) < self.run.scenario.faults.duplicate_rate
        args = {**args, "timestamp": datetime.now(UTC)}
        if late:
            self.held.append(args)
            self.tally.late_sent += 1
            return
        self.client.track(**args)
        self.tally.events += 1
        if again:
            self.held.append(args)
            self.tally.duplicates_sent += 1

    def simulate(self, customer: Customer) -> dict[str, str]:
        run = self.run
        scenario = run.scenario
        population = run.population
        cid = customer.id
        fault_draws = iter(population.fault_draws(customer))
        keys = [key for key in run.keys if not population.skips(key, customer)]
        self.tally.sample_ratio_skipped += len(run.keys) - len(keys)
        if customer.before_assignment:
            early = population.early_event(customer)
            moment = datetime.now(UTC) - BEFORE_ASSIGNMENT
            self.client.track(cid, early.stage, "conversion", event_id=early.event_id, timestamp=moment)
            self.tally.events += 1
            self.tally.before_assignment += 1
        variants: dict[str, str] = {}
        if keys:
            answers = self.client.assign(
                cid, keys, attributes={scenario.persona_attribute: customer.persona, "platform": customer.platform}
            )
            for key in keys:
                answer = answers.get(key)
                if answer is not None and answer.enrolled and answer.variant is not None and not answer.forced:
                    variants[key] = answer.variant
                    self.tally.exposures[(key, answer.variant)] += 1
                else:
                    self.tally.not_enrolled[(key, answer.reason or "unknown") if answer else (key, "no answer")] += 1
        outcome = run.behaviour.outcome(customer, effects_of(scenario, variants))
        for sent in population.events(customer, outcome):
            args: dict[str, Any] = {"customer_id": cid, "event_id": sent.event_id}
            if sent.question is None:
                args |= {"stage": sent.stage}
            elif run.options.legacy:
                if scenario.questions[sent.question].scale != scenario.legacy_scale:
                    self.tally.ratings_not_sent += 1
                    continue
                args |= {"stage": sent.stage, "type": "satisfaction", "value": sent.value}
            else:
                args |= {"type": "rating", "metric": sent.question, "value": sent.value}
            self.track(args, fault_draws)
        if customer.ghost:
            for ghost in population.ghost_events(customer):
                self.client.track(ghost.customer_id, ghost.stage, "conversion", event_id=ghost.event_id)
                self.tally.events += 1
            self.tally.unknown_customers += 1
        self.truth.add(customer, variants)
        self.tally.customers += 1
        return variants

    def wait_for_room(self) -> None:
        while self.client.pending > PENDING_BATCHES * self.run.options.batch_size:
            time.sleep(0.005)

    def loop(self) -> None:
        try:
            while (customer := self.run.next_customer()) is not None:
                self.simulate(customer)
                self.wait_for_room()
        except ClientError as exc:  # a 4xx on assign: the key or the request is wrong
            self.run.fail(SimulationError(f"the service refused an assignment: {exc}"))
        except Exception as exc:  # reported by the main thread
            self.run.fail(exc)

    def send_held(self) -> None:
        for args in self.held:
            self.client.track(**args)
            self.tally.events += 1


class _Run:
    def __init__(self, scenario: Scenario, options: Options) -> None:
        self.scenario = scenario
        self.options = options
        calendar = Calendar(options.last_day or datetime.now(UTC).date(), options.days, scenario.weekday_weights)
        self.calendar = calendar
        self.population = Population(scenario, options.seed, calendar)
        self.behaviour = Behaviour(scenario)
        self.order = self.population.in_arrival_order(options.customers)
        self.arrivals: Counter[date] = Counter()  # simulated day -> customers started
        self.last_arrival: date | None = None
        self._next = 0
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.deadline = None if options.max_seconds is None else time.monotonic() + options.max_seconds
        self.ended = "done"
        self.error: BaseException | None = None
        self.problems: list[str] = []
        # Through HTTP every simulated day is today: an experiment whose scenario days
        # end before the last one (stopped since, in a backfill) is not asked for.
        self.keys = [key for key, e in scenario.experiments.items() if e.runs_on_last_day(options.days)]

    def next_customer(self) -> Customer | None:
        with self._lock:
            if self.stop.is_set() or self._next >= len(self.order):
                return None
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.ended = "time"
                return None
            index = self.order[self._next]
            self._next += 1
        customer = self.population.customer(index)
        with self._lock:
            day = customer.arrival.date()
            self.arrivals[day] += 1
            self.last_arrival = max(day, self.last_arrival or day)
        return customer

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def on_error(self, failure: Failure) -> None:
        with self._lock:
            if len(self.problems) < 3:
                self.problems.append(f"{failure.reason} ({len(failure.events)} events)"[:300])


class _Progress:
    """A line on ``stream``: rewritten in place on a terminal, else every ``every`` s."""

    def __init__(self, run: _Run, workers: list[_Worker], stream: TextIO | None) -> None:
        self.run = run
        self.workers = workers
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else 10.0
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulate-progress", daemon=True)

    def start(self) -> None:
        if self.stream is not None:
            self._thread.start()

    def line(self) -> str:
        run = self.run
        done = sum(w.tally.customers for w in self.workers)
        acknowledged = sum(w.client.accepted + w.client.duplicates + w.client.rejected for w in self.workers)
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        total = len(run.order)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        if run.deadline is not None:
            eta = min(eta, max(run.deadline - time.monotonic(), 0.0))
        eta_text = "?" if eta == float("inf") else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        day = ""
        arrival = run.last_arrival
        if arrival is not None:
            index = (arrival - run.calendar.first).days + 1
            day = f" · day {index}/{run.calendar.days} ({arrival.isoformat()})"
        return (
            f"{run.scenario.name}: {done:,}/{total:,} customers ({done / total:.0%}){day} · "
            f"{acknowledged:,} events, {acknowledged / elapsed:,.0f}/s · ETA {eta_text}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def _write(self) -> None:
        assert self.stream is not None
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def stop(self) -> None:
        if self.stream is None:
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.tty:
            self._write()
            self.stream.write("\n")
            self.stream.flush()


def _wait(threads: list[threading.Thread], run: _Run) -> None:
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        run.ended = "interrupted"
        run.stop.set()
        for thread in threads:
            thread.join()


@dataclass
class Result:
    summary: Summary
    truth: Truth
    calendar: dict[str, int]  # simulated day -> customers who arrived that day (of those simulated)
    timestamps: str = "sent: each event is dated when the customer did it in the run, after their assignment"


def simulate(scenario: Scenario, options: Options, *, stream: TextIO | None = sys.stderr) -> Result:
    """Run the scenario against the service: what was sent, the truth (expected
    outcomes of the customers each experiment enrolled) and the simulated calendar."""
    if options.customers < 1 or options.days < 1 or options.concurrency < 1:
        raise SimulationError("customers, days and concurrency must be at least 1")

    def say(text: str) -> None:
        if stream is not None:
            stream.write(text + "\n")
            stream.flush()

    check_reachable(options.url)
    if options.create and not options.admin_key:
        raise SimulationError("--create needs an admin key (--admin-key; `expplatform keys create --scope admin`)")
    if options.admin_key:
        prepare_experiments(
            scenario,
            options.url,
            options.admin_key,
            create=options.create,
            legacy=options.legacy,
            days=options.days,
            say=say,
        )
    run = _Run(scenario, options)
    t0 = time.monotonic()
    workers = [_Worker(run) for _ in range(min(options.concurrency, len(run.order)))]
    progress = _Progress(run, workers, stream)
    try:
        # The first customer alone: an experiment the service cannot enrol anyone in
        # (unknown, draft, paused) stops the run before anything else is sent.
        first = run.next_customer()
        if first is not None:
            try:
                workers[0].simulate(first)
            except ClientError as exc:
                raise SimulationError(f"the service refused an assignment: {exc}") from None
            unusable = {k: r for (k, r) in workers[0].tally.not_enrolled if r in UNUSABLE_REASONS}
            if unusable:
                raise SimulationError(
                    "the service cannot enrol anyone in "
                    + ", ".join(f"{k} ({r})" for k, r in sorted(unusable.items()))
                    + ": start the experiments, or run with --create --admin-key KEY"
                )
            if any(r == "unavailable" for (_k, r) in workers[0].tally.not_enrolled):
                raise SimulationError(f"the service at {options.url} did not answer an assignment")
        progress.start()
        threads = [threading.Thread(target=w.loop, name=f"simulate-{i}", daemon=True) for i, w in enumerate(workers)]
        for thread in threads:
            thread.start()
        _wait(threads, run)
        if run.error is not None:
            raise run.error if isinstance(run.error, SimulationError) else SimulationError(repr(run.error))
        # Late events and re-sends go after everything else was acknowledged, so that a
        # re-send is never in the batch of its original (that would be a rejection).
        for worker in workers:
            worker.client.flush()
        for worker in workers:
            worker.send_held()
    finally:
        for worker in workers:
            worker.client.close()
        progress.stop()
    elapsed = time.monotonic() - t0
    tally = Tally()
    truth = Truth(scenario)
    rejections: Counter[str] = Counter()
    for worker in workers:
        tally.merge(worker.tally)
        truth.merge(worker.truth)
        rejections.update(worker.client.rejections)
    summary = Summary(
        scenario=scenario.name,
        planned=len(run.order),
        tally=tally,
        accepted=sum(w.client.accepted for w in workers),
        duplicates=sum(w.client.duplicates for w in workers),
        rejected=sum(w.client.rejected for w in workers),
        rejections=dict(sorted(rejections.items())),
        failed=sum(w.client.failed for w in workers),
        dropped=sum(w.client.dropped for w in workers),
        elapsed=elapsed,
        ended=run.ended,
        first_problems=run.problems,
    )
    calendar = {run.calendar.day(i).isoformat(): run.arrivals[run.calendar.day(i)] for i in range(run.calendar.days)}
    return Result(summary, truth, calendar)


def truth_document(scenario: Scenario, options: Options, result: Result) -> dict[str, Any]:
    """What ``--truth-out`` holds: the true rates, mean ratings and lifts the run
    used, per experiment (``enrolled``: over the customers it enrolled, in all and per
    persona; ``population``: at the scenario's persona shares), and the run's summary."""
    summary, truth = result.summary, result.truth
    population = truth.population()
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "description": scenario.description,
        "journey": scenario.journey,
        "seed": options.seed,
        "customers": summary.tally.customers,
        "days": options.days,
        "calendar": result.calendar,
        "rating_events": "satisfaction, without metric (--legacy)" if options.legacy else "rating, naming its metric",
        "timestamps": result.timestamps,
        "experiments": {
            key: {"enrolled": value, "population": population[key]} for key, value in truth.enrolled().items()
        },
        "run": summary.to_dict(),
    }


def write_truth(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
