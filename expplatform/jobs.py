"""Full-model (PyMC) fits outside the request, in their own processes.

A fit takes from seconds to minutes and a whole core, so the web only queues it: a
request writes an ``AnalysisJob`` row and returns. ``expplatform worker`` (see
:meth:`JobRunner.serve`) is a separate process that takes the oldest queued job, runs
it while a second thread touches its heartbeat, stores the result and takes the next.
Web workers never run fits, so a fit neither competes with assignment inside a web
worker nor dies when gunicorn restarts one. The database is the only shared state,
so any number of workers may run, on any number of machines:

- a worker claims the oldest queued job in one write transaction (PostgreSQL: ``FOR
  UPDATE SKIP LOCKED``, so concurrent workers take different rows without waiting;
  SQLite: the transaction holds the database's write lock) and finishes it with a
  conditional ``UPDATE ... WHERE status = 'running' AND worker = <me>``, so a worker
  that was given up for dead never overwrites the verdict;
- a running job whose heartbeat is older than ``job_timeout_seconds`` belongs to a
  worker that died (a crash, an OOM kill, a lost machine); whoever looks at the jobs
  marks it failed, and an editor may run the fit again (a new job; the failed one
  stays as history). A queued job waits for a worker however long that takes;
- a worker asked to stop (SIGTERM, Ctrl-C) in the middle of a fit puts the job back
  in the queue for the next worker;
- one active job per experiment: queueing while one is queued or running returns it.

The result is stored as JSON with the data snapshot it was fitted on (when, the
counts, and each stage's rating question and scale), since the live data keeps
moving while the report shows the fit. The fit itself sees each stage on its own
scale (``ExperimentStats.stage_scales``): no ordinal likelihood where a stage has no
question, and its result lists per stage only the metrics of that stage's scale.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from flask import Flask
from sqlalchemy import CursorResult, select, update

from .aggregation import experiment_stats, stage_questions
from .config import Settings
from .db import Database
from .errors import Conflict, MalformedRequest
from .experiment_settings import experiment_settings
from .job_records import ACTIVE, reap_stale
from .models import AnalysisJob, Experiment, utcnow

if TYPE_CHECKING:  # annotations only: the fit imports the analysis when it runs
    from analysis.types import DecisionRule, ExperimentStats, Prior

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "finished", "failed")
Progress = Callable[[int, int], None]
# The job row's progress is written at most this often (the sampler calls back after
# every iteration, hundreds of times a second): the pages poll it every few seconds.
PROGRESS_INTERVAL_SECONDS = 0.5


@dataclass(frozen=True)
class FitParams:
    """Sampling options of one fit, bounded so one request cannot hold a worker for hours."""

    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 0

    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "draws": (100, 10_000),
        "tune": (100, 10_000),
        "chains": (1, 8),
        "seed": (0, 2**32 - 1),
    }

    @classmethod
    def defaults(cls, settings: Settings) -> FitParams:
        return cls(draws=settings.full_model_draws, tune=settings.full_model_tune, chains=settings.full_model_chains)

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None, settings: Settings) -> FitParams:
        """Validate user input (400 with the offending fields), over the settings' defaults."""
        values = dict(values or {})
        errors = {name: "unknown option" for name in values if name not in cls.LIMITS}
        chosen = asdict(cls.defaults(settings))
        for name, (low, high) in cls.LIMITS.items():
            if name not in values or values[name] is None or values[name] == "":
                continue
            raw = values[name]
            try:
                number = int(raw) if not isinstance(raw, (bool, float)) else None
            except (TypeError, ValueError):
                number = None
            if number is None or not low <= number <= high:
                errors[name] = f"must be a whole number from {low} to {high}"
            else:
                chosen[name] = number
        if errors:
            raise MalformedRequest(fields=errors)
        return cls(**chosen)

    @classmethod
    def stored(cls, values: Mapping[str, Any]) -> FitParams:
        return cls(**{k: int(v) for k, v in values.items() if k in cls.LIMITS})


class Fit(Protocol):
    def __call__(
        self, stats: ExperimentStats, params: FitParams, *, prior: Prior, rule: DecisionRule, progress: Progress | None
    ) -> dict[str, Any]: ...


def full_model_fit(
    stats: ExperimentStats, params: FitParams, *, prior: Prior, rule: DecisionRule, progress: Progress | None
) -> dict[str, Any]:
    """The real fit: ``analysis.hierarchical`` (imports PyMC, so only here, lazily).

    Chains run one after another in this process (``cores=1``): forking samplers out
    of a threaded web worker is unsafe, and the machine has two cores to share."""
    from analysis.hierarchical import fit_full_model

    result = fit_full_model(
        stats,
        prior=prior,
        rule=rule,
        draws=params.draws,
        tune=params.tune,
        chains=params.chains,
        seed=params.seed,
        sample_kwargs={"cores": 1},
        progress=progress,
    )
    return result.to_dict()


def snapshot_of(
    stats: ExperimentStats, taken_at: datetime, questions: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """The counts a fit saw, to show next to its result: per stage its rating scale
    (None: no rating question there, so nobody rated) and, given ``questions``, the
    key of the question measured there."""
    snapshot = {
        "taken_at": taken_at.isoformat(),
        "exposed": {v: stats.cells[stats.stages[0]][v].exposed for v in stats.variants},
        "converted": {s: {v: stats.cells[s][v].converted for v in stats.variants} for s in stats.stages},
        "rated": {s: {v: sum(stats.cells[s][v].ratings) for v in stats.variants} for s in stats.stages},
        "scales": {
            s: None if (scale := stats.scale_of(s)) is None else {"min": scale.min, "max": scale.max}
            for s in stats.stages
        },
    }
    if questions is not None:
        snapshot["questions"] = {s: questions.get(s) for s in stats.stages}
    return snapshot


# -- queueing (reading the rows: job_records.py) ----------------------------------------


def queue_fit(
    database: Database, experiment_key: str, actor: str, params: FitParams, *, claimed_by: str | None = None
) -> tuple[AnalysisJob, bool]:
    """Queue a fit for the workers, or return the experiment's active one.

    Returns (job, created). With ``claimed_by`` the new job is created already running
    for that worker (the command line runs it in the foreground). The experiment row is
    locked (PostgreSQL; SQLite's write transaction is exclusive anyway) so two
    simultaneous requests make one job."""
    from .experiments import get_experiment

    with database.write() as session:
        experiment = get_experiment(session, experiment_key)
        session.execute(select(Experiment.id).where(Experiment.id == experiment.id).with_for_update())
        reap_stale(session, database.settings)
        active = session.scalar(
            select(AnalysisJob).where(AnalysisJob.experiment_id == experiment.id, AnalysisJob.status.in_(ACTIVE))
        )
        if active is not None:
            return active, False
        now = utcnow()
        job = AnalysisJob(experiment_id=experiment.id, requested_by=actor, params=asdict(params), created_at=now)
        if claimed_by is None:
            job.status = "queued"
        else:
            job.status, job.worker, job.started_at, job.heartbeat_at = "running", claimed_by, now, now
        session.add(job)
        session.flush()
        return job, True


# -- running -----------------------------------------------------------------------------


class WorkerStopping(BaseException):
    """Raised inside a fit when its worker is asked to stop: the job goes back to the
    queue. A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except
    Exception`` in the sampler swallows it (and unlike it, PyMC does not catch it to
    return a partial trace)."""


class JobRunner:
    """Runs queued fits in the calling thread, one at a time, with a heartbeat thread
    while it holds a job. ``expplatform worker`` calls :meth:`serve`; tests and cron
    jobs may call :meth:`run_pending`. The web only calls :meth:`queue`, which starts
    no thread: a served app never runs a fit."""

    def __init__(self, database: Database, fit: Fit = full_model_fit) -> None:
        self.database = database
        self.fit = fit
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fitting = False  # True while ``fit`` runs: then a stop request interrupts it
        self.stopping = threading.Event()  # set by :meth:`request_stop`; ends :meth:`serve`
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None

    @property
    def settings(self) -> Settings:
        return self.database.settings

    def queue(self, experiment_key: str, actor: str, params: FitParams) -> tuple[AnalysisJob, bool]:
        """Queue a fit for the workers (or return the active one): what a request does."""
        return queue_fit(self.database, experiment_key, actor, params)

    def run_here(
        self, experiment_key: str, actor: str, params: FitParams, progress: Progress | None = None
    ) -> AnalysisJob:
        """Create a fit claimed by this runner and run it in the calling thread (the
        command line), heartbeats included; 409 when the experiment already has an
        active fit."""
        job, created = queue_fit(self.database, experiment_key, actor, params, claimed_by=self.identity)
        if not created:
            raise Conflict("fit_active", f"A full-model fit (#{job.id}) is already {job.status} for {experiment_key}.")
        self._execute(job.id, progress)
        with self.database.sessionmaker() as session:
            return session.get_one(AnalysisJob, job.id)  # jobs are never deleted

    def request_stop(self, reason: str) -> None:
        """Stop :meth:`serve` after the current job; called from a signal handler in
        the thread that runs the fits, it also interrupts a fit in progress (raises
        :class:`WorkerStopping` into it), whose job goes back to the queue."""
        self.stopping.set()
        if self.fitting:
            raise WorkerStopping(reason)

    def serve(self, *, poll_seconds: float = 2.0, once: bool = False) -> int:
        """The worker loop: run queued jobs until :meth:`request_stop` (or, with
        ``once``, until none is left); returns how many were run. A database that
        cannot be reached is tried again after ``poll_seconds`` (with ``once``, the
        error propagates)."""
        done = 0
        try:
            while not self.stopping.is_set():
                try:
                    ran = self.run_next()
                except Exception:
                    if once:
                        raise
                    log.exception("worker %s could not look for queued fits; trying again", self.identity)
                    ran = None
                if ran is not None:
                    done += 1
                    log.info("full-model job %s: %s", ran[0], ran[1] or "dropped")
                elif self.refresh_warehouse():
                    done += 1
                elif once or self.stopping.wait(poll_seconds):
                    break
        except WorkerStopping:
            log.info("worker %s stopped in the middle of a fit; the job is queued again", self.identity)
        return done

    def refresh_warehouse(self) -> bool:
        """Between fits: recompute one warehouse experiment's statistics that are
        asked for or stale (``warehouse.refresh``); False when none was due."""
        from .warehouse.refresh import run_due

        try:
            outcome = run_due(self.database, stale_after=self.settings.warehouse_refresh_seconds)
        except Exception:
            log.exception("worker %s could not refresh warehouse statistics", self.identity)
            return False
        if outcome is None:
            return False
        log.info(
            "warehouse statistics of %s: %s in %.1f s",
            outcome.experiment_key,
            outcome.error or f"{outcome.cells} cells",
            outcome.seconds,
        )
        return True

    def run_pending(self) -> int:
        """Run every queued job, oldest first, in this thread; returns how many ran."""
        return self.serve(once=True)

    def run_next(self) -> tuple[int, str | None] | None:
        """Claim the oldest queued job and run it here: (job id, final status), or None
        when the queue is empty."""
        job_id = self.claim_next()
        if job_id is None:
            return None
        return job_id, self._execute(job_id, None)

    def claim_next(self) -> int | None:
        """Take the oldest queued job for this runner. On PostgreSQL, rows another
        worker is claiming are skipped, not waited for; on SQLite the write
        transaction holds the database lock. None when nothing is queued."""
        now = utcnow()
        with self.database.write() as session:
            job_id = session.scalar(
                select(AnalysisJob.id)
                .where(AnalysisJob.status == "queued")
                .order_by(AnalysisJob.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job_id is None:
                return None
            session.execute(
                update(AnalysisJob)
                .where(AnalysisJob.id == job_id, AnalysisJob.status == "queued")
                .values(status="running", worker=self.identity, started_at=now, heartbeat_at=now)
            )
        return job_id

    def _execute(self, job_id: int, progress: Progress | None) -> str | None:
        """Run a job this runner has claimed; returns its final status, None when it
        was taken away or its experiment deleted. Whatever goes wrong fails the job
        with the reason, at once; a stop request requeues it and propagates."""
        self._own(job_id)
        try:
            try:
                result = self._fit(job_id, progress)
                if result is None:  # the experiment was deleted meanwhile
                    return None
                return self._update(job_id, "finished", result=result, finished_at=utcnow())
            except WorkerStopping:
                self.release(job_id)
                raise
            except Exception as exc:
                log.exception("full-model job %s failed", job_id)
                return self._update(job_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=utcnow())
        finally:
            self._disown(job_id)

    def release(self, job_id: int) -> bool:
        """Put a job this runner holds back in the queue, as if never started."""
        with self.database.write() as session:
            changed = session.execute(
                update(AnalysisJob)
                .where(AnalysisJob.id == job_id, AnalysisJob.status == "running", AnalysisJob.worker == self.identity)
                .values(
                    status="queued",
                    worker=None,
                    started_at=None,
                    heartbeat_at=None,
                    snapshot=None,
                    progress_done=None,
                    progress_total=None,
                    sampling_started_at=None,
                    progress_at=None,
                )
            )
        return cast(CursorResult[Any], changed).rowcount == 1  # an UPDATE's result is a cursor's

    def _own(self, job_id: int) -> None:
        """Hold a job: its heartbeat is kept while held."""
        with self._lock:
            self._owned.add(job_id)
            if self._beater is None:
                self._beat_stop = threading.Event()
                self._beater = threading.Thread(
                    target=self._beat, args=(self._beat_stop,), name="expplatform-heartbeat", daemon=True
                )
                self._beater.start()

    def _disown(self, job_id: int) -> None:
        with self._lock:
            self._owned.discard(job_id)
            if self._owned or self._beater is None:
                return
            beater, self._beater = self._beater, None
            self._beat_stop.set()
        beater.join()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.job_heartbeat_seconds):
            self.heartbeat()

    def heartbeat(self) -> None:
        with self._lock:
            owned = list(self._owned)
        if not owned:
            return
        try:
            with self.database.write() as session:
                session.execute(
                    update(AnalysisJob)
                    .where(
                        AnalysisJob.id.in_(owned), AnalysisJob.worker == self.identity, AnalysisJob.status == "running"
                    )
                    .values(heartbeat_at=utcnow())
                )
        except Exception:
            log.warning("could not record the heartbeat of jobs %s", owned, exc_info=True)

    def _fit(self, job_id: int, progress: Progress | None) -> dict[str, Any] | None:
        with self.database.sessionmaker() as session:
            job = session.get(AnalysisJob, job_id)
            experiment = session.get(Experiment, job.experiment_id) if job is not None else None
            if job is None or experiment is None:
                return None
            params = FitParams.stored(job.params)
            prior, rule = experiment_settings(experiment)
            taken_at = utcnow()
            stats = experiment_stats(session, experiment)
            questions = {stage: q.key if q else None for stage, q in stage_questions(experiment).items()}
        total = params.chains * (params.draws + params.tune)
        self._update(job_id, "running", snapshot=snapshot_of(stats, taken_at, questions), progress_total=total)
        self.fitting = True
        try:
            if self.stopping.is_set():  # asked to stop before the fit began
                raise WorkerStopping("stop requested")
            recorder = ProgressRecorder(self, job_id, also=progress)
            return self.fit(stats, params, prior=prior, rule=rule, progress=recorder)
        finally:
            self.fitting = False

    def record_progress(self, job_id: int, done: int, total: int, *, first: bool) -> None:
        """Write the sampler's progress to the job (while this runner holds it); the
        first write also marks when sampling began. A failed write is logged, never
        raised: progress is for people watching, and must not fail the fit."""
        now = utcnow()
        values: dict[str, Any] = {"progress_done": done, "progress_total": total, "progress_at": now}
        if first:
            values["sampling_started_at"] = now
        try:
            with self.database.write() as session:
                mine = (AnalysisJob.id == job_id, AnalysisJob.status == "running", AnalysisJob.worker == self.identity)
                session.execute(update(AnalysisJob).where(*mine).values(**values))
        except Exception:
            log.warning("could not record the progress of job %s", job_id, exc_info=True)

    def _update(self, job_id: int, status: str, **values: Any) -> str | None:
        with self.database.write() as session:
            changed = session.execute(
                update(AnalysisJob)
                .where(AnalysisJob.id == job_id, AnalysisJob.status == "running", AnalysisJob.worker == self.identity)
                .values(status=status, heartbeat_at=utcnow(), **values)
            )
        if cast(CursorResult[Any], changed).rowcount != 1:  # an UPDATE's result is a cursor's
            log.warning("job %s was taken from this worker (marked failed as stale); its outcome is dropped", job_id)
            return None
        return status


class ProgressRecorder:
    """The sampler's progress callback: passes every call on to ``also`` (the command
    line's bar) and writes it to the job row at most every
    ``PROGRESS_INTERVAL_SECONDS``, and always the first and the last iteration, so the
    row ends at its total and the pages can tell compiling from sampling."""

    @staticmethod
    def clock() -> float:
        """Seconds on a monotonic clock (tests replace it to pretend time passes)."""
        return time.monotonic()

    def __init__(self, runner: JobRunner, job_id: int, *, also: Progress | None = None) -> None:
        self.runner, self.job_id, self.also = runner, job_id, also
        self._written_at: float | None = None  # the clock's time of the last write

    def __call__(self, done: int, total: int) -> None:
        if self.also is not None:
            self.also(done, total)
        now, last = self.clock(), self._written_at
        if last is not None and done < total and now - last < PROGRESS_INTERVAL_SECONDS:
            return
        self._written_at = now
        self.runner.record_progress(self.job_id, done, total, first=last is None)


def get_runner(app: Flask) -> JobRunner:
    return app.extensions["job_runner"]


def init_app(app: Flask) -> None:
    app.extensions["job_runner"] = JobRunner(app.extensions["db"])
