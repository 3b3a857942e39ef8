"""Full-model progress: the worker writes the real sampler's progress to the job row
(at most twice a second, always the first and last iteration), the API's job status
and the report page show it with the elapsed time and an ETA, and the page refreshes
itself back to its full-model section until the fit has ended. Nothing sleeps: the
tests look at the row, the API and the page from inside the sampler's callback."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from expplatform.job_records import job_progress
from expplatform.jobs import PROGRESS_INTERVAL_SECONDS, FitParams, ProgressRecorder, get_runner
from expplatform.models import AnalysisJob, utcnow

from .conftest import sign_in
from .events_support import expose, make_experiment


def _row(db, job_id) -> AnalysisJob:
    with db.sessionmaker() as session:
        return session.get(AnalysisJob, job_id)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_written_at_most_every_half_second_and_always_at_the_ends(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(ProgressRecorder, "clock", staticmethod(clock))
    written: list[tuple[int, int, bool]] = []
    times: list[float] = []
    passed_on: list[int] = []

    class Runner:
        def record_progress(self, job_id, done, total, *, first):
            written.append((done, total, first))
            times.append(clock.now)

    recorder = ProgressRecorder(Runner(), 1, also=lambda done, total: passed_on.append(done))  # type: ignore[arg-type]
    for done in range(1, 1001):
        recorder(done, 1000)
        clock.now += 0.01  # a hundred iterations a second: 10 s of sampling
    assert passed_on == list(range(1, 1001))  # the command line's bar sees every iteration
    assert written[0] == (1, 1000, True)  # the first marks when sampling began
    assert written[-1] == (1000, 1000, False)
    assert all(not started for _, _, started in written[1:])
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[:-1])]
    assert all(gap >= PROGRESS_INTERVAL_SECONDS for gap in gaps)  # the last one is written whenever it comes
    assert 10 / PROGRESS_INTERVAL_SECONDS - 1 <= len(written) <= 10 / PROGRESS_INTERVAL_SECONDS + 2
    assert [done for done, _, _ in written] == sorted({done for done, _, _ in written})


def test_elapsed_and_eta_come_from_the_rate_sampled_so_far():
    now = utcnow()
    job = AnalysisJob(
        status="running",
        started_at=now - timedelta(seconds=30),  # 10 s building the model, then 20 s sampling
        sampling_started_at=now - timedelta(seconds=20),
        progress_at=now - timedelta(seconds=1),
        progress_done=1900,  # 100 an s over the 19 s up to the last write
        progress_total=8000,
    )
    progress = job_progress(job, now=now)
    assert progress.elapsed_seconds == pytest.approx(30)
    assert progress.eta_seconds == pytest.approx(61 - 1)  # 6,100 left at 100/s, one already gone
    assert progress.percent == 23
    assert job_progress(AnalysisJob(status="queued", progress_total=None), now=now) is None
    building = AnalysisJob(status="running", started_at=now, progress_total=8000)
    assert job_progress(building, now=now).eta_seconds is None  # before sampling, no guess
    ended = AnalysisJob(
        status="finished",
        started_at=now - timedelta(seconds=40),
        finished_at=now - timedelta(seconds=5),
        progress_done=8000,
        progress_total=8000,
    )
    assert job_progress(ended, now=now).as_dict() == {
        "draws_done": 8000,
        "draws_total": 8000,
        "elapsed_seconds": 35.0,
        "eta_seconds": None,
    }


def test_a_queued_fit_says_it_waits_and_the_page_refreshes_back_to_its_section(app, client, login, db, make_key):
    with db.write() as session:
        experiment = make_experiment(session, "checkout", stages=("cart", "purchase"))
        expose(session, experiment, "c1", "control")
    job, _ = get_runner(app).queue("checkout", "user:ed@example.com", FitParams(draws=100, tune=100, chains=1))
    login("viewer")
    page = client.get("/experiments/checkout/report?credible_level=0.9").text
    assert "Waiting for a fit worker to take it; this page refreshes by itself." in page
    refresh = (
        '<meta http-equiv="refresh" content="3; url=/experiments/checkout/report?credible_level=0.9&amp;refresh={}'
        '#full-model">'
    )
    assert refresh.format(1) in page
    # The next refresh goes to another URL: one differing only in its fragment would not reload.
    assert refresh.format(2) in client.get("/experiments/checkout/report?credible_level=0.9&refresh=1").text
    assert "requested by ed@example.com" in page  # the one actor format
    key = make_key("admin", "ci-deploy")
    body = client.get(f"/api/v1/experiments/checkout/full-model/{job.id}", headers={"Authorization": f"Bearer {key}"})
    assert body.json["status"] == "queued" and body.json["progress"] is None


@pytest.mark.slow
def test_a_real_fit_reports_growing_progress_to_the_row_the_api_and_the_page(app, db, make_user, make_key):
    """PyMC on a small experiment, run by the worker loop as ``expplatform worker``
    does. Each time the worker writes progress, the test reads the row back, asks
    the API and loads the report page, all from inside the sampler's callback."""
    with db.write() as session:
        experiment = make_experiment(session, "checkout", stages=("cart", "purchase"))
        for i in range(200):
            expose(session, experiment, f"c{i}", "control" if i % 2 else "treatment")
    runner = get_runner(app)
    params = FitParams(draws=150, tune=150, chains=2, seed=5)
    job, _ = runner.queue("checkout", "user:ed@example.com", params)
    total = params.chains * (params.draws + params.tune)

    key = make_key("admin", "ci-deploy")
    api = app.test_client()
    browser = app.test_client()
    sign_in(browser, app, make_user("viewer", "vi@example.com"))
    seen: list[dict] = []
    record = runner.record_progress

    def record_and_look(job_id, done, total_, *, first):
        record(job_id, done, total_, first=first)
        row = _row(db, job_id)
        status = api.get(
            f"/api/v1/experiments/checkout/full-model/{job_id}", headers={"Authorization": f"Bearer {key}"}
        ).json
        page = browser.get("/experiments/checkout/report").text
        seen.append({"done": done, "row": row.progress_done, "api": status["progress"], "page": page})

    runner.record_progress = record_and_look  # type: ignore[method-assign]
    try:
        assert runner.run_pending() == 1
    finally:
        runner.record_progress = record  # type: ignore[method-assign]

    final = _row(db, job.id)
    assert final.status == "finished", final.error
    assert final.progress_done == final.progress_total == total
    rows = [look["row"] for look in seen]
    assert rows == [look["done"] for look in seen]  # each write is in the row at once
    assert rows == sorted(rows) and rows[0] == 1 and rows[-1] == total  # grows monotonically to the total
    assert final.sampling_started_at is not None and final.started_at <= final.sampling_started_at

    running = seen[-1]  # written at the last iteration, before the result is stored
    assert running["api"]["draws_done"] == total and running["api"]["draws_total"] == total
    assert running["api"]["elapsed_seconds"] > 0
    first = seen[0]["api"]
    assert first["draws_done"] == 1 and first["eta_seconds"] is None  # no rate before a second write
    page = running["page"]
    assert f"{total:,} of {total:,} draws" in page and "elapsed" in page
    assert 'http-equiv="refresh"' in page and "#full-model" in page
    assert f'<progress max="{total}" value="{total}">' in page
    assert len(seen) >= 3  # the sampler runs for seconds here: written between the ends too
    middle = seen[len(seen) // 2]
    assert 1 < middle["api"]["draws_done"] < total and middle["api"]["eta_seconds"] is not None
    # The time left as the page words it; under a second it says "nearly done" (a fast
    # sampler reaches that by half way, and the page is read a moment after the API).
    assert re.search(r"about \d+ (s|min|h)( \d+ (s|min))? left|nearly done", middle["page"])

    done_page = browser.get("/experiments/checkout/report").text
    assert 'http-equiv="refresh"' not in done_page
    assert f"{total:,} draws sampled in" in done_page
    status = api.get(f"/api/v1/experiments/checkout/full-model/{job.id}", headers={"Authorization": f"Bearer {key}"})
    assert status.json["status"] == "finished"
    assert status.json["progress"]["draws_done"] == total and status.json["progress"]["eta_seconds"] is None
    with db.sessionmaker() as session:
        assert session.scalar(select(AnalysisJob.progress_done).where(AnalysisJob.id == job.id)) == total
