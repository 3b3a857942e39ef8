"""Full-model jobs: queued by a request (which runs nothing), run oldest first, one at
a time, by a worker with heartbeats, claimed by exactly one worker, requeued when
their worker is stopped, failed when it dies, and runnable again. The PyMC fit is
replaced by a fake here (its own tests live with the analysis); one test at the end
runs the real model on a small data set. The ``expplatform worker`` process itself is
tested in ``test_worker.py``."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, update

from analysis.types import DecisionRule, Prior
from expplatform.aggregation import experiment_stats
from expplatform.auth import create_user
from expplatform.db import Base
from expplatform.errors import MalformedRequest
from expplatform.ingest import record_events
from expplatform.job_records import DEAD_WORKER, recent_jobs
from expplatform.jobs import FitParams, JobRunner, get_runner, snapshot_of
from expplatform.models import AnalysisJob, utcnow

from .conftest import make_test_app, sign_in
from .events_support import at, expose, iso, make_experiment

WAIT = 30  # seconds: an upper bound for a fake fit, never a synchronisation delay


@pytest.fixture
def fast_app(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, job_heartbeat_seconds=0.01, job_timeout_seconds=60)
    yield app
    app.extensions["db"].engine.dispose()


@pytest.fixture
def experiment(fast_app):
    with fast_app.extensions["db"].write() as session:
        experiment = make_experiment(session, "checkout")
        experiment.prior, experiment.decision = {"conversion_alpha": 2.0}, {"ship_probability": 0.9}
        for i in range(30):
            expose(session, experiment, f"c{i}", "control" if i % 3 else "treatment")
        expose(session, experiment, "qa", "treatment", forced=True)
    # Some outcomes: the full model is refused on an experiment without any.
    conversion = {"customer_id": "c1", "stage": "purchase", "type": "conversion", "timestamp": iso(at(60))}
    database, settings = fast_app.extensions["db"], fast_app.extensions["settings"]
    result = record_events(database, [{"event_id": "e1", **conversion}], settings)
    assert result.accepted == 1, result.rejected
    return experiment


class FakeFit:
    """Records the fits it runs; can be held inside a fit until released."""

    def __init__(self, *, hold: bool = False, fail: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.running = 0
        self.max_running = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, stats, params, *, prior, rule, progress):
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.entered.set()
        try:
            assert self.release.wait(WAIT), "the test never released the fit"
            self.calls.append((stats, params, prior, rule))
            if progress is not None:
                progress(1, 1)
            if self.fail is not None:
                raise self.fail
            return {"engine": "fake", "draws": params.draws, "exposed": stats.cells[stats.stages[0]]["control"].exposed}
        finally:
            with self._lock:
                self.running -= 1


def runner_with(app, fit) -> JobRunner:
    runner = get_runner(app)
    runner.fit = fit
    return runner


def in_background(runner: JobRunner) -> threading.Thread:
    """Run the queued jobs in another thread, as a worker process would."""
    thread = threading.Thread(target=runner.run_pending, name="test-worker")
    thread.start()
    return thread


def finish(thread: threading.Thread) -> None:
    thread.join(WAIT)
    assert not thread.is_alive()


def job_row(app, job_id) -> AnalysisJob:
    with app.extensions["db"].sessionmaker() as session:
        return session.get(AnalysisJob, job_id)


def test_a_request_only_queues_and_a_worker_runs_it_storing_result_and_snapshot(fast_app, experiment):
    fit = FakeFit()
    runner = runner_with(fast_app, fit)
    threads_before = {thread.name for thread in threading.enumerate()}
    job, created = runner.queue("checkout", "user:ed@example.com", FitParams(draws=200, tune=100, chains=2, seed=7))
    assert created and job.status == "queued" and job.worker is None and job.started_at is None
    # Queueing starts nothing: a served app never runs a fit.
    assert {thread.name for thread in threading.enumerate()} == threads_before
    assert job_row(fast_app, job.id).status == "queued" and not fit.calls

    assert runner.run_pending() == 1
    row = job_row(fast_app, job.id)
    assert row.status == "finished", row.error
    assert row.worker == runner.identity
    assert row.result == {"engine": "fake", "draws": 200, "exposed": 20}
    assert row.requested_by == "user:ed@example.com"
    assert row.params == {"draws": 200, "tune": 100, "chains": 2, "seed": 7}
    assert row.started_at is not None and row.finished_at >= row.started_at
    with fast_app.extensions["db"].sessionmaker() as session:
        stats = experiment_stats(session, session.merge(experiment))
    # The snapshot is what the fit saw: forced customers are not in it.
    assert row.snapshot["exposed"] == {"control": 20, "treatment": 10}
    assert row.snapshot["converted"] == snapshot_of(stats, utcnow())["converted"]
    assert row.snapshot["taken_at"] >= row.started_at.isoformat()[:19]
    ((stats_seen, params_seen, prior, rule),) = fit.calls
    assert stats_seen == stats and params_seen.draws == 200
    assert prior == Prior(conversion_alpha=2.0) and rule == DecisionRule(ship_probability=0.9)  # the experiment's own
    assert runner.run_pending() == 0  # nothing left


def test_the_api_queues_without_running_anything(fast_app, experiment):
    """The web's side: a POST writes a queued job and starts no thread."""
    fit = FakeFit()
    runner_with(fast_app, fit)
    client = fast_app.test_client()
    with fast_app.extensions["db"].write() as session:
        user = create_user(session, "ed@example.com", "correct horse battery", "editor")
    sign_in(client, fast_app, user)
    threads_before = {thread.name for thread in threading.enumerate()}
    response = client.post("/api/v1/experiments/checkout/full-model", json={"draws": 100})
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert {thread.name for thread in threading.enumerate()} == threads_before
    assert client.get(response.headers["Location"]).get_json()["status"] == "queued"
    assert not fit.calls
    assert get_runner(fast_app).run_pending() == 1
    assert client.get(response.headers["Location"]).get_json()["status"] == "finished"


def test_queueing_while_a_fit_is_active_returns_the_active_job(fast_app, experiment):
    fit = FakeFit(hold=True)
    runner = runner_with(fast_app, fit)
    first, created = runner.queue("checkout", "user:a", FitParams())
    queued_again, _ = runner.queue("checkout", "user:b", FitParams(draws=500))
    assert queued_again.id == first.id  # still queued: the same one
    worker = in_background(runner)
    assert fit.entered.wait(WAIT)
    again, created_again = runner.queue("checkout", "user:b", FitParams(draws=500))
    assert created and not created_again and again.id == first.id
    assert job_row(fast_app, first.id).status == "running"
    fit.release.set()
    finish(worker)
    with fast_app.extensions["db"].sessionmaker() as session:
        assert session.scalars(select(AnalysisJob.status)).all() == ["finished"]


def test_a_worker_runs_one_fit_at_a_time_oldest_first(fast_app, experiment):
    with fast_app.extensions["db"].write() as session:
        make_experiment(session, "search")
    fit = FakeFit(hold=True)
    runner = runner_with(fast_app, fit)
    first, _ = runner.queue("checkout", "user:a", FitParams())
    second, _ = runner.queue("search", "user:a", FitParams())
    worker = in_background(runner)
    assert fit.entered.wait(WAIT)
    assert job_row(fast_app, first.id).status == "running"
    assert job_row(fast_app, second.id).status == "queued"
    fit.release.set()
    finish(worker)
    assert fit.max_running == 1
    assert [job_row(fast_app, j.id).status for j in (first, second)] == ["finished", "finished"]
    assert job_row(fast_app, second.id).started_at >= job_row(fast_app, first.id).finished_at


def test_a_failing_fit_marks_the_job_failed_with_the_reason(fast_app, experiment):
    runner = runner_with(fast_app, FakeFit(fail=RuntimeError("sampler exploded")))
    job, _ = runner.queue("checkout", "user:a", FitParams())
    assert runner.run_pending() == 1
    row = job_row(fast_app, job.id)
    assert row.status == "failed" and row.error == "RuntimeError: sampler exploded" and row.result is None
    # ...and the runner survives to run the next one.
    runner.fit = FakeFit()
    job2, created = runner.queue("checkout", "user:a", FitParams())
    assert created and runner.run_pending() == 1
    assert job_row(fast_app, job2.id).status == "finished"


def test_a_result_that_cannot_be_stored_fails_the_job(fast_app, experiment):
    runner = runner_with(fast_app, lambda stats, params, **kwargs: {"draws": object()})
    job, _ = runner.queue("checkout", "user:a", FitParams())
    assert runner.run_pending() == 1
    row = job_row(fast_app, job.id)
    assert row.status == "failed" and "is not JSON serializable" in row.error  # SQLite and PostgreSQL word it apart


def test_a_failure_before_the_fit_fails_the_job_too(fast_app, experiment, monkeypatch):
    def broken(session, experiment):
        raise RuntimeError("statistics unavailable")

    monkeypatch.setattr("expplatform.jobs.experiment_stats", broken)
    runner = runner_with(fast_app, FakeFit())
    job, _ = runner.queue("checkout", "user:a", FitParams())
    assert runner.run_pending() == 1
    row = job_row(fast_app, job.id)
    assert (row.status, row.error, row.snapshot) == ("failed", "RuntimeError: statistics unavailable", None)


def test_heartbeats_keep_the_job_of_a_live_worker_fresh(fast_app, experiment):
    fit = FakeFit(hold=True)
    runner = runner_with(fast_app, fit)
    beat = threading.Event()
    original = runner.heartbeat

    def heartbeat():
        original()
        beat.set()

    runner.heartbeat = heartbeat
    job, _ = runner.queue("checkout", "user:a", FitParams())
    worker = in_background(runner)
    assert fit.entered.wait(WAIT)
    started = job_row(fast_app, job.id).heartbeat_at
    for _ in range(2):  # the second beat began after the first ended, so after `started` was read
        beat.clear()
        assert beat.wait(WAIT)
    assert job_row(fast_app, job.id).heartbeat_at > started
    fit.release.set()
    finish(worker)
    assert not [t for t in threading.enumerate() if t.name == "expplatform-heartbeat"]  # beats only while fitting


def test_a_stop_request_puts_the_job_in_progress_back_in_the_queue(database_url, tmp_path, fast_app, experiment):
    """What SIGTERM does to ``expplatform worker``: its handler calls ``request_stop``
    in the fitting thread, which raises into the fit; here the fit raises it itself."""
    runner = get_runner(fast_app)

    def interrupted(stats, params, **kwargs):
        assert runner.fitting
        runner.request_stop("SIGTERM")
        raise AssertionError("request_stop should have raised")

    runner.fit = interrupted
    job, _ = runner.queue("checkout", "user:a", FitParams())
    assert runner.serve(poll_seconds=WAIT) == 0  # returns at once: it was asked to stop
    row = job_row(fast_app, job.id)
    assert (row.status, row.worker, row.started_at, row.snapshot, row.result) == ("queued", None, None, None, None)
    # The next worker runs it.
    other_app = make_test_app(database_url, tmp_path / "other")
    try:
        other = runner_with(other_app, FakeFit())
        assert other.run_pending() == 1
        assert job_row(fast_app, job.id).status == "finished" and job_row(fast_app, job.id).worker == other.identity
    finally:
        other_app.extensions["db"].engine.dispose()


def test_a_stop_requested_between_jobs_ends_the_loop_without_starting_another(fast_app, experiment):
    fit = FakeFit()
    runner = runner_with(fast_app, fit)
    runner.queue("checkout", "user:a", FitParams())
    runner.request_stop("SIGINT")  # not fitting: nothing raised, the loop just ends
    assert runner.serve(poll_seconds=WAIT) == 0 and not fit.calls


def _age(app, job_id, seconds):
    with app.extensions["db"].write() as session:
        session.execute(
            update(AnalysisJob)
            .where(AnalysisJob.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_a_dead_workers_job_is_failed_when_looked_at_and_can_run_again(fast_app, experiment):
    database = fast_app.extensions["db"]
    # A job left "running" by a worker that no longer exists (no thread beats for it).
    with database.write() as session:
        session.add(
            AnalysisJob(
                experiment_id=experiment.id,
                status="running",
                requested_by="user:a",
                params={},
                worker="gone:1:dead",
                started_at=utcnow(),
                heartbeat_at=utcnow(),
            )
        )
    with database.sessionmaker() as session:
        (job,) = recent_jobs(database, session, session.merge(experiment))
        assert job.status == "running"  # fresh heartbeat: not judged yet
    _age(fast_app, job.id, 61)
    with database.sessionmaker() as session:
        (job,) = recent_jobs(database, session, session.merge(experiment))
    assert job.status == "failed" and job.error == DEAD_WORKER and job.finished_at is not None

    runner = runner_with(fast_app, FakeFit())
    again, created = runner.queue("checkout", "user:a", FitParams())
    assert created and again.id != job.id
    assert runner.run_pending() == 1
    assert job_row(fast_app, again.id).status == "finished"
    assert job_row(fast_app, job.id).status == "failed"  # kept as history


def test_a_queued_job_waits_for_a_worker_however_long(fast_app, experiment):
    database = fast_app.extensions["db"]
    with database.write() as session:
        session.add(
            AnalysisJob(
                experiment_id=experiment.id,
                status="queued",
                requested_by="user:a",
                params={},
                created_at=utcnow() - timedelta(hours=1),
            )
        )
    with database.sessionmaker() as session:
        (job,) = recent_jobs(database, session, session.merge(experiment))
    assert job.status == "queued"  # no worker has it, so none can have died
    again, created = get_runner(fast_app).queue("checkout", "user:b", FitParams())
    assert again.id == job.id and not created
    assert runner_with(fast_app, FakeFit()).run_pending() == 1
    assert job_row(fast_app, job.id).status == "finished"


def test_a_worker_given_up_for_dead_cannot_overwrite_the_verdict(fast_app, experiment):
    database = fast_app.extensions["db"]
    fit = FakeFit(hold=True)
    runner = runner_with(fast_app, fit)
    job, _ = runner.queue("checkout", "user:a", FitParams())
    worker = in_background(runner)
    assert fit.entered.wait(WAIT)
    # The worker stalls long enough to be judged dead...
    with database.write() as session:
        session.execute(update(AnalysisJob).values(status="failed", error=DEAD_WORKER))
    fit.release.set()
    finish(worker)
    row = job_row(fast_app, job.id)
    assert row.status == "failed" and row.result is None  # ...so its late result is dropped


def _race(runners, action):
    barrier = threading.Barrier(len(runners))
    outcomes: list = []

    def run(runner):
        barrier.wait()
        outcomes.append(action(runner))

    threads = [threading.Thread(target=run, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_only_one_of_two_workers_claims_a_job(database_url, tmp_path, fast_app, experiment):
    other_app = make_test_app(database_url, tmp_path / "other")
    try:
        workers = [get_runner(fast_app), get_runner(other_app)]
        assert workers[0].identity != workers[1].identity
        with fast_app.extensions["db"].write() as session:
            job = AnalysisJob(experiment_id=experiment.id, status="queued", requested_by="user:a", params={})
            session.add(job)
        for attempt in range(5):  # several rounds, each a fresh race for a queued row
            with fast_app.extensions["db"].write() as session:
                session.execute(update(AnalysisJob).where(AnalysisJob.id == job.id).values(status="queued"))
            outcomes = _race(workers, lambda runner: runner.claim_next())
            assert outcomes.count(job.id) == 1 and outcomes.count(None) == 1, attempt
            row = job_row(fast_app, job.id)
            assert row.status == "running" and row.worker in {w.identity for w in workers}
    finally:
        other_app.extensions["db"].engine.dispose()


def test_two_workers_claim_two_queued_jobs_one_each(database_url, tmp_path, fast_app, experiment):
    """PostgreSQL: the second claimer skips the row the first has locked (SKIP LOCKED)
    and takes the next; SQLite: the write lock serialises the two claims."""
    other_app = make_test_app(database_url, tmp_path / "other")
    try:
        with fast_app.extensions["db"].write() as session:
            other = make_experiment(session, "search")
            for experiment_id in (experiment.id, other.id):
                session.add(AnalysisJob(experiment_id=experiment_id, status="queued", requested_by="u", params={}))
        outcomes = _race([get_runner(fast_app), get_runner(other_app)], lambda runner: runner.claim_next())
        with fast_app.extensions["db"].sessionmaker() as session:
            rows = session.scalars(select(AnalysisJob).order_by(AnalysisJob.id)).all()
        assert sorted(outcomes) == [row.id for row in rows]
        assert {row.status for row in rows} == {"running"} and len({row.worker for row in rows}) == 2
    finally:
        other_app.extensions["db"].engine.dispose()


@pytest.mark.parametrize(
    "values, field",
    [
        ({"draws": 5}, "draws"),
        ({"draws": "many"}, "draws"),
        ({"chains": 99}, "chains"),
        ({"tune": 1.5}, "tune"),
        ({"seed": -1}, "seed"),
        ({"cores": 4}, "cores"),
    ],
)
def test_fit_options_are_validated(fast_app, values, field):
    with pytest.raises(MalformedRequest) as caught:
        FitParams.parse(values, fast_app.extensions["settings"])
    assert set(caught.value.fields) == {field}


def test_fit_options_default_to_the_settings(database_url, tmp_path):
    app = make_test_app(database_url, tmp_path, full_model_draws=300, full_model_chains=2)
    try:
        params = FitParams.parse({"seed": "9", "tune": ""}, app.extensions["settings"])
        assert params == FitParams(draws=300, tune=1000, chains=2, seed=9)
    finally:
        app.extensions["db"].engine.dispose()


@pytest.mark.slow
def test_the_real_full_model_runs_in_the_foreground_with_progress(tmp_path):
    """PyMC end to end, small, as the CLI runs it: the stored result has the conjugate
    result's shape plus diagnostics, with the snapshot; progress reached its total.
    On SQLite only: the fit itself never touches the database."""
    url = f"sqlite:///{tmp_path / 'fit.sqlite3'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    app = make_test_app(url, tmp_path)
    try:
        with app.extensions["db"].write() as session:
            experiment = make_experiment(session, "checkout", stages=("cart", "purchase"))
            for i in range(400):
                expose(session, experiment, f"c{i}", "control" if i % 2 else "treatment")
        seen: list[tuple[int, int]] = []
        job = get_runner(app).run_here(
            "checkout",
            "cli",
            FitParams(draws=200, tune=200, chains=2, seed=3),
            progress=lambda done, total: seen.append((done, total)),
        )
        assert job.status == "finished", job.error
        assert job.result["method"] == "hierarchical" and job.result["draws"] == 400
        assert [s["stage"] for s in job.result["stages"]] == ["cart", "purchase"]
        assert {"r_hat_max", "ess_bulk_min", "divergences", "passed"} <= set(job.result["diagnostics"])
        assert job.snapshot["exposed"] == {"control": 200, "treatment": 200}
        assert seen[-1] == (800, 800) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    finally:
        app.extensions["db"].engine.dispose()


@pytest.mark.slow
def test_the_real_full_model_fits_each_stage_on_its_own_questions_scale(tmp_path):
    """PyMC end to end on an experiment whose stages ask a 1-5 question, none, and a
    0-10 one: each stage of the stored result has its scale and only its metrics, and
    the snapshot says which question and scale each stage had."""
    from .reports_support import MEASURED, QUESTION_STAGES, seed_questions

    url = f"sqlite:///{tmp_path / 'fit.sqlite3'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    app = make_test_app(url, tmp_path)
    try:
        seed_questions(app, app.extensions["db"], via="rows", customers=120)
        job = get_runner(app).run_here("mixed", "cli", FitParams(draws=200, tune=200, chains=2, seed=3))
        assert job.status == "finished", job.error
        assert job.result["method"] == "hierarchical"
        stages = {s["stage"]: s for s in job.result["stages"]}
        assert list(stages) == list(QUESTION_STAGES)
        scales = {
            "browse": None,
            "purchase": {"min": 1, "max": 5},
            "retention": None,
            "advocacy": {"min": 0, "max": 10},
        }
        assert {s: stages[s]["scale"] for s in QUESTION_STAGES} == scales
        assert {s: [m["metric"] for m in stages[s]["metrics"]] for s in QUESTION_STAGES} == {
            "browse": ["conversion"],
            "purchase": ["conversion", "mean_rating", "top_box"],
            "retention": ["conversion"],
            "advocacy": ["conversion", "mean_rating", "top_box", "nps"],
        }
        assert job.snapshot["scales"] == scales
        assert job.snapshot["questions"] == {s: MEASURED.get(s) for s in QUESTION_STAGES}
        assert job.snapshot["rated"]["browse"] == {"control": 0, "treatment": 0}
        assert job.snapshot["rated"]["advocacy"] == {"control": 60, "treatment": 60}
    finally:
        app.extensions["db"].engine.dispose()
