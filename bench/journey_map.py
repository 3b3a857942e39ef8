"""Journey map benchmark: the live journey map of a journey of 10M customers (50M
events) over a year, as HTML with its two plots and as JSON, on SQLite and (when
EXPPLATFORM_TEST_POSTGRES_URL or --pg-url names a server) PostgreSQL.

The map reads only the ``journey_counts`` counters that ingest keeps, so those are
what is seeded, directly with bulk inserts, at the scale such a journey leaves: 5
stages, 4 rating questions (1-5, 0-10, 1-7, 1-5; the second stage has none), 4
personas and the unknown one, 365 days, a cell per stage x persona x day for first
conversions and per question x persona x day x rating value for latest ratings
(about 60,000 cells per journey; a second journey of the same size shares the table).
Customers: 10M reach the first stage over the year, fewer each stage after, about 30%
of them rate; the 50M events those customers sent are not stored: the map never reads
events (a test checks that it issues one statement, over the counters).

The journey's experiments are seeded too, with real exposures and outcome counters:
per tested stage a running and a paused one, and a clone chain of four stopped
iterations (100k exposures each) whose lifts and decisions the map shows: the first
request of a worker analyses the three latest stopped ones per stage and the chain
(as their reports would), later ones reuse that (a stopped experiment's data no
longer moves).

Requests go through the Flask test client of one app (one "worker"), logged in as a
viewer; each figure is the median of several requests. Printed per backend: the
counters' SQL alone (28 and 365 days), the first request of a fresh worker (HTML,
then JSON), warm medians of the default view (28 days, everyone), a year, one
persona and two side by side, and baselines measured in the same run: a trivial
logged-in page (the password form, /account/password) and the JSON health check, with the ratio.

The machine has 2 cores shared with everything else running on it: figures are noisy.

    .venv/bin/python bench/journey_map.py                    # both backends when PG is set
    .venv/bin/python bench/journey_map.py --backends sqlite  # SQLite only
    .venv/bin/python bench/journey_map.py --quick            # 90 days, fewer exposures
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (beside this script)

from expplatform import create_app, migrations  # noqa: E402
from expplatform.auth import create_user  # noqa: E402
from expplatform.journey_map import JourneyShape, Period, read_counts  # noqa: E402
from expplatform.journeys import get_journey  # noqa: E402
from expplatform.models import (  # noqa: E402
    Experiment,
    Journey,
    JourneyCount,
    JourneyPersona,
    JourneyStage,
    OutcomeCount,
    RatingQuestion,
    Variant,
)

PG_DB = "bench_journey_map"
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
# key -> (stage, min, max); consideration has no question.
QUESTIONS = {
    "ad-recall": ("awareness", 1, 5),
    "purchase-nps": ("purchase", 0, 10),
    "delivery-csat": ("retention", 1, 7),
    "referral-ease": ("advocacy", 1, 5),
}
# Persona share of customers, and each persona's conversion from one stage to the next.
PERSONAS = {
    "bargain": (0.35, (0.55, 0.25, 0.60, 0.15)),
    "loyal": (0.25, (0.75, 0.45, 0.80, 0.35)),
    "business": (0.20, (0.65, 0.35, 0.70, 0.10)),
    "student": (0.15, (0.50, 0.20, 0.50, 0.20)),
    "": (0.05, (0.40, 0.20, 0.40, 0.10)),
}
RATED = 0.30  # share of a stage's customers who rate its question
EXPOSED = 100_000  # per stopped iteration


def customers_per_day(total: int, days: int) -> list[float]:
    """First-stage customers per day: a weekly rhythm around an even spread."""
    weekly = (1.00, 1.05, 1.08, 1.04, 1.10, 0.85, 0.88)
    raw = [weekly[d % 7] for d in range(days)]
    scale = total / sum(raw)
    return [r * scale for r in raw]


def rating_weights(low: int, high: int, tilt: float) -> list[float]:
    """Rating shares leaning high (tilt > 1) or low."""
    weights = [(1 + i) ** tilt for i in range(high - low + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def journey_cells(journey_id: int, prefix: str, total: int, days: int, last: date) -> Iterator[dict]:
    tilts = {"bargain": 1.2, "loyal": 2.0, "business": 1.5, "student": 0.8, "": 1.0}
    for offset, first_stage in enumerate(customers_per_day(total, days)):
        day = last - timedelta(days=days - 1 - offset)
        for persona, (share, steps) in PERSONAS.items():
            reached = first_stage * share
            for index, stage in enumerate(STAGES):
                if index:
                    reached *= steps[index - 1]
                yield dict(
                    journey_id=journey_id,
                    stage=stage,
                    metric="",
                    persona=persona,
                    day=day,
                    kind="converted",
                    value=0,
                    customers=round(reached),
                )
                for key, (at, low, high) in QUESTIONS.items():
                    if at != stage:
                        continue
                    for value, weight in zip(
                        range(low, high + 1), rating_weights(low, high, tilts[persona]), strict=True
                    ):
                        yield dict(
                            journey_id=journey_id,
                            stage=stage,
                            metric=prefix + key,
                            persona=persona,
                            day=day,
                            kind="rating",
                            value=value,
                            customers=round(reached * RATED * weight),
                        )


def add_journey(session: Session, key: str) -> Journey:
    journey = Journey(key=key, name=f"Retail journey ({key})", description="Bench journey.")
    journey.stages = [
        JourneyStage(key=s, name=s.capitalize(), position=i, goal=f"Reaches {s}", touchpoints=["web", "app"])
        for i, s in enumerate(STAGES)
    ]
    journey.personas = [
        JourneyPersona(key=p, name=p.capitalize(), position=i) for i, p in enumerate(k for k in PERSONAS if k)
    ]
    journey.questions = [
        RatingQuestion(
            key=q if key == "retail" else f"{key}-{q}",
            stage=stage,
            text=f"{q}?",
            scale_min=low,
            scale_max=high,
            position=i,
        )
        for i, (q, (stage, low, high)) in enumerate(QUESTIONS.items())
    ]
    session.add(journey)
    session.flush()
    return journey


def _series(engine, start: int, stop: int) -> str:
    if engine.dialect.name == "postgresql":
        return f"generate_series({start}::bigint, {stop - 1}) AS s(i)"
    return (
        f"(WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {stop}) SELECT i FROM s)"
    )


def add_experiment(session: Session, journey: Journey, key: str, stage: str, status: str, **fields) -> Experiment:
    now = datetime.now(UTC)
    experiment = Experiment(
        key=key,
        name=key.replace("-", " ").capitalize(),
        journey_id=journey.id,
        stages=list(STAGES),
        metrics={s: q for q, (s, _low, _high) in QUESTIONS.items()},
        target_stage=stage,
        salt=key,
        status=status,
        started_at=now - timedelta(days=60),
        **fields,
    )
    experiment.variants = [
        Variant(key="control", weight=1, position=0, is_control=True),
        Variant(key="treatment", weight=1, position=1),
    ]
    session.add(experiment)
    session.flush()
    return experiment


def add_experiments(engine, session: Session, journey: Journey, exposed: int) -> int:
    """Per tested stage (purchase, retention): a running and a paused experiment, and
    four stopped iterations cloned one from the other, with exposures and outcome
    counters (lifts of +4%, -2%, +6%, +1% at the stage under test)."""
    stopped = []
    now = datetime.now(UTC)
    for stage in ("purchase", "retention"):
        add_experiment(session, journey, f"{stage}-live", stage, "running")
        add_experiment(session, journey, f"{stage}-held", stage, "paused")
        previous = None
        for n, lift in enumerate((0.04, -0.02, 0.06, 0.01), start=1):
            experiment = add_experiment(
                session,
                journey,
                f"{stage}-v{n}",
                stage,
                "stopped",
                cloned_from=previous,
                stopped_at=now - timedelta(days=40 - 8 * n),
            )
            previous = experiment.key
            stopped.append((experiment, lift))
    session.commit()
    for experiment, lift in stopped:
        control, treatment = (v.id for v in experiment.variants)
        started = experiment.started_at.strftime("%Y-%m-%d %H:%M:%S")
        exposed_at = (
            f"(TIMESTAMPTZ '{started}+00' + (i % 86400) * INTERVAL '1 second')"
            if engine.dialect.name == "postgresql"
            else f"(strftime('%Y-%m-%d %H:%M:%S', '{started}', '+' || (i % 86400) || ' seconds') || '.000000')"
        )
        forced = "false" if engine.dialect.name == "postgresql" else "0"
        attributes = "CAST('{}' AS json)" if engine.dialect.name == "postgresql" else "'{}'"
        session.execute(
            text(
                f"""INSERT INTO exposures
                       (experiment_id, variant_id, customer_id, exposed_at, attributes, forced, mismatches)
                SELECT {experiment.id}, CASE WHEN i % 2 = 0 THEN {control} ELSE {treatment} END, 'c' || i,
                       {exposed_at}, {attributes}, {forced}, 0
                FROM {_series(engine, 0, exposed)}"""
            )
        )
        day = experiment.started_at.date() + timedelta(days=1)
        base = exposed // 2 * 0.12
        for stage in STAGES:
            for variant, gain in ((control, 0.0), (treatment, lift)):
                converted = base * (1 + gain if stage == experiment.target_stage else 1)
                session.execute(
                    insert(OutcomeCount).values(
                        experiment_id=experiment.id,
                        stage=stage,
                        variant_id=variant,
                        day=day,
                        kind="converted",
                        value=0,
                        customers=round(converted),
                    )
                )
    session.commit()
    return len(stopped)


def build(url: str, customers: int, days: int, exposed: int, experiments: bool = True) -> None:
    started = time.perf_counter()
    engine = create_engine(url)
    migrations.upgrade(engine)
    last = datetime.now(UTC).date()
    with Session(engine) as session:
        cells = 0
        for key in ("retail", "other"):
            journey = add_journey(session, key)
            session.commit()
            rows = list(journey_cells(journey.id, "" if key == "retail" else f"{key}-", customers, days, last))
            for start in range(0, len(rows), 20_000):
                session.execute(insert(JourneyCount), rows[start : start + 20_000])
            session.commit()
            cells += len(rows)
            if key == "retail":
                stopped = add_experiments(engine, session, journey, exposed) if experiments else 0
        create_user(session, "viewer@example.com", "bench-password", "viewer")
        session.commit()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    print(
        f"  built {cells:,} journey cells (2 journeys x {days} days; {customers:,} customers at the first stage of "
        f"each) and {stopped} stopped experiments of {exposed:,} exposures in {time.perf_counter() - started:.0f} s"
    )


@contextmanager
def viewer_client(url: str) -> Iterator:
    instance = tempfile.mkdtemp(prefix="bench_journey_map_instance_")
    app = create_app(
        {
            "database_url": url,
            "instance_path": instance,
            "secret_key": "bench",
            "check_migrations": False,
            "wtf_csrf_enabled": False,
            "log_level": "WARNING",
        }
    )
    try:
        with app.test_client() as client:
            response = client.post("/login", data={"email": "viewer@example.com", "password": "bench-password"})
            assert response.status_code in (302, 303), response.status_code
            yield app, client
    finally:
        app.extensions["db"].engine.dispose()
        shutil.rmtree(instance, ignore_errors=True)


def timed(client, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (path, response.status_code, response.data[:300])
    return elapsed, len(response.data)


def median(client, path: str, runs: int) -> float:
    return statistics.median(timed(client, path)[0] for _ in range(runs))


def sql_only(app, days: int, runs: int) -> float:
    """The counters' statement alone (and the journey's rows), median of ``runs``."""
    last = datetime.now(UTC).date()
    period = Period(last - timedelta(days=days - 1), last)
    times = []
    with app.app_context():
        for _ in range(runs):
            with app.extensions["db"].sessionmaker() as session:
                started = time.perf_counter()
                journey = get_journey(session, "retail")
                read_counts(session, journey.id, JourneyShape.of(journey), period)
                times.append(time.perf_counter() - started)
    return statistics.median(times)


VIEWS = {
    "28 days, everyone": "",
    "365 days, everyone": "?days=365",
    "one persona": "?persona=loyal",
    "two side by side": "?persona=loyal&compare=bargain",
}


def bench(backend: str, args) -> None:
    admin = args.pg_url if backend == "postgresql" else None
    with benchlib.fresh_database(backend, PG_DB, admin) as url:
        build(url, args.customers, args.days, args.exposed, not args.without_experiments)
        with viewer_client(url) as (app, client):
            # A fresh worker: its first JSON analyses the stopped experiments shown (then
            # kept); its first page imports matplotlib and draws (wsgi.py warms matplotlib
            # up in the background when serving, so in production this is mostly drawing).
            cold_json, json_size = timed(client, "/api/v1/journeys/retail/map")
            cold_html, html_size = timed(client, "/journeys/retail")
            body = client.get("/api/v1/journeys/retail/map").get_json()
            analysed = {
                e["key"]
                for s in body["stages"]
                for e in [
                    *s["experiments"]["stopped"],
                    *(e for chain in s["experiments"]["iterations"] for e in chain["experiments"]),
                ]
                if e["measured"] is not None
            }
            base_html = median(client, "/account/password", args.runs)
            base_json = median(client, "/api/v1/health", args.runs)
            print(
                f"  {backend}: counters' SQL alone {sql_only(app, 28, args.runs) * 1000:.1f} ms (28 days), "
                f"{sql_only(app, 365, args.runs) * 1000:.1f} ms (365 days); a fresh worker's first JSON "
                f"{cold_json * 1000:.0f} ms ({len(analysed)} stopped experiments analysed), first page "
                f"{cold_html * 1000:.0f} ms (matplotlib imported, plots drawn); baselines: /account/password "
                f"{base_html * 1000:.1f} ms, /api/v1/health {base_json * 1000:.1f} ms "
                f"[page {html_size / 1024:.0f} KiB, JSON {json_size / 1024:.0f} KiB]"
            )
            for name, query in VIEWS.items():
                html = median(client, f"/journeys/retail{query}", args.runs)
                json_ = median(client, f"/api/v1/journeys/retail/map{query}", args.runs)
                print(
                    f"    {name:18s}: HTML {html * 1000:6.1f} ms ({html / base_html:4.1f}x the trivial page), "
                    f"JSON {json_ * 1000:6.1f} ms ({json_ / base_json:4.1f}x health) "
                    f"[targets: HTML <= 1000 ms, JSON <= 300 ms]"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pg_url = os.environ.get("EXPPLATFORM_TEST_POSTGRES_URL")
    parser.add_argument("--backends", default="sqlite,postgresql" if pg_url else "sqlite")
    parser.add_argument("--pg-url", default=pg_url, help="a PostgreSQL server to create the bench database on")
    parser.add_argument("--customers", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--exposed", type=int, default=EXPOSED, help="exposures per stopped experiment")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--without-experiments", action="store_true", help="the counters only")
    parser.add_argument("--quick", action="store_true", help="90 days, 10k exposures per stopped experiment")
    args = parser.parse_args()
    if args.quick:
        args.days, args.exposed, args.runs = 90, 10_000, 5
    if args.pg_url:
        args.pg_url = benchlib.postgres_driver_url(args.pg_url)
    print(f"bench/journey_map.py on {os.cpu_count()} CPUs (shared; figures are noisy)")
    for backend in args.backends.split(","):
        bench(backend, args)


if __name__ == "__main__":
    main()
