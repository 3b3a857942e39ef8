"""Full-model (PyMC) fits outside the request.

A fit takes from seconds to minutes, so a request only queues it: it writes an
``AnalysisJob`` row and hands the id to this worker's :class:`JobRunner`, whose one
background thread runs fits one at a time (a 2-core machine cannot afford more) while
a second thread touches the heartbeat of every job the worker holds, queued or
running. The database is the only shared state, so it is safe with any number of
gunicorn workers and processes:

- a job is claimed with a conditional ``UPDATE ... WHERE status = 'queued'``, and
  finished with ``... WHERE status = 'running' AND worker = <me>``: of two workers
  racing for one row only one gets it, and a worker that was given up for dead never
  overwrites the verdict;
- a job whose heartbeat is older than ``job_timeout_seconds`` belongs to a worker that
  died (a restart, a crash, an OOM kill); whoever looks at the jobs marks it failed,
  and an editor may run the fit again (a new job; the failed one stays as history);
- one active job per experiment: queueing while one is queued or running returns it.

The result is stored as JSON with the data snapshot it was fitted on (when, and the
counts), since the live data keeps moving while the report shows the fit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from flask import Flask
from sqlalchemy import select, update

from analysis.types import DecisionRule, ExperimentStats, Prior

from .aggregation import experiment_stats
from .config import Settings
from .db import Database
from .errors import Conflict, MalformedRequest
from .experiment_settings import experiment_settings
from .job_records import ACTIVE, reap_stale
from .models import AnalysisJob, Experiment, utcnow

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "finished", "failed")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FitParams:
    """Sampling options of one fit, bounded so one request cannot hold a worker for hours."""

    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 0

    LIMITS = {"draws": (100, 10_000), "tune": (100, 10_000), "chains": (1, 8), "seed": (0, 2**32 - 1)}

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


def snapshot_of(stats: ExperimentStats, taken_at: datetime) -> dict[str, Any]:
    """The counts a fit saw, to show next to its result."""
    return {
        "taken_at": taken_at.isoformat(),
        "exposed": {v: stats.cells[stats.stages[0]][v].exposed for v in stats.variants},
        "converted": {s: {v: stats.cells[s][v].converted for v in stats.variants} for s in stats.stages},
        "rated": {s: {v: sum(stats.cells[s][v].ratings) for v in stats.variants} for s in stats.stages},
    }


# -- queueing (reading the rows: job_records.py) ----------------------------------------


def queue_fit(
    database: Database, experiment_key: str, actor: str, params: FitParams, *, worker: str
) -> tuple[AnalysisJob, bool]:
    """Queue a fit held by ``worker``, or return the experiment's active one.

    Returns (job, created). The experiment row is locked (PostgreSQL; SQLite's write
    transaction is exclusive anyway) so two simultaneous requests make one job."""
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
        job = AnalysisJob(
            experiment_id=experiment.id,
            status="queued",
            requested_by=actor,
            params=asdict(params),
            created_at=now,
            heartbeat_at=now,
            worker=worker,
        )
        session.add(job)
        session.flush()
        return job, True


# -- running -----------------------------------------------------------------------------


class JobRunner:
    """This worker's fits: one at a time in one background thread, plus a heartbeat
    thread while it holds any job. Both exist only while there is work, so nothing
    runs in a forking master or lingers after the last fit."""

    def __init__(self, database: Database, fit: Fit = full_model_fit) -> None:
        self.database = database
        self.fit = fit
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._cond = threading.Condition()
        self._pending: deque[int] = deque()
        self._owned: set[int] = set()
        self._working = False
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._pid = os.getpid()

    @property
    def settings(self) -> Settings:
        return self.database.settings

    def queue(self, experiment_key: str, actor: str, params: FitParams) -> tuple[AnalysisJob, bool]:
        job, created = queue_fit(self.database, experiment_key, actor, params, worker=self.identity)
        if created:
            self.submit(job.id)
        return job, created

    def run_here(
        self, experiment_key: str, actor: str, params: FitParams, progress: Progress | None = None
    ) -> AnalysisJob:
        """Queue a fit and run it in the calling thread (the command line), heartbeats
        included; 409 when the experiment already has an active fit."""
        job, created = queue_fit(self.database, experiment_key, actor, params, worker=self.identity)
        if not created:
            raise Conflict("fit_active", f"A full-model fit (#{job.id}) is already {job.status} for {experiment_key}.")
        self.run(job.id, progress)
        with self.database.sessionmaker() as session:
            return session.get(AnalysisJob, job.id)

    def submit(self, job_id: int) -> None:
        """Run a job this worker queued, after the ones before it, in the background."""
        with self._cond:
            if self._pid != os.getpid():  # forked with the app: the parent's threads are not here
                self._pid, self._working, self._beater = os.getpid(), False, None
                self._pending.clear()
                self._owned.clear()
            self._own(job_id)
            self._pending.append(job_id)
            if not self._working:
                self._working = True
                threading.Thread(target=self._work, name="expplatform-fits", daemon=True).start()

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted job has been run (for tests and the CLI)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._working, timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._working = False
                    self._cond.notify_all()
                    return
                job_id = self._pending.popleft()
            try:
                self.run(job_id)
            except Exception:
                log.exception("full-model job %s could not be run", job_id)

    def _own(self, job_id: int) -> None:
        """Hold a job: its heartbeat is kept while held. Call with ``_cond`` held."""
        self._owned.add(job_id)
        if self._beater is None:
            self._beat_stop = threading.Event()
            self._beater = threading.Thread(
                target=self._beat, args=(self._beat_stop,), name="expplatform-heartbeat", daemon=True
            )
            self._beater.start()

    def _disown(self, job_id: int) -> None:
        with self._cond:
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
        with self._cond:
            owned = list(self._owned)
        if not owned:
            return
        try:
            with self.database.write() as session:
                session.execute(
                    update(AnalysisJob)
                    .where(
                        AnalysisJob.id.in_(owned), AnalysisJob.worker == self.identity, AnalysisJob.status.in_(ACTIVE)
                    )
                    .values(heartbeat_at=utcnow())
                )
        except Exception:
            log.warning("could not record the heartbeat of jobs %s", owned, exc_info=True)

    def claim(self, job_id: int) -> bool:
        """Take a queued job for this worker; False when someone else has it or it was failed."""
        now = utcnow()
        with self.database.write() as session:
            claimed = session.execute(
                update(AnalysisJob)
                .where(AnalysisJob.id == job_id, AnalysisJob.status == "queued")
                .values(status="running", worker=self.identity, started_at=now, heartbeat_at=now)
            )
        return claimed.rowcount == 1

    def run(self, job_id: int, progress: Progress | None = None) -> str | None:
        """Claim and run one job in this thread (the background one, or the CLI's);
        returns its final status, None when it was not ours to run. Whatever goes
        wrong once it is claimed fails the job with the reason, at once."""
        with self._cond:
            self._own(job_id)
        try:
            if not self.claim(job_id):
                return None
            try:
                result = self._fit(job_id, progress)
                if result is None:  # the experiment was deleted meanwhile
                    return None
                return self._update(job_id, "finished", result=result, finished_at=utcnow())
            except Exception as exc:
                log.exception("full-model job %s failed", job_id)
                return self._update(job_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=utcnow())
        finally:
            self._disown(job_id)

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
        self._update(job_id, "running", snapshot=snapshot_of(stats, taken_at))
        return self.fit(stats, params, prior=prior, rule=rule, progress=progress)

    def _update(self, job_id: int, status: str, **values: Any) -> str | None:
        with self.database.write() as session:
            changed = session.execute(
                update(AnalysisJob)
                .where(AnalysisJob.id == job_id, AnalysisJob.status == "running", AnalysisJob.worker == self.identity)
                .values(status=status, heartbeat_at=utcnow(), **values)
            )
        if changed.rowcount != 1:
            log.warning("job %s was taken from this worker (marked failed as stale); its outcome is dropped", job_id)
            return None
        return status


def get_runner(app: Flask) -> JobRunner:
    return app.extensions["job_runner"]


def init_app(app: Flask) -> None:
    app.extensions["job_runner"] = JobRunner(app.extensions["db"])
