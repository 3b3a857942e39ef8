"""Assignment benchmark (issue 3).

1. ``POST /api/v1/assign`` served by real gunicorn, on SQLite (temp dir, WAL) and
   PostgreSQL (throwaway database ``bench_assign``), and in the same run a bare Flask
   endpoint returning a small JSON object, the ceiling, under the same gunicorn
   settings: one table each for 2 sync workers, 2 x cores + 1 sync workers, and 2
   gthread workers of 4 threads.
   ``wrk`` drives each at several concurrencies, for repeat customers (random ids
   among customers already exposed) and for new customers (a unique id per request:
   every request writes its exposure). Prints requests/s, p50 and p99 latency,
   errors, the ratio to the ceiling and the workers' CPU per request (which, unlike
   requests/s, hardly depends on the machine's other load); checks that every
   successful new-customer request left its exposure row; notes the workers' memory.
2. In-process bucketing speed: single calls and the numpy bulk path on 1M ids.
3. Memory over 1M distinct customers: the assignment hot path (``assignment.assign``
   on the real SQLite store, no HTTP) for 1M distinct exposed customers, RSS sampled
   as it goes; per-customer state kept in memory would show as growth.

wrk, the servers and the databases share one (2-core, shared) machine: the figures
are a floor and noisy; compare ratios within one run, not across runs.

    .venv/bin/python bench/assign.py                       # everything (about 5 minutes)
    .venv/bin/python bench/assign.py --quick               # short runs, smaller sizes
    .venv/bin/python bench/assign.py --backends sqlite --concurrency 32
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (beside this script)
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from expplatform import journeys, migrations  # noqa: E402
from expplatform.auth import create_api_key  # noqa: E402
from expplatform.bucketing import Split, place, place_many  # noqa: E402
from expplatform.models import Experiment, Exposure, Variant, utcnow  # noqa: E402
from expplatform.versioning import bump_version  # noqa: E402

PG_DB = "bench_assign"
EXPERIMENT = "checkout-button"
WEIGHTS = (0.5, 0.5)
# Worker settings: every row of a table, the ceiling included, runs under the same one.
# sync: gunicorn's default, one request at a time per worker, no keep-alive (the
# setting of the peer figure in the issue). gthread: threads overlap database waits
# (a PostgreSQL commit waits for its WAL flush), connections are kept alive.
# sync-recommended: gunicorn's recommended worker count for this machine (2 x cores + 1), which
# lets the CPU work while some workers wait on the database.
GUNICORN_SETTINGS = {
    "sync": ["--workers", "2", "--worker-class", "sync", "--backlog", "2048"],
    "sync-recommended": [
        "--workers",
        str(2 * (os.cpu_count() or 1) + 1),
        "--worker-class",
        "sync",
        "--backlog",
        "2048",
    ],
    "gthread": ["--workers", "2", "--worker-class", "gthread", "--threads", "4", "--backlog", "2048"],
}

BARE_APP = """
from flask import Flask

app = Flask("bare")


@app.post("/api/v1/assign")
def assign():
    return {"status": "ok"}


@app.get("/api/v1/health")
def health():
    return {"status": "ok"}
"""

# Repeat customers: ids drawn from those already exposed (BENCH_REPEAT_IDS of them).
REPEAT_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local count = tonumber(os.getenv("BENCH_REPEAT_IDS"))
request = function()
  local body = '{"customer_id": "r' .. math.random(0, count - 1) ..
    '", "experiments": ["checkout-button"], "attributes": {"country": "FR", "platform": "web"}}'
  return wrk.format(nil, "/api/v1/assign", nil, body)
end
"""

# New customers: run tag + thread number + counter, unique over the whole benchmark.
NEW_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local next_thread = 0
setup = function(thread)
  thread:set("tag", os.getenv("BENCH_RUN") .. "-" .. next_thread)
  next_thread = next_thread + 1
end
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"customer_id": "n-' .. tag .. '-' .. counter ..
    '", "experiments": ["checkout-button"], "attributes": {"country": "FR", "platform": "web"}}'
  return wrk.format(nil, "/api/v1/assign", nil, body)
end
"""


# -- databases ---------------------------------------------------------------------------


def fresh_database(backend: str):
    return benchlib.fresh_database(backend, PG_DB)


def prepare(url: str, repeat_customers: int) -> str:
    """Migrate, start one experiment, expose customers r0..r{n-1} (bulk SQL, with the
    variant the bucketing gives them), make a client key; return the key."""
    engine = create_engine(url)
    migrations.upgrade(engine)
    with Session(engine) as session, session.begin():
        experiment = Experiment(
            key=EXPERIMENT,
            name="Checkout button",
            stages=["purchase"],
            target_stage="purchase",
            salt=EXPERIMENT,
            status="running",
            started_at=utcnow(),
            **journeys.implicit_fields(session, ["purchase"]),
        )
        experiment.variants = [
            Variant(key=name, weight=weight, position=i, is_control=i == 0)
            for i, (name, weight) in enumerate(zip(("control", "green"), WEIGHTS, strict=True))
        ]
        session.add(experiment)
        bump_version(session)
        session.flush()
        experiment_id, variant_ids = experiment.id, [v.id for v in experiment.variants]
        _record, key = create_api_key(session, "client", "bench", created_by="bench")
    expose(engine, experiment_id, variant_ids, [f"r{i}" for i in range(repeat_customers)])
    # Planner statistics, as a table in service has them (PostgreSQL's autovacuum
    # would gather them a little later): without them the planner may pick the
    # per-variant index for a customer's exposures.
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    engine.dispose()
    return key


def expose(engine, experiment_id: int, variant_ids: list[int], customers: list[str]) -> None:
    placed = place_many(Split.of(EXPERIMENT, WEIGHTS), customers)
    now = utcnow()
    rows = [
        {
            "experiment_id": experiment_id,
            "variant_id": variant_ids[index],
            "customer_id": customer,
            "exposed_at": now,
            "attributes": {},
            "forced": False,
            "mismatches": 0,
        }
        for customer, index in zip(customers, placed.tolist(), strict=True)
    ]
    with Session(engine) as session, session.begin():
        for start in range(0, len(rows), 50_000):
            session.execute(Exposure.__table__.insert(), rows[start : start + 50_000])


def count_exposures(url: str, prefix: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).where(Exposure.customer_id.startswith(prefix)))
    engine.dispose()
    return count


# -- servers and load ---------------------------------------------------------------------


def _workers(master: int) -> list[str]:
    return Path(f"/proc/{master}/task/{master}/children").read_text().split()


def _cpu_seconds(pid: str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_cpu_seconds(master: int) -> float:
    """User + system CPU of the workers so far: CPU per request does not depend on
    what else the machine is doing, unlike requests/s."""
    return sum(_cpu_seconds(pid) for pid in _workers(master))


def worker_rss_mb(master: int) -> list[float]:
    sizes = []
    for pid in _workers(master):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return sizes


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * _UNITS[unit]


def wrk(port: int, script: Path, connections: int, seconds: float, env: dict[str, str]) -> dict:
    command = [
        "wrk",
        "--latency",
        "-t",
        "2",
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/api/v1/assign",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    socket_errors = (
        sum(map(int, m.groups()))
        if (m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output))
        else 0
    )
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": _ms(re.search(r"\s50%\s+(\S+)", output).group(1)),
        "p99": _ms(re.search(r"\s99%\s+(\S+)", output).group(1)),
        "requests": requests,
        "ok": requests - non_2xx,
        "errors": non_2xx + socket_errors,
    }


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL server process on this machine (the benchmark's are the
    only busy ones): on this machine the database server shares the cores with the
    workers and wrk, so its share per request is part of the picture."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster"):
                total += _cpu_seconds(pid)
        except OSError:  # gone meanwhile
            continue
    return total


def measured(master: int, port: int, script: Path, connections: int, seconds: float, env: dict[str, str]) -> dict:
    before, db_before = worker_cpu_seconds(master), postgres_cpu_seconds()
    result = wrk(port, script, connections, seconds, env)
    requests = max(result["requests"], 1)
    result["cpu_us"] = (worker_cpu_seconds(master) - before) / requests * 1e6
    result["db_cpu_us"] = (postgres_cpu_seconds() - db_before) / requests * 1e6
    return result


def bench_http(args, workdir: Path, worker_settings: str) -> None:
    """The ceiling is measured again right before each backend's rows at each
    concurrency, so a ratio compares runs seconds apart, not minutes apart on a
    machine whose other load keeps changing."""
    settings = GUNICORN_SETTINGS[worker_settings]
    (workdir / "bare_app.py").write_text(BARE_APP)
    (workdir / "repeat.lua").write_text(REPEAT_LUA)
    (workdir / "new.lua").write_text(NEW_LUA)
    print(
        f"\n== gunicorn {' '.join(settings)} for every row; wrk -t2, {args.seconds:g} s per row "
        f"(after a 1 s warm-up); repeat customers drawn from {args.repeat_customers} exposed ids"
    )
    print(
        "cpu us/req: the gunicorn workers' CPU per request (SQLite runs inside them); "
        "pg us/req: the PostgreSQL server processes' CPU per request, on the same cores"
    )
    print(
        f"{'target':<22}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'x ceiling':>11}"
        f"{'cpu us/req':>12}{'pg us/req':>11}"
    )

    def row(name: str, connections: int, result: dict, ceiling: float | None, note: str = "") -> None:
        ratio = f"{result['rps'] / ceiling:.2f}" if ceiling else ""
        database = f"{result['db_cpu_us']:.0f}" if name.startswith("postgresql") else ""
        print(
            f"{name:<22}{connections:>6}{result['rps']:>10.0f}{result['p50']:>9.2f}{result['p99']:>9.2f}"
            f"{result['errors']:>8}{ratio:>11}{result['cpu_us']:>12.0f}{database:>11}{note}",
            flush=True,
        )

    bare_env = {"BENCH_KEY": "none", "BENCH_REPEAT_IDS": "1"}
    with benchlib.gunicorn("bare_app:app", workdir, {}, settings) as (bare_port, bare_master):
        for backend in args.backends:
            with fresh_database(backend) as url:
                key = prepare(url, args.repeat_customers)
                instance = tempfile.mkdtemp(prefix="bench_instance_")
                env = {
                    "EXPPLATFORM_DATABASE_URL": url,
                    "EXPPLATFORM_INSTANCE_PATH": instance,
                    "EXPPLATFORM_SECRET_KEY": "bench-secret",
                }
                try:
                    with benchlib.gunicorn("wsgi:app", ROOT, env, settings) as (port, master):
                        rss_start = worker_rss_mb(master)
                        load_env = {"BENCH_KEY": key, "BENCH_REPEAT_IDS": str(args.repeat_customers)}
                        for connections in args.concurrency:
                            wrk(bare_port, workdir / "repeat.lua", connections, 1, bare_env)
                            ceiling = measured(
                                bare_master, bare_port, workdir / "repeat.lua", connections, args.seconds, bare_env
                            )
                            row("bare flask (ceiling)", connections, ceiling, None)
                            wrk(port, workdir / "repeat.lua", connections, 1, load_env)
                            result = measured(master, port, workdir / "repeat.lua", connections, args.seconds, load_env)
                            row(f"{backend} repeat", connections, result, ceiling["rps"])
                            run = f"{worker_settings}-{backend}{connections}"
                            result = measured(
                                master,
                                port,
                                workdir / "new.lua",
                                connections,
                                args.seconds,
                                {**load_env, "BENCH_RUN": run},
                            )
                            stored = count_exposures(url, f"n-{run}-")
                            # wrk stops counting at the deadline; the server may finish a few more.
                            check = "" if stored >= result["ok"] else f"  MISSING {result['ok'] - stored} exposures"
                            row(
                                f"{backend} new",
                                connections,
                                result,
                                ceiling["rps"],
                                f"  ({stored} exposures stored){check}",
                            )
                        rss_end = worker_rss_mb(master)
                    print(
                        f"{backend} worker RSS MB, start -> end: "
                        + ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in zip(rss_start, rss_end, strict=True))
                    )
                finally:
                    shutil.rmtree(instance, ignore_errors=True)


# -- in process ------------------------------------------------------------------------------


def bench_bucketing(args) -> None:
    ids = [f"customer-{i}" for i in range(args.bulk_ids)]
    for label, split in (
        ("2 variants", Split.of(EXPERIMENT, WEIGHTS)),
        ("3 variants, traffic 0.5, layer 40%", Split.of("x", [0.2, 0.3, 0.5], 0.5, "home", [[0, 4000]])),
    ):
        single = ids[: args.single_ids]
        started = time.perf_counter()
        for customer in single:
            place(split, customer)
        single_rate = len(single) / (time.perf_counter() - started)
        started = time.perf_counter()
        place_many(split, ids)
        bulk_rate = len(ids) / (time.perf_counter() - started)
        print(f"bucketing, {label}: single {single_rate:,.0f}/s; bulk (numpy) {bulk_rate:,.0f}/s over {len(ids):,} ids")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def bench_memory(args) -> None:
    from expplatform import assignment, create_app

    with fresh_database("sqlite") as url:
        prepare(url, 0)
        engine = create_engine(url)
        with engine.connect() as connection:
            experiment_id = connection.scalar(select(Experiment.id))
            variant_ids = list(connection.scalars(select(Variant.id).order_by(Variant.position)))
        customers = [f"m{i}" for i in range(args.memory_customers)]
        expose(engine, experiment_id, variant_ids, customers)
        engine.dispose()
        instance = tempfile.mkdtemp(prefix="bench_instance_")
        app = create_app({"database_url": url, "instance_path": instance, "secret_key": "bench"})
        try:
            store = assignment.exposure_store(app)
            samples = []
            step = max(1, len(customers) // 4)
            started = time.perf_counter()
            for i, customer in enumerate(customers):
                if i % step == 0:
                    samples.append((i, _rss_mb()))
                request = assignment.AssignRequest(customer, {"country": "FR"}, (EXPERIMENT,))
                [served] = assignment.assign(store, assignment.definitions(app), request)
                assert served.enrolled
            elapsed = time.perf_counter() - started
            samples.append((len(customers), _rss_mb()))
        finally:
            app.extensions["db"].engine.dispose()
            shutil.rmtree(instance, ignore_errors=True)
    print(
        f"hot path over {len(customers):,} distinct exposed customers (SQLite, no HTTP): "
        f"{len(customers) / elapsed:,.0f} assignments/s; RSS MB " + ", ".join(f"{n:,}: {mb:.1f}" for n, mb in samples)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat-customers", type=int, default=20_000)
    parser.add_argument("--memory-customers", type=int, default=1_000_000)
    parser.add_argument("--bulk-ids", type=int, default=1_000_000)
    parser.add_argument("--single-ids", type=int, default=200_000)
    parser.add_argument("--workers", nargs="+", default=list(GUNICORN_SETTINGS), choices=list(GUNICORN_SETTINGS))
    parser.add_argument(
        "--phases", nargs="+", default=["bucketing", "http", "memory"], choices=["bucketing", "http", "memory"]
    )
    parser.add_argument("--quick", action="store_true", help="short runs and small sizes (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.concurrency = 2.0, [32]
        args.repeat_customers, args.memory_customers, args.bulk_ids, args.single_ids = 2_000, 20_000, 100_000, 20_000
    if "http" in args.phases and shutil.which("wrk") is None:
        sys.exit("wrk is needed for the HTTP phase: apt-get install -y wrk (or --phases bucketing memory)")
    print(f"expplatform assignment benchmark; {os.cpu_count()} CPUs, shared with everything else running")
    if "bucketing" in args.phases:
        bench_bucketing(args)
    if "http" in args.phases:
        for worker_settings in args.workers:
            with tempfile.TemporaryDirectory(prefix="bench_assign_") as workdir:
                bench_http(args, Path(workdir), worker_settings)
    if "memory" in args.phases:
        bench_memory(args)


if __name__ == "__main__":
    main()
