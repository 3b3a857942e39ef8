"""Event ingestion and aggregation benchmark (issue 4).

1. Events/s through ``POST /api/v1/events`` served by real gunicorn (2 and 4 sync
   workers) on SQLite (temp dir, WAL) and PostgreSQL (throwaway database
   ``bench_ingest``): batches of 500, a realistic mix (70% conversions, 30% ratings,
   five stages, 20% of customers never exposed) with 10% re-sent events; errors
   counted, stored rows checked against what the responses said; worker memory
   (VmRSS at the start and end of the load, VmHWM peak).
2. Aggregation over stored data: 1M exposures, then 1M, 5M and 10M events written
   with bulk SQL (not HTTP); outcome rows and counters derived by ``rebuild_outcomes``
   (timed too); then each report timed (median of several runs) with the plan of
   its exposure scan.

The load generator runs on the same (2-core, shared) machine as the server and the
database: the figures are a floor, and noisy.

    .venv/bin/python bench/ingest.py                    # everything, default sizes
    .venv/bin/python bench/ingest.py --quick            # small sizes, short runs
    .venv/bin/python bench/ingest.py --backends sqlite --phases http
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (beside this script)

from expplatform import aggregation, journeys, migrations  # noqa: E402
from expplatform.auth import create_api_key  # noqa: E402
from expplatform.ingest import rebuild_outcomes, stored_outcomes  # noqa: E402
from expplatform.models import Event, Experiment, OutcomeCount, Variant  # noqa: E402

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
BASE = datetime(2024, 5, 1, tzinfo=UTC)
PG_DB = "bench_ingest"


# -- databases ---------------------------------------------------------------------------


def fresh_database(backend: str):
    return benchlib.fresh_database(backend, PG_DB)


def prepare(url: str, exposures: int, *, forced_every: int = 1000) -> tuple[int, str]:
    """Migrate, define one running experiment over all five stages, expose customers
    c0..c{n-1} with bulk SQL, make a client key. Returns (experiment id, key)."""
    engine = create_engine(url)
    migrations.upgrade(engine)
    with Session(engine) as session, session.begin():
        experiment = Experiment(
            key="bench",
            name="Bench",
            stages=list(STAGES),
            target_stage="purchase",
            salt="bench",
            status="running",
            started_at=BASE,
            **journeys.implicit_fields(session, STAGES),
        )
        experiment.variants = [
            Variant(key="control", weight=1, position=0, is_control=True),
            Variant(key="treatment", weight=1, position=1),
        ]
        session.add(experiment)
        session.flush()
        experiment_id = experiment.id
        variant_ids = [v.id for v in experiment.variants]
        _record, key = create_api_key(session, "client", "bench", created_by="bench")
    bulk_exposures(engine, experiment_id, variant_ids, 0, exposures, forced_every=forced_every)
    engine.dispose()
    return experiment_id, key


def _series(engine, start: int, stop: int) -> str:
    """A row source of integers i in [start, stop) for INSERT ... SELECT."""
    if engine.dialect.name == "postgresql":
        return f"generate_series({start}::bigint, {stop - 1}) AS s(i)"
    return (
        f"(WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {stop}) SELECT i FROM s)"
    )


def _timestamp_sql(engine, seconds_expr: str) -> str:
    base = BASE.strftime("%Y-%m-%d %H:%M:%S")
    if engine.dialect.name == "postgresql":
        return f"(TIMESTAMPTZ '{base}+00' + ({seconds_expr}) * INTERVAL '1 second')"
    return f"(strftime('%Y-%m-%d %H:%M:%S', '{base}', '+' || ({seconds_expr}) || ' seconds') || '.000000')"


def bulk_exposures(
    engine, experiment_id: int, variant_ids: list[int], start: int, stop: int, *, forced_every: int
) -> None:
    forced = f"(i % {forced_every} = 0)"
    if engine.dialect.name == "sqlite":
        forced = f"CASE WHEN {forced} THEN 1 ELSE 0 END"
    countries = "CASE i % 4 WHEN 0 THEN 'fr' WHEN 1 THEN 'de' WHEN 2 THEN 'es' ELSE 'it' END"
    attributes = f"""'{{"country": "' || {countries} || '"}}'"""
    if engine.dialect.name == "postgresql":
        attributes = f"CAST({attributes} AS json)"
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""INSERT INTO exposures
                       (experiment_id, variant_id, customer_id, exposed_at, attributes, forced, mismatches)
                SELECT {experiment_id},
                       CASE WHEN (i * 2654435761) % 2 = 0 THEN {variant_ids[0]} ELSE {variant_ids[1]} END,
                       'c' || i, {_timestamp_sql(engine, "(i % 1209600)")},
                       {attributes}, {forced}, 0
                FROM {_series(engine, start, stop)}"""
            )
        )
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE exposures"))


def bulk_events(engine, start: int, stop: int, customers: int) -> None:
    """Events i in [start, stop): 80% from exposed customers, stages and times spread,
    70% conversions, 30% ratings; all after the customer's exposure unless the pseudo-
    random draw puts them in the first two weeks."""
    spread = int(customers * 1.25)
    # Independent-looking draws from multiplicative hashes modulo different primes.
    customer = f"((i * 2654435761) % 4294967291 % {spread})"
    stage = (
        "CASE (i * 40503 + 7) % 65521 % 5 " + " ".join(f"WHEN {n} THEN '{s}'" for n, s in enumerate(STAGES)) + " END"
    )
    conversion = "(i * 69069 + 1) % 1000003 % 10 < 7"
    rating = "1 + (i * 1103515245 + 12345) % 2147483647 % 5"
    seconds = f"({customer} % 1209600 + (i * 7919) % 104729 * 23)"
    occurred = _timestamp_sql(engine, seconds)
    cutoff = _timestamp_sql(engine, f"{seconds} + 5")
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""INSERT INTO events (event_id, customer_id, stage, type, value, occurred_at, received_at,
                                        experiment_key, attributed, exposure_cutoff)
                SELECT 'g' || i, 'c' || {customer}, {stage},
                       CASE WHEN {conversion} THEN 'conversion' ELSE 'satisfaction' END,
                       CASE WHEN {conversion} THEN NULL ELSE {rating} END,
                       {occurred}, {cutoff}, NULL, 0, {cutoff}
                FROM {_series(engine, start, stop)}"""
            )
        )
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE events"))


# -- HTTP load -----------------------------------------------------------------------------


@contextmanager
def gunicorn(url: str, workers: int) -> Iterator[tuple[int, int]]:
    """The service on ``url``; yields (port, master pid)."""
    instance = tempfile.mkdtemp(prefix="bench_instance_")
    env = {
        "EXPPLATFORM_DATABASE_URL": url,
        "EXPPLATFORM_INSTANCE_PATH": instance,
        "EXPPLATFORM_SECRET_KEY": "bench-secret",
    }
    try:
        with benchlib.gunicorn("wsgi:app", ROOT, env, ["--workers", str(workers)]) as served:
            yield served
    finally:
        shutil.rmtree(instance, ignore_errors=True)


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def memory_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def make_batches(count: int, size: int, customers: int, seed: int) -> list[bytes]:
    """Pre-encoded request bodies, so the client spends its CPU on sending only."""
    rng = random.Random(seed)
    sent: list[dict] = []
    bodies = []
    spread = int(customers * 1.25)
    for b in range(count):
        batch = []
        for i in range(size):
            if sent and rng.random() < 0.10:
                batch.append(sent[rng.randrange(len(sent))])
                continue
            event = {
                "event_id": f"s{seed}-{b}-{i}",
                "customer_id": f"c{rng.randrange(spread)}",
                "stage": rng.choice(STAGES),
                "type": "conversion",
            }
            if rng.random() < 0.3:
                event["type"], event["value"] = "satisfaction", rng.randint(1, 5)
            batch.append(event)
            sent.append(event)
        unique = list({e["event_id"]: e for e in batch}.values())
        bodies.append(json.dumps({"events": unique}).encode())
    return bodies


def load(port: int, key: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads post the bodies round-robin for ``seconds``."""
    lock = threading.Lock()
    totals = {"requests": 0, "events": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "errors": 0}
    error_samples: list[str] = []
    stop_at = time.monotonic() + seconds
    next_body = iter(range(10**9))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            with lock:
                index = next(next_body)
            if index >= len(bodies):
                return
            body = bodies[index]
            try:
                connection.request("POST", "/api/v1/events", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            except OSError as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                with lock:
                    totals["errors"] += 1
                    error_samples.append(repr(exc))
                continue
            with lock:
                totals["requests"] += 1
                if response.status != 200:
                    totals["errors"] += 1
                    error_samples.append(f"{response.status} {payload[:200]!r}")
                    continue
                result = json.loads(payload)
                totals["events"] += result["accepted"] + result["duplicates"] + len(result["rejected"])
                totals["accepted"] += result["accepted"]
                totals["duplicates"] += result["duplicates"]
                totals["rejected"] += len(result["rejected"])
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals["seconds"] = time.monotonic() - started
    totals["error_samples"] = error_samples[:3]
    return totals


def bench_http(backend: str, workers: int, args) -> None:
    with fresh_database(backend) as url:
        experiment_id, key = prepare(url, args.http_customers)
        with gunicorn(url, workers) as (port, master):
            warm = make_batches(2 * workers, args.batch, args.http_customers, seed=1)
            warm_accepted = load(port, key, warm, workers, 30)["accepted"]
            pids = worker_pids(master)
            before = {pid: memory_kb(pid) for pid in pids}
            needed = int(args.seconds * 60_000 / args.batch) + 50  # never run out at 60k events/s
            bodies = make_batches(needed, args.batch, args.http_customers, seed=2)
            database_pids = postgres_pids() if backend == "postgresql" else []
            cpu_before = (cpu_seconds(pids), cpu_seconds(database_pids), sum(os.times()[:2]), machine_busy_seconds())
            result = load(port, key, bodies, args.clients or 2 * workers, args.seconds)
            cpu_after = (cpu_seconds(pids), cpu_seconds(database_pids), sum(os.times()[:2]), machine_busy_seconds())
            after = {pid: memory_kb(pid) for pid in pids}
        engine = create_engine(url)
        with Session(engine) as session, session.begin():
            stored = session.scalar(select(func.count()).select_from(Event))
            incremental = maintained(session, experiment_id)
            rebuild_outcomes(session, session.get(Experiment, experiment_id))
            rebuilt_equal = maintained(session, experiment_id) == incremental
        engine.dispose()
    rate = result["events"] / result["seconds"]
    print(
        f"  http {backend:10s} workers={workers} clients={args.clients or 2 * workers}: "
        f"{rate:,.0f} events/s ({result['requests']} requests of <= {args.batch}, {result['seconds']:.1f} s), "
        f"accepted={result['accepted']} duplicates={result['duplicates']} rejected={result['rejected']} "
        f"errors={result['errors']} {result['error_samples'] or ''}"
    )
    rss = ", ".join(
        f"{before[p]['VmRSS'] / 1024:.0f}->{after[p]['VmRSS'] / 1024:.0f} MiB (peak {after[p]['VmHWM'] / 1024:.0f})"
        for p in pids
    )
    print(f"       worker RSS start->end of load: {rss}")
    workers_cpu, database_cpu, client_cpu, busy = (
        after - before for after, before in zip(cpu_after, cpu_before, strict=True)
    )
    others = max(0.0, busy - workers_cpu - database_cpu - client_cpu)
    per_event = 1e6 / max(result["events"], 1)
    print(
        f"       CPU seconds during the load: workers {workers_cpu:.1f}, postgres {database_cpu:.1f}, "
        f"load generator {client_cpu:.1f}, other processes on the machine {others:.1f} "
        f"(of {(os.cpu_count() or 1) * result['seconds']:.0f}); per event: workers "
        f"{workers_cpu * per_event:.0f} us, postgres {database_cpu * per_event:.0f} us"
    )
    consistent = stored == result["accepted"] + warm_accepted
    print(
        f"       stored events {stored} == accepted (+ warm-up {warm_accepted}): {consistent}; "
        f"outcomes and counters kept under load == rebuilt from the raw events: {rebuilt_equal}"
    )


def maintained(session: Session, experiment_id: int) -> tuple:
    counters = session.execute(
        select(
            OutcomeCount.stage, OutcomeCount.variant_id, OutcomeCount.kind, OutcomeCount.value, OutcomeCount.customers
        )
        .where(OutcomeCount.experiment_id == experiment_id, OutcomeCount.customers != 0)
        .order_by(OutcomeCount.stage, OutcomeCount.variant_id, OutcomeCount.kind, OutcomeCount.value)
    ).all()
    return stored_outcomes(session, experiment_id), counters


# -- aggregation at scale ------------------------------------------------------------------


def timed(fn, runs: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(runs):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def bench_aggregation(backend: str, args) -> None:
    with fresh_database(backend) as url:
        experiment_id, _key = prepare(url, args.exposures)
        engine = create_engine(url)
        stored = 0
        for target in args.event_sizes:
            started = time.perf_counter()
            bulk_events(engine, stored, target, args.exposures)
            stored = target
            generated = time.perf_counter() - started
            started = time.perf_counter()
            with Session(engine) as session, session.begin():
                rebuild_outcomes(session, session.get(Experiment, experiment_id))
            rebuilt = time.perf_counter() - started
            if engine.dialect.name == "postgresql":
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                    connection.execute(text("VACUUM ANALYZE"))
            with Session(engine) as session:
                experiment = session.get(Experiment, experiment_id)
                experiment.variants  # noqa: B018 - loaded once, outside the timings
                outcomes = session.scalar(text("SELECT count(*) FROM outcomes"))
                whole, stats = timed(partial(aggregation.experiment_stats, session, experiment), args.runs)
                segments, _ = timed(partial(aggregation.segment_stats, session, experiment, "country"), 1)
                daily, series = timed(partial(aggregation.daily_stats, session, experiment), 1)
                quality, _ = timed(partial(aggregation.data_quality, session, experiment), 1)
                plan = " | ".join(line.strip() for line in aggregation.explain_experiment_stats(session, experiment))
            target_cell = stats.cells["purchase"]
            print(
                f"  aggregate {backend:10s} exposures={args.exposures:,} events={target:,} outcome rows={outcomes:,}: "
                f"whole experiment {whole * 1000:.0f} ms (median of {args.runs}); by segment {segments * 1000:.0f} ms; "
                f"daily ({len(series)} days) {daily * 1000:.0f} ms; data quality {quality * 1000:.0f} ms"
            )
            print(
                f"       (events added with bulk SQL in {generated:.0f} s, outcomes rebuilt in {rebuilt:.0f} s) "
                "purchase converters/exposed: "
                + ", ".join(f"{v}: {c.converted}/{c.exposed}" for v, c in target_cell.items())
            )
            print(f"       plan of the exposure count: {plan}")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--phases", default="http,aggregate")
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each HTTP load")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=0, help="client threads (default: 2 per worker)")
    parser.add_argument("--http-customers", type=int, default=100_000)
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--event-sizes", default="1000000,5000000,10000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs, to try the script")
    args = parser.parse_args()
    if args.quick:
        args.http_customers, args.exposures, args.event_sizes, args.runs = 10_000, 50_000, "100000,200000", 3
    args.event_sizes = [int(n) for n in str(args.event_sizes).split(",")]
    backends = args.backends.split(",")
    phases = args.phases.split(",")
    print(f"bench/ingest.py on {os.cpu_count()} CPUs (shared with the load generator and the database)")
    for backend in backends:
        if "http" in phases:
            for workers in (int(w) for w in args.workers.split(",")):
                bench_http(backend, workers, args)
        if "aggregate" in phases:
            bench_aggregation(backend, args)


if __name__ == "__main__":
    main()
