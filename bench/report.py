"""Lift report benchmark (issue 6): the report of a running experiment with 1M
exposures and 5M events, as HTML with plots and as JSON, on SQLite and PostgreSQL.

Data is written with bulk SQL (the exposures helper of ``bench/ingest.py``; events
generated here with a realistic funnel, a lift at purchase for the treatment, and
20% from never-exposed customers), then outcome rows and counters are derived by
``expplatform.ingest.rebuild_outcomes``, as ingest would have kept them. Requests go through the
Flask test client of one app (one "worker"), logged in as a viewer; each figure is
the median of several requests. Printed per backend:

- cold: the first request of a fresh worker (nothing cached, matplotlib not yet
  imported), HTML then JSON; the daily series then takes seconds in the background
  (timed: the requests wait for it to finish before going on);
- warm: the steady state the targets are about (median): the series and analysis of
  the current data are kept, each request reads the statistics and renders;
- after new events arrive: the next HTML and JSON (the analysis runs again; the
  series keeps its past days and gets today's point from the live statistics).

The machine has 2 cores shared with everything else running on it: figures are noisy.

    .venv/bin/python bench/report.py                       # both backends, 1M/5M
    .venv/bin/python bench/report.py --quick               # 50k/250k, to try it
    .venv/bin/python bench/report.py --keep /tmp/rb        # keep/reuse the SQLite file there
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load_ingest_bench():
    """bench/ingest.py (databases, the experiment and its exposures in bulk), loaded by
    path: putting bench/ on sys.path would let bench/analysis.py shadow the package."""
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ingest = _load_ingest_bench()

from expplatform import create_app  # noqa: E402
from expplatform.auth import create_user  # noqa: E402
from expplatform.db import Base  # noqa: E402
from expplatform.ingest import rebuild_outcomes  # noqa: E402
from expplatform.models import Experiment  # noqa: E402

ingest.PG_DB = "bench_report"
# A running experiment: two weeks of data up to yesterday (the new events of the run
# then land today), so the daily series spans the days a real one would.
ingest.BASE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=16)
STAGES = ingest.STAGES
# Conversion probability per stage for control; the treatment gains at purchase.
FUNNEL = (0.60, 0.35, 0.10, 0.05)
TREATMENT_GAIN = 0.012
RUN = int(time.time())  # new events of this run are new even in a kept database


def bulk_funnel_events(engine, count: int, questions: dict[str, str]) -> None:
    """``count`` events, four per customer id c0..c{count/4} (with 5 events per
    exposure, the top 20% of those ids were never exposed): at stages awareness..retention, a
    conversion when the customer's hash falls under the stage's rate (the treatment
    converts more at purchase), otherwise a 1-5 rating naming the stage's question
    (``questions``: stage -> question key, the experiment's metrics); each some hours
    after the customer's exposure."""
    dialect = engine.dialect.name
    c, k = "(i / 4)", "(i % 4)"
    h = f"(({c} * 2654435761 + {k} * 40503 + ({c} / 7) * 97) % 1000003)"
    stage = "CASE " + k + " " + " ".join(f"WHEN {n} THEN '{s}'" for n, s in enumerate(STAGES[:4])) + " END"
    threshold = (
        "CASE "
        + k
        + " "
        + " ".join(
            f"WHEN {n} THEN {int(p * 1000003)}" + (f" + ({c} % 2) * {int(TREATMENT_GAIN * 1000003)}" if n == 2 else "")
            for n, p in enumerate(FUNNEL)
        )
        + " END"
    )
    converted = f"({h} < {threshold})"
    metric = "CASE " + k + " " + " ".join(f"WHEN {n} THEN '{questions[s]}'" for n, s in enumerate(STAGES[:4])) + " END"
    seconds = f"({c} % 1209600 + {k} * 3600 + {h} % 86400)"
    occurred = ingest._timestamp_sql(engine, seconds)
    cutoff = ingest._timestamp_sql(engine, f"{seconds} + 5")
    series = ingest._series(engine, 0, count)
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""INSERT INTO events (event_id, customer_id, stage, type, metric, value, occurred_at, received_at,
                                        experiment_key, attributed, exposure_cutoff)
                SELECT 'r' || i, 'c' || {c}, {stage},
                       CASE WHEN {converted} THEN 'conversion' ELSE 'satisfaction' END,
                       CASE WHEN {converted} THEN NULL ELSE {metric} END,
                       CASE WHEN {converted} THEN NULL ELSE 1 + ({h} / 7) % 5 END,
                       {occurred}, {cutoff}, NULL, 0, {cutoff}
                FROM {series}"""
            )
        )
        if dialect == "postgresql":
            connection.execute(text("ANALYZE events"))


def build(url: str, exposures: int, events: int) -> int:
    """The data set, unless ``url`` already holds it; returns the experiment id."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            found = session.get(Experiment, session.scalar(select(Experiment.id).where(Experiment.key == "bench")) or 0)
            recent = found is not None and found.started_at >= ingest.BASE - timedelta(days=7)
            if recent and session.scalar(text("SELECT count(*) FROM events")) >= events:
                print(f"  reusing the data set in {url}")
                return found.id
    except Exception:
        pass
    finally:
        engine.dispose()
    started = time.perf_counter()
    experiment_id, _key = ingest.prepare(url, exposures)
    engine = create_engine(url)
    with Session(engine) as session:
        questions = dict(session.get_one(Experiment, experiment_id).metrics)
    bulk_funnel_events(engine, events, questions)
    with Session(engine) as session, session.begin():
        experiment = session.get(Experiment, experiment_id)
        rebuild_outcomes(session, experiment)
        create_user(session, "viewer@example.com", "bench-password", "viewer")
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    print(f"  built {exposures:,} exposures and {events:,} events in {time.perf_counter() - started:.0f} s")
    return experiment_id


def add_events(url: str, start: int, count: int, customers: int) -> None:
    """New events arriving through the real ingest path: conversions at advocacy (a
    stage the bulk data leaves empty) of customers picked by this run, so that
    every one moves the counters."""
    from expplatform.ingest import record_events

    app = create_app({"database_url": url, "testing": True, "check_migrations": False})
    items = [
        {
            "event_id": f"late-{RUN}-{start + n}",
            "customer_id": f"c{(RUN * 7919 + (start + n) * 13) % customers}",
            "stage": "advocacy",
            "type": "conversion",
        }
        for n in range(count)
    ]
    record_events(app.extensions["db"], items, app.extensions["settings"])
    app.extensions["db"].engine.dispose()


@contextmanager
def viewer_client(url: str) -> Iterator:
    instance = tempfile.mkdtemp(prefix="bench_report_instance_")
    app = create_app(
        {
            "database_url": url,
            "instance_path": instance,
            "secret_key": "bench",
            "check_migrations": False,
            "wtf_csrf_enabled": False,
        }
    )
    try:
        with app.test_client() as client:
            response = client.post("/login", data={"email": "viewer@example.com", "password": "bench-password"})
            assert response.status_code in (302, 303), response.status_code
            yield app, client
    finally:
        app.extensions["report_cache"].slow.wait_idle(600)
        app.extensions["db"].engine.dispose()
        shutil.rmtree(instance, ignore_errors=True)


def timed(client, path: str) -> tuple[float, int, int, float]:
    """Wall time, size, plots drawn, and this process's CPU time (the web worker's
    share: SQLite's included, PostgreSQL's server not; steadier than the wall clock
    on a shared machine)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    response = client.get(path)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    assert response.status_code == 200, (path, response.status_code, response.data[:300])
    return elapsed, len(response.data), response.data.count(b"<svg"), cpu


def _median(client, path: str, runs: int) -> tuple[float, int, int, float]:
    results = [timed(client, path) for _ in range(runs)]
    median = statistics.median
    return median(r[0] for r in results), results[-1][1], results[-1][2], median(r[3] for r in results)


def bench(backend: str, args) -> None:
    with ingest.fresh_database(backend) if not (args.keep and backend == "sqlite") else _kept(args.keep) as url:
        build(url, args.exposures, args.events)
        html, json_ = "/experiments/bench/report", "/api/v1/experiments/bench/report"
        with viewer_client(url) as (app, client):
            cold_html, _, cold_svgs, _ = timed(client, html)
            cold_json = timed(client, json_)[0]
            started = time.perf_counter()
            assert app.extensions["report_cache"].slow.wait_idle(1800)
            background = time.perf_counter() - started + cold_html + cold_json
            warm_html, size, svgs, cpu_html = _median(client, html, args.runs)
            warm_json, json_size, _, cpu_json = _median(client, json_, args.runs)
            before = client.get(json_).get_json()["result"]
            add_events(url, 0, 200, args.exposures)
            moved_html = timed(client, html)[0]
            add_events(url, 200, 200, args.exposures)
            moved_json = timed(client, json_)[0]
            assert client.get(json_).get_json()["result"] != before, "the new events did not move the data"
        print(
            f"  report {backend:10s} exposures={args.exposures:,} events={args.events:,}: "
            f"HTML {warm_html * 1000:.0f} ms, JSON {warm_json * 1000:.0f} ms (warm medians of {args.runs}; "
            f"CPU {cpu_html * 1000:.0f} and {cpu_json * 1000:.0f} ms); "
            f"after new events HTML {moved_html * 1000:.0f} ms, JSON {moved_json * 1000:.0f} ms; "
            f"cold worker HTML {cold_html * 1000:.0f} ms ({cold_svgs} of 4 plots"
            f"{'' if cold_svgs == 4 else ': the daily series was still computing'}), "
            f"cold JSON {cold_json * 1000:.0f} ms; daily series computed in the background in ~{background:.0f} s "
            f"[page {size / 1024:.0f} KiB with {svgs} SVG plots, JSON {json_size / 1024:.0f} KiB]"
        )


@contextmanager
def _kept(folder: str) -> Iterator[str]:
    path = Path(folder) / "bench.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path}"
    if path.exists() and _stale(url):
        for leftover in path.parent.glob("bench.sqlite3*"):
            leftover.unlink()
    yield url


def _stale(url: str) -> bool:
    """A kept database from an older run: its data would not end yesterday, or its
    tables are not the models' any more."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        for table in Base.metadata.sorted_tables:
            if {c["name"] for c in found.get_columns(table.name)} != set(table.columns.keys()):
                return True
        with Session(engine) as session:
            started = session.scalar(select(Experiment.started_at).where(Experiment.key == "bench"))
        return started is None or started < ingest.BASE - timedelta(days=7)
    except Exception:
        return True
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", help="keep the SQLite database in this folder and reuse it next time")
    parser.add_argument("--quick", action="store_true", help="50k exposures and 250k events")
    parser.add_argument(
        "--pg-database", default=ingest.PG_DB, help="the PostgreSQL database to (re)create (the server may be shared)"
    )
    args = parser.parse_args()
    ingest.PG_DB = args.pg_database
    if args.quick:
        args.exposures, args.events, args.runs = 50_000, 250_000, 5
    print(f"bench/report.py on {os.cpu_count()} CPUs (shared; figures are noisy)")
    for backend in args.backends.split(","):
        bench(backend, args)


if __name__ == "__main__":
    main()
