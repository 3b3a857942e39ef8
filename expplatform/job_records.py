"""Reading full-model job rows, and failing those whose worker died.

Reports show an experiment's latest fit and the API lists its fits; neither runs
one. They read the rows here, so that they need nothing of ``jobs`` (the runner,
its threads and the PyMC fit), which queues through the same reaping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from .config import Settings
from .db import Database
from .models import AnalysisJob, Experiment, utcnow

ACTIVE = ("queued", "running")
DEAD_WORKER = "The worker running this fit stopped responding (restarted or crashed); run it again."


def _stale_condition(now: datetime, timeout: float) -> tuple[Any, ...]:
    """A running job whose worker has not beaten for ``timeout`` seconds. A queued job is
    nobody's until a worker claims it, so it waits however long that takes."""
    return AnalysisJob.status == "running", AnalysisJob.heartbeat_at < now - timedelta(seconds=timeout)


def reap_stale(session: Session, settings: Settings, *, now: datetime | None = None) -> int:
    """Mark failed every running job whose worker stopped beating; returns how many."""
    now = now or utcnow()
    result = session.execute(
        update(AnalysisJob)
        .where(*_stale_condition(now, settings.job_timeout_seconds))
        .values(status="failed", error=DEAD_WORKER, finished_at=now)
    )
    return cast(CursorResult[Any], result).rowcount  # an UPDATE's result is a cursor's


def recent_jobs(
    database: Database, session: Session, experiment: Experiment, *, limit: int = 5, now: datetime | None = None
) -> list[AnalysisJob]:
    """An experiment's latest jobs, newest first, dead workers' jobs marked failed.

    Looking is a read; only when a stale job is seen does it take a write transaction
    to fail it (conditionally, so a heartbeat that just arrived still wins)."""
    now = now or utcnow()
    query = select(AnalysisJob).where(AnalysisJob.experiment_id == experiment.id)
    stale = session.scalar(query.where(*_stale_condition(now, database.settings.job_timeout_seconds)).limit(1))
    if stale is not None:
        with database.write() as writer:
            reap_stale(writer, database.settings, now=now)
        session.rollback()  # end the read snapshot (SQLite WAL keeps it) to see the verdict
    fresh = query.order_by(AnalysisJob.id.desc()).limit(limit).execution_options(populate_existing=True)
    return list(session.scalars(fresh))


def get_job(session: Session, experiment: Experiment, job_id: int) -> AnalysisJob | None:
    job = session.get(AnalysisJob, job_id, populate_existing=True)
    return job if job is not None and job.experiment_id == experiment.id else None


@dataclass(frozen=True)
class JobProgress:
    """How far a fit is, from what its worker wrote: sampler iterations (tuning
    included, every chain) done of the total, seconds since the worker took it, and
    the seconds left at the rate sampled so far (None until sampling began, and once
    the job has ended)."""

    done: int
    total: int
    elapsed_seconds: float
    eta_seconds: float | None

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "draws_done": self.done,
            "draws_total": self.total,
            "elapsed_seconds": round(self.elapsed_seconds, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
        }


def job_progress(job: AnalysisJob, *, now: datetime | None = None) -> JobProgress | None:
    """The progress of a job a worker has taken; None while it is queued (or for a job
    from before progress was recorded)."""
    if job.started_at is None or job.progress_total is None:
        return None
    now = now or utcnow()
    done, total = job.progress_done or 0, job.progress_total
    ended = job.finished_at
    elapsed = ((ended or now) - job.started_at).total_seconds()
    eta = None
    if ended is None and job.status == "running" and done and job.sampling_started_at and job.progress_at:
        sampled = (job.progress_at - job.sampling_started_at).total_seconds()
        if sampled > 0:
            since_written = (now - job.progress_at).total_seconds()
            eta = max(0.0, (total - done) * sampled / done - since_written)
    return JobProgress(done=done, total=total, elapsed_seconds=max(0.0, elapsed), eta_seconds=eta)
