"""Backfill benchmark: what ``make run`` does the first time, ``expplatform demo
setup`` then ``expplatform demo seed`` (about 50,000 customers of the demo scenario
over 28 days, five experiments), into a fresh database, on SQLite and (when
EXPPLATFORM_TEST_POSTGRES_URL or BENCH_PG_URL names a server) PostgreSQL.

Printed per backend: the wall time of the seeding command and the CPU time of its
process, the phases it reports (simulating the customers, writing the rows,
rebuilding outcomes and counters), the rows written, and the wall time of a second
``demo seed`` (which finds the history there and returns).

The machine has 2 cores shared with everything else running on it: figures are noisy;
the CPU time is the steadier figure.

    .venv/bin/python bench/backfill.py                      # both backends when PG is set
    .venv/bin/python bench/backfill.py --backends sqlite
    .venv/bin/python bench/backfill.py --customers 10000
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import fresh_database

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """Run ``expplatform ARGS``: (wall seconds, CPU seconds of the process, output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "expplatform.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"expplatform {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout + done.stderr


def run(backend: str, customers: int) -> None:
    with fresh_database(backend, "bench_backfill") as url, tempfile.TemporaryDirectory() as instance:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EXPPLATFORM_DATABASE_URL": url,
            "EXPPLATFORM_INSTANCE_PATH": instance,
        }
        cli(env, "db", "upgrade")
        cli(env, "demo", "setup")
        wall, cpu, output = cli(env, "demo", "seed", "--customers", str(customers))
        phases = re.search(r"\((\S+) s to simulate, (\S+) s to write\)", output)
        rebuilt = re.search(r"rebuilt in (\S+) s", output)
        rows = re.search(r": (\S+) of \S+ exposures and (\S+) of \S+ events were new", output)
        assert phases and rebuilt and rows, output
        print(
            f"{backend:<10} demo seed, {customers:,} customers: {wall:5.1f} s wall, {cpu:5.1f} s CPU; "
            f"simulate {phases[1]} s, write {phases[2]} s, rebuild {rebuilt[1]} s; "
            f"{rows[1]} exposures, {rows[2]} events"
        )
        again, _cpu, output = cli(env, "demo", "seed")
        assert "there already" in output, output
        print(f"{backend:<10} a second demo seed: {again:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pg = os.environ.get("BENCH_PG_URL") or os.environ.get("EXPPLATFORM_TEST_POSTGRES_URL")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"] if pg else ["sqlite"])
    parser.add_argument("--customers", type=int, default=50_000)
    args = parser.parse_args()
    for backend in args.backends:
        run(backend, args.customers)


if __name__ == "__main__":
    main()
