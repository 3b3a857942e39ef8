"""``expplatform worker``: full-model fits run in their own process, not in the web.

A fit queued through the API by gunicorn survives the web worker that queued it being
killed and restarted, and a separate ``expplatform worker --once`` runs it; the result
is then visible through the API. A worker stopped by SIGTERM in the middle of a fit
puts the job back in the queue. Real processes, real PyMC (a small fit), on SQLite and
on PostgreSQL when it is configured.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest
from sqlalchemy import select

from expplatform.ingest import record_events
from expplatform.jobs import FitParams, get_runner
from expplatform.models import AnalysisJob

from .conftest import BACKENDS, drop_postgres_schema, fresh_postgres_schema, make_test_app, process_tag
from .events_support import at, expose, iso, make_experiment
from .server_support import START_SECONDS, STOP_SECONDS, cli, gunicorn, http, service_env, wait_for

pytestmark = pytest.mark.slow  # real processes and a real (small) PyMC fit

FIT_SECONDS = 600  # an upper bound for a 100 + 100 draw fit (PyMC compiling) on a loaded machine
JOB_TIMEOUT = "1"  # seconds: a job held by a dead process would be failed almost at once


@pytest.fixture(params=BACKENDS)
def migrated_url(request, tmp_path) -> Iterator[str]:
    """A database migrated by ``expplatform db upgrade``, as a deployment has it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.sqlite3'}"
    else:
        schema = f"w_{process_tag()}"
        url = fresh_postgres_schema(schema)
    upgraded = cli(service_env(url, tmp_path / "instance"), "db", "upgrade", cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    yield url
    if request.param != "sqlite":
        drop_postgres_schema(schema)


@pytest.fixture
def seeded(migrated_url, tmp_path) -> str:
    """A running experiment with 40 exposed customers; returns an admin API key."""
    app = make_test_app(migrated_url, tmp_path / "seeding")
    try:
        with app.extensions["db"].write() as session:
            experiment = make_experiment(session, "checkout", stages=("cart", "purchase"))
            for i in range(40):
                expose(session, experiment, f"c{i}", "control" if i % 2 else "treatment")
        # Some outcomes: the full model is refused on an experiment without any.
        when = iso(at(60))
        conversions = [
            {
                "event_id": f"e{i}",
                "customer_id": f"c{i}",
                "stage": "cart",
                "type": "conversion",
                "timestamp": when,
            }
            for i in range(0, 40, 3)
        ]
        result = record_events(app.extensions["db"], conversions, app.extensions["settings"])
        assert result.accepted == len(conversions), result.rejected
    finally:
        app.extensions["db"].engine.dispose()
    created = cli(
        service_env(migrated_url, tmp_path / "instance"),
        "keys",
        "create",
        "--scope",
        "admin",
        "--name",
        "t",
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


def test_a_fit_queued_from_the_web_survives_a_web_worker_restart_and_is_run_by_the_worker(
    migrated_url, seeded, tmp_path
):
    env = service_env(migrated_url, tmp_path / "instance", job_timeout_seconds=JOB_TIMEOUT, job_heartbeat_seconds="0.2")
    with gunicorn([sys.executable, "-m", "gunicorn"], env, tmp_path) as server:
        base = f"{server.url}/api/v1/experiments/checkout/full-model"
        queued = http("POST", base, key=seeded, body={"draws": 100, "tune": 100, "chains": 1, "seed": 5})
        assert queued.status == 202, queued.body
        job = queued.json()
        assert job["status"] == "queued"
        location = urljoin(base, queued.headers["Location"])
        queued_at = time.monotonic()

        # The web worker that queued it dies and gunicorn boots another.
        (web_worker,) = server.worker_pids()
        os.kill(web_worker, signal.SIGKILL)
        wait_for(lambda: server.worker_pids() not in (set(), {web_worker}) and server.healthy(), "a new web worker")
        # Past the job timeout, a job a dead worker held would be judged failed by now.
        wait_for(lambda: time.monotonic() - queued_at > float(JOB_TIMEOUT), "the job timeout to pass")
        # Nobody held it, so nothing died with it: still queued, and nothing ran it in the web.
        waiting = http("GET", location, key=seeded).json()
        assert waiting["status"] == "queued" and waiting["started_at"] is None

        worker = cli(env, "worker", "--once", cwd=tmp_path, timeout=FIT_SECONDS)
        assert worker.returncode == 0, worker.stderr
        assert "stopped after 1 fit(s)" in worker.stderr

        done = http("GET", location, key=seeded).json()
        assert done["status"] == "finished", done["error"]
        assert done["result"]["method"] == "hierarchical" and done["result"]["draws"] == 100
        assert done["snapshot"]["exposed"] == {"control": 20, "treatment": 20}
        report = http("GET", f"{server.url}/api/v1/experiments/checkout/report", key=seeded).json()
        assert report["full_model"]["id"] == job["id"] and report["full_model"]["status"] == "finished"
        # Nothing left for a worker to do.
        again = cli(env, "worker", "--once", cwd=tmp_path)
        assert again.returncode == 0 and "stopped after 0 fit(s)" in again.stderr


def _job(app) -> AnalysisJob:
    with app.extensions["db"].sessionmaker() as session:
        return session.scalars(select(AnalysisJob)).one()


def test_sigterm_in_the_middle_of_a_fit_puts_the_job_back_in_the_queue(migrated_url, seeded, tmp_path):
    env = service_env(migrated_url, tmp_path / "instance", job_heartbeat_seconds="0.2")
    app = make_test_app(migrated_url, tmp_path / "queueing")
    try:
        long_fit = FitParams(draws=10_000, tune=10_000, chains=8, seed=1)  # minutes: it will not finish first
        job, created = get_runner(app).queue("checkout", "user:a", long_fit)
        assert created
        worker = subprocess.Popen(
            [sys.executable, "-m", "expplatform.cli", "worker", "--poll-seconds", "0.1"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: _job(app).snapshot is not None, "the worker to start the fit", seconds=START_SECONDS)
            worker.send_signal(signal.SIGTERM)
            _out, stderr = worker.communicate(timeout=STOP_SECONDS)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert worker.returncode == 0, stderr
        assert "stopped after 0 fit(s)" in stderr
        row = _job(app)
        assert (row.id, row.status, row.worker, row.started_at, row.snapshot) == (job.id, "queued", None, None, None)
    finally:
        app.extensions["db"].engine.dispose()


def test_the_worker_refuses_a_database_that_is_behind(tmp_path):
    env = service_env(f"sqlite:///{tmp_path / 'empty.sqlite3'}", tmp_path / "instance")
    result = cli(env, "worker", "--once", cwd=tmp_path)
    assert result.returncode == 1 and "expplatform db upgrade" in result.stderr


def test_serve_starts_the_web_and_a_fit_worker_and_stops_both_on_sigint(migrated_url, seeded, tmp_path):
    """`make run`'s last step: one command, two kinds of process, one Ctrl-C."""
    from .server_support import free_port

    env = service_env(migrated_url, tmp_path / "instance", job_heartbeat_seconds="0.2")
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "expplatform.cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives it
    )
    try:
        base = f"http://127.0.0.1:{port}/api/v1"

        def answering() -> bool:
            try:
                return http("GET", f"{base}/health", timeout=5).status == 200
            except OSError:
                return False

        wait_for(answering, "expplatform serve to answer")
        children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
        assert len(children) == 2  # gunicorn and one fit worker
        queued = http("POST", f"{base}/experiments/checkout/full-model", key=seeded, body={"draws": 100, "tune": 100})
        assert queued.status == 202
        os.killpg(serve.pid, signal.SIGINT)  # what Ctrl-C does: the whole group gets it
        _out, stderr = serve.communicate(timeout=STOP_SECONDS)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert serve.returncode == 0, stderr
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]  # both stopped and reaped
