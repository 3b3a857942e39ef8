"""What a large installation needs (issue 16): one simulated day at a billion events,
projected from per-unit costs measured on this machine.

The architecture it sizes: stateless app hosts (gunicorn; assignment needs no
coordination between processes), one PostgreSQL for configuration and the exposure
ledger, and a ClickHouse cluster for the events (written there by the team's own
collector, with their receive time; the platform never ingests them). The fit workers
run each experiment's statistics in ClickHouse: by increments every refresh period,
in full once a day.

The simulation walks the day minute by minute: traffic follows a diurnal curve
(trough at 04:00, peak at 20:00, ``--peak-ratio`` times the trough), each active
customer makes ``--assign-per-customer`` assignment calls, new customers are exposed
to the running experiments, and every refresh period each running experiment's
increment is computed (its share of the day's events so far since the last one),
with the full recomputations spread over the day. It reports the busiest minute of
each tier and the cores (or machines) that keeps each below ``--target-utilisation``.

The per-unit costs default to this machine's measurements (2 cores; the README's
"Measured here"); pass your own, e.g. from ``bench/assign.py`` (workers' CPU per
request) and ``bench/warehouse.py`` (seconds per million events on 2 cores):

    .venv/bin/python bench/scale.py
    .venv/bin/python bench/scale.py --events-per-day 2e9 --experiments 60
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass

MINUTES = 24 * 60


@dataclass(frozen=True)
class Experiment:
    traffic_share: float  # of all customers
    days: int
    started_day: int  # days before the simulated day


def diurnal(minute: int, peak_ratio: float) -> float:
    """Relative traffic at a minute of the day (mean 1 over the day)."""
    phase = 2 * math.pi * (minute - 20 * 60) / MINUTES
    low, high = 1.0, peak_ratio
    raw = (low + high) / 2 + (high - low) / 2 * math.cos(phase)
    return raw / ((low + high) / 2)


def simulate(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    events_per_minute = args.events_per_day / MINUTES
    customers_per_day = args.events_per_day / args.events_per_customer
    experiments = [
        Experiment(rng.choice([0.05, 0.1, 0.2, 0.5, 1.0]), rng.choice([7, 14, 21, 28]), 0)
        for _ in range(args.experiments)
    ]
    experiments = [Experiment(e.traffic_share, e.days, rng.randrange(e.days)) for e in experiments]
    # ClickHouse: CPU-seconds per million events for a full recomputation, and an
    # increment's cost as a share of the full one's per day of events it covers.
    full_cpu_per_m = args.warehouse_full_s_per_m * args.measured_cores
    period = args.refresh_minutes
    peak = {"assign": 0.0, "exposures": 0.0, "warehouse": 0.0}
    warehouse_cpu_day = 0.0
    full_at = {i: rng.randrange(MINUTES) for i in range(len(experiments))}
    for minute in range(MINUTES):
        load = diurnal(minute, args.peak_ratio)
        assigns = customers_per_day / MINUTES * args.assign_per_customer * load
        exposures = customers_per_day / MINUTES * args.new_share * load * sum(e.traffic_share for e in experiments)
        peak["assign"] = max(peak["assign"], assigns / 60)
        peak["exposures"] = max(peak["exposures"], exposures / 60)
        cpu = 0.0
        for i, e in enumerate(experiments):
            days_of_events = e.started_day + minute / MINUTES
            experiment_events_m = events_per_minute * MINUTES * e.traffic_share * days_of_events / 1e6
            if minute == full_at[i]:
                cpu += experiment_events_m * full_cpu_per_m
            elif minute % period == 0:
                increment_share = args.increment_ratio * min(1.0, (period / MINUTES) / max(days_of_events, 1 / 24))
                cpu += experiment_events_m * full_cpu_per_m * increment_share
        warehouse_cpu_day += cpu
        peak["warehouse"] = max(peak["warehouse"], cpu / (period * 60))
    target = args.target_utilisation
    assign_cores = peak["assign"] * args.assign_cpu_ms / 1000 / target
    pg_cores = peak["exposures"] / args.pg_exposures_per_core / target
    ch_cores = max(peak["warehouse"], warehouse_cpu_day / 86_400) / target
    largest = max(experiments, key=lambda e: e.traffic_share * e.days)
    largest_m = args.events_per_day * largest.traffic_share * largest.days / 1e6
    print(
        f"one day at {args.events_per_day:,.0f} events ({customers_per_day:,.0f} active customers), "
        f"{len(experiments)} running experiments, refresh every {period} min, diurnal peak x{args.peak_ratio:g}"
    )
    print(
        f"  assignment   peak {peak['assign']:>10,.0f} calls/s  x {args.assign_cpu_ms} ms CPU  -> "
        f"{assign_cores:,.1f} app cores at {target:.0%} (stateless: add hosts)"
    )
    per_core = args.pg_exposures_per_core
    print(
        f"  exposures    peak {peak['exposures']:>10,.0f} rows/s  PostgreSQL at {per_core:,.0f}/core "
        f"-> {pg_cores:,.1f} cores for the ledger"
    )
    print(
        f"  statistics   {warehouse_cpu_day / 3600:,.0f} ClickHouse core-hours a day, busiest refresh period "
        f"{peak['warehouse']:,.1f} cores -> {ch_cores:,.0f} cores"
    )
    full_s = largest_m * full_cpu_per_m / ch_cores
    print(
        f"  the largest experiment ({largest.traffic_share:.0%} of traffic for {largest.days} days, "
        f"{largest_m:,.0f}M events): a full recomputation {full_s / 60:,.1f} min on {ch_cores:,.0f} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events-per-day", type=float, default=1e9)
    parser.add_argument("--events-per-customer", type=float, default=20.0, help="events per active customer a day")
    parser.add_argument("--assign-per-customer", type=float, default=2.0, help="assignment calls per customer a day")
    parser.add_argument(
        "--new-share", type=float, default=0.1, help="share of active customers exposed for the first time"
    )
    parser.add_argument("--experiments", type=int, default=40)
    parser.add_argument("--refresh-minutes", type=int, default=15)
    parser.add_argument("--peak-ratio", type=float, default=4.0)
    parser.add_argument("--target-utilisation", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1)
    # Measured on this machine (2 cores); see the module docstring.
    parser.add_argument("--measured-cores", type=float, default=2.0)
    parser.add_argument(
        "--assign-cpu-ms",
        type=float,
        default=1.0,
        help="app workers' CPU per assignment (an estimate: bench/assign.py)",
    )
    parser.add_argument(
        "--pg-exposures-per-core", type=float, default=4_500.0, help="first exposures per PostgreSQL core (220 us each)"
    )
    parser.add_argument(
        "--warehouse-full-s-per-m",
        type=float,
        default=0.91,
        help="seconds per 1M events on 2 cores, full statistics (chdb at 50M under a 2 GB bound: 46 s)",
    )
    parser.add_argument(
        "--increment-ratio",
        type=float,
        default=2.9,
        help="an increment's cost share over the share of time it covers (chdb at 50M: the last of 30 days, 9.7%%)",
    )
    simulate(parser.parse_args())


if __name__ == "__main__":
    main()
