"""Warehouse-native statistics benchmark (issue 16): how long one experiment's full
statistics take inside DuckDB and ClickHouse (the embedded chdb), at 10M and 50M
raw events on this machine, with the memory bound of ``warehouse_memory_limit_mb``.

The events are generated once per size by DuckDB into a Parquet file, and both
engines load that same file, so the run also checks that they compute the same
cells. The data: one experiment over 28 days, a tenth as many customers as events,
exposed evenly over 27 days (half per variant, 1 in 500 forced); events within 3
days of a customer's exposure (some up to 2 s before it), 70% conversions and 30%
ratings 1-5 over five stages (a question at purchase and retention), received up to
a minute later; 10% from customers never exposed; 1% of events resent an hour later
(half of those under another customer).

Each engine and size runs in a child process (chdb opens one data folder per
process; each case loads in one and computes in another, so the peak memory is the
statistics' own). Printed per case: rows,
load time (on ClickHouse, with each table's parts merged into one, as at rest), the
full statistics' time (median of --repeat), a plain GROUP BY over the
same events as the baseline in the same process and its ratio, the cells, the
process's peak RSS, and a daily incremental refresh: the statistics as of the start
of the last day plus what that day's events change (checked equal to the full ones).

    .venv/bin/python bench/warehouse.py                       # 10M and 50M, both engines
    .venv/bin/python bench/warehouse.py --sizes 1000000 --engines duckdb
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from expplatform.models import WarehouseSource  # noqa: E402
from expplatform.warehouse import query  # noqa: E402
from expplatform.warehouse.engines import warehouse_engine  # noqa: E402
from expplatform.warehouse.mapping import DEFAULT_EVENT_COLUMNS, DEFAULT_EXPOSURE_COLUMNS  # noqa: E402
from expplatform.warehouse.refresh import as_list, compute_cells, compute_increment  # noqa: E402

BASE = datetime(2024, 5, 1, tzinfo=UTC)
LAST_DAY = 29  # the events run from day 0 to day 30 (exposures over 27 days, events within 3 after)
DAY_US = 86_400 * 1_000_000
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
RULES = query.Rules(
    experiment_key="bench",
    stages=STAGES,
    questions={
        "purchase": query.Question("purchase-csat", 1, 5, True),
        "retention": query.Question("retention-csat", 1, 5, True),
    },
    stopped_at=None,
)


def generate(events: int, folder: Path) -> tuple[Path, Path]:
    """The events and exposures as Parquet files, made by DuckDB from hashes."""
    import duckdb

    customers = max(events // 10, 10)
    exposed_us = f"((c * {27 * 86_400} // {customers}) * 1000000)"
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{4096}MB'")
    events_file, exposures_file = folder / "events.parquet", folder / "exposures.parquet"
    con.execute(
        f"""
        COPY (
          WITH raw AS (
            SELECT j, (hash(j, 1) % {customers * 11 // 10})::BIGINT AS c, (hash(j, 2) % 5)::BIGINT AS s,
                   (hash(j, 3) % 10)::BIGINT AS k,
                   1 + (hash(j, 4) % 5)::BIGINT AS v, (hash(j, 5) % {3 * DAY_US})::BIGINT - 2000000 AS after_us,
                   (hash(j, 6) % 60000000)::BIGINT AS delay_us
            FROM range({events}) t(j)
          ), made AS (
            SELECT 'e' || j AS event_id, j AS sequence, 'c' || c AS customer_id,
                   ['awareness', 'consideration', 'purchase', 'retention', 'advocacy'][s + 1] AS stage,
                   CASE WHEN k < 7 THEN 'conversion' ELSE 'satisfaction' END AS kind,
                   CASE WHEN k < 7 THEN NULL ELSE v END::INTEGER AS value,
                   TIMESTAMPTZ '2024-05-01 00:00:00+00' + to_microseconds(({exposed_us} + after_us)::BIGINT)
                       AS occurred_at,
                   delay_us, j AS n
            FROM raw
          )
          SELECT event_id, sequence, customer_id, stage, kind, NULL::VARCHAR AS metric, value, occurred_at,
                 occurred_at + to_microseconds(delay_us::BIGINT) AS received_at,
                 least(occurred_at + INTERVAL 5 SECOND, occurred_at + to_microseconds(delay_us::BIGINT))
                     AS exposure_cutoff,
                 NULL::VARCHAR AS experiment
          FROM made
          UNION ALL
          SELECT event_id, {events} + n, CASE WHEN n % 200 = 0 THEN 'c' || (n % {customers}) ELSE customer_id END,
                 stage, kind, NULL::VARCHAR, value, occurred_at,
                 occurred_at + to_microseconds(delay_us::BIGINT) + INTERVAL 1 HOUR,
                 occurred_at + INTERVAL 5 SECOND, NULL::VARCHAR
          FROM made WHERE n % 100 = 0
        ) TO '{events_file}' (FORMAT parquet)
        """
    )
    con.execute(
        f"""
        COPY (
          SELECT 'bench' AS experiment, 'c' || c AS customer_id,
                 CASE WHEN c % 2 = 0 THEN 'control' ELSE 'treatment' END AS variant,
                 TIMESTAMPTZ '2024-05-01 00:00:00+00' + to_microseconds({exposed_us}::BIGINT) AS exposed_at,
                 c % 500 = 0 AS forced
          FROM range({customers}) t(c)
        ) TO '{exposures_file}' (FORMAT parquet)
        """
    )
    con.close()
    return events_file, exposures_file


def load(engine_name: str, folder: Path, events_file: Path, exposures_file: Path) -> str:
    """The source URL, with both tables loaded from the Parquet files."""
    if engine_name == "duckdb":
        url = f"duckdb:///{folder / 'warehouse.duckdb'}"
        with warehouse_engine(url).begin() as c:
            # In the order they arrived, as a warehouse appends them (its zone maps then
            # let a daily increment skip the older events).
            c.execute(text(f"CREATE TABLE events AS SELECT * FROM read_parquet('{events_file}') ORDER BY received_at"))
            c.execute(text(f"CREATE TABLE exposures AS SELECT * FROM read_parquet('{exposures_file}')"))
        return url
    url = f"chdb://{folder / 'chdb'}"
    with warehouse_engine(url).begin() as c:
        c.execute(
            text(
                "CREATE TABLE events (event_id String, sequence Int64, customer_id String,"
                " stage LowCardinality(String), kind LowCardinality(String), metric String, value Nullable(Int32),"
                " occurred_at DateTime64(6, 'UTC'), received_at DateTime64(6, 'UTC'),"
                " exposure_cutoff DateTime64(6, 'UTC'), experiment String,"
                " INDEX occurred occurred_at TYPE minmax GRANULARITY 1)"
                " ENGINE = MergeTree ORDER BY (toDate(received_at), event_id)"
            )
        )
        c.execute(
            text(
                "CREATE TABLE exposures (experiment String, customer_id String, variant String,"
                " exposed_at DateTime64(6, 'UTC'), forced Bool) ENGINE = MergeTree ORDER BY (experiment, customer_id)"
            )
        )
        c.execute(
            text(
                "INSERT INTO events SELECT event_id, sequence, customer_id, stage, kind, ifNull(metric, ''), value,"
                " occurred_at, received_at, exposure_cutoff, ifNull(experiment, '')"
                f" FROM file('{events_file}', Parquet)"
            )
        )
        c.execute(text(f"INSERT INTO exposures SELECT * FROM file('{exposures_file}', Parquet)"))
        # Merged into one part each, as a table at rest: an insert leaves dozens of
        # parts, which the engine merges in the background of the next process to open
        # the folder, i.e. during the first timed run (69 s against 53 s at 50M).
        c.execute(text("OPTIMIZE TABLE events FINAL"))
        c.execute(text("OPTIMIZE TABLE exposures FINAL"))
    return url


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps ``ru_maxrss`` across
    ``exec``, so a child would report its parent's peak (generating the data takes
    3 GB); the memory map's own high-water mark starts afresh."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    if args.load:
        began = time.perf_counter()
        url = load(args.engine, folder, folder / "events.parquet", folder / "exposures.parquet")
        print(json.dumps({"url": url, "load_s": round(time.perf_counter() - began, 2)}))
        return
    loaded = json.loads((folder / f"load-{args.engine}.json").read_text())
    url = loaded["url"]
    source = WarehouseSource(
        key="bench",
        name="bench",
        url=url,
        events_table="events",
        events_columns=DEFAULT_EVENT_COLUMNS,
        exposures_table="exposures",
        exposures_columns=DEFAULT_EXPOSURE_COLUMNS,
        clock_skew_seconds=5.0,
    )
    engine = warehouse_engine(url, memory_limit_mb=args.memory_mb)
    with engine.connect() as c:
        rows = c.execute(text("SELECT count(*) FROM events")).scalar()
        began = time.perf_counter()
        c.execute(text("SELECT stage, kind, count(*) FROM events GROUP BY stage, kind")).all()
        baseline = time.perf_counter() - began
    times, cells = [], []
    for _ in range(args.repeat):
        began = time.perf_counter()
        cells = compute_cells(source, RULES, BASE, memory_limit_mb=args.memory_mb)
        times.append(time.perf_counter() - began)
    # A daily refresh: the statistics as of the start of the last day (the last full
    # one), then what the last day's events change.
    last_day = BASE + timedelta(days=LAST_DAY)
    end = BASE + timedelta(days=40)
    before = compute_cells(source, RULES, BASE, received_before=last_day, memory_limit_mb=args.memory_mb)
    increments = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        increment = compute_increment(source, RULES, BASE, since=last_day, before=end, memory_limit_mb=args.memory_mb)
        increments.append(time.perf_counter() - began)
    outcomes = Counter({tuple(c[:5]): c[5] for c in before if c[0] != "exposed"})
    outcomes.update(increment.outcomes)
    assert as_list(outcomes + increment.exposed_now) == cells, "the increment does not add up to the full statistics"
    peak_mb = peak_rss_mb()
    (folder / f"cells-{args.engine}.json").write_text(json.dumps(cells))
    full = statistics.median(times)
    print(
        json.dumps(
            {
                "engine": args.engine,
                "rows": rows,
                "load_s": loaded["load_s"],
                "full_s": round(full, 2),
                "runs_s": [round(t, 2) for t in times],
                "baseline_group_by_s": round(baseline, 3),
                "ratio": round(full / baseline, 1),
                "incremental_s": round(statistics.median(increments), 2),
                "cells": len(cells),
                "peak_rss_mb": round(peak_mb),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000000,50000000", help="events per case (before resends)")
    parser.add_argument("--engines", default="duckdb,clickhouse")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=2048, help="warehouse_memory_limit_mb")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"warehouse statistics, memory limit {args.memory_mb} MB, {os.cpu_count()} cores")
    for size in (int(s) for s in args.sizes.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="bench_warehouse_"))
        try:
            began = time.perf_counter()
            generate(size, folder)
            print(f"\n{size:,} events (+1% resent): generated in {time.perf_counter() - began:.1f} s")
            for engine_name in args.engines.split(","):
                command = [sys.executable, __file__, "--child", "--engine", engine_name, "--folder", str(folder)]
                command += ["--repeat", str(args.repeat), "--memory-mb", str(args.memory_mb)]
                # Loaded by one process and computed by another, so the peak memory is the
                # statistics' own.
                loading = subprocess.run([*command, "--load"], capture_output=True, text=True, check=True)
                (folder / f"load-{engine_name}.json").write_text(loading.stdout.strip().splitlines()[-1])
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:  # e.g. the memory limit: say so and go on
                    lines = [line for line in done.stderr.splitlines() if "Error" in line or "Exception" in line]
                    print(f"  {engine_name:<10} FAILED: {(lines or ['no message'])[-1][:400]}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"  {engine_name:<10} rows {result['rows']:>11,}  load {result['load_s']:>6.1f} s  "
                    f"full statistics {result['full_s']:>6.2f} s (runs {result['runs_s']})  "
                    f"baseline GROUP BY {result['baseline_group_by_s']:.3f} s (x{result['ratio']})  "
                    f"cells {result['cells']:,}  peak RSS {result['peak_rss_mb']:,} MB\n"
                    f"  {'':<10} daily incremental refresh (the last day's events) {result['incremental_s']:.2f} s,"
                    " equal to the full statistics"
                )
            found = {
                e: json.loads((folder / f"cells-{e}.json").read_text())
                for e in args.engines.split(",")
                if (folder / f"cells-{e}.json").exists()
            }
            if len(found) > 1:
                same = len({json.dumps(c) for c in found.values()}) == 1
                print(f"  the engines' cells are {'identical' if same else 'DIFFERENT'}")
                if not same:
                    sys.exit(1)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
