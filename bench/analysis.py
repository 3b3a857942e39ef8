"""Analysis engine benchmark (issue 5). Prints:

- the conjugate analysis of 5 stages x 4 variants x 2 metrics (conversion and a 1-5
  satisfaction scale, with its mean rating and top-box share): wall-clock median and
  min over repeats, and the CPU time (single-threaded, so it is what the wall clock
  would be on an idle core), with the largest Monte Carlo error of any P(better);
  the same on a 0-10
  scale (NPS too), for an A/A experiment, with a rating question of its own per stage
  (none, 1-5, 1-7, none, 0-10), with small samples (P(better) partly simulated), and
  in the time-series mode (FAST_DRAWS, no top-up);
- the full model on 5 stages x 3 variants, 4 chains x 1000 draws after 1000 tuning
  steps: cold (a new process with an empty PyTensor compile cache) and warm (a new
  process with that cache filled), split into compile and sampling, with R-hat,
  ESS and divergences;
- calibration: 95% interval coverage of the relative lift and the calibration of
  P(better) over simulated experiments whose truths are drawn from the prior;
- peeking-safe decisions (issue 12): how often ``ship`` / ``harmful`` is ever called
  over 14 or 60 daily looks for A/A, A/A/A, 3% worse and 3% better treatments, on
  conversion (baselines 2%, 10%, 50%; 100, 400, 5000 customers per arm per day) and on
  the mean rating (1-5 and 0-10 scales), 1,000 simulated experiments each, with the
  Monte Carlo 95% interval (Clopper-Pearson) of the worst cell; the power at a 10%
  baseline with 400 per arm per day; the planned median days against simulation.

The machine has 2 cores shared with everything else running on it: figures are noisy.

    .venv/bin/python bench/analysis.py             # everything (a few minutes)
    .venv/bin/python bench/analysis.py --no-full   # skip the full model
    .venv/bin/python bench/analysis.py --no-full --no-decisions   # timing and calibration only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import FAST_DRAWS, CellStats, ExperimentStats, Prior, Scale, analyze
from analysis.operating import Calls, binomial_interval, simulate_conversion, simulate_rating
from analysis.planning import plan

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
BASE_RATES = (0.6, 0.35, 0.12, 0.06, 0.03)
CSAT = (0.05, 0.07, 0.18, 0.35, 0.35)


# A journey whose stages ask different questions: none, a 1-5 CSAT, a 1-7 effort
# score, none, a 0-10 recommendation (NPS).
MIXED = {"awareness": None, "consideration": Scale(1, 5), "purchase": Scale(1, 7), "retention": None}
MIXED["advocacy"] = Scale(0, 10)


def _shape(scale: Scale) -> np.ndarray:
    if scale.categories == 5:
        return np.array(CSAT)
    if scale.categories == 11:
        return np.array([1, 1, 1, 1, 2, 3, 5, 10, 20, 25, 31]) / 100
    weights = np.arange(1, scale.categories + 1, dtype=float)  # higher ratings likelier
    return weights / weights.sum()


def experiment(
    variants, lifts, exposed=20_000, scale=Scale(1, 5), rated_share=0.2, seed=1, stage_scales=None
) -> ExperimentStats:
    """Conversion at each stage = base rate x (1 + lift); ratings from a fixed
    histogram shape for up to ``rated_share`` of the exposed converters, on ``scale``
    or the stage's own (``stage_scales``; None: no rating question, no ratings)."""
    rng = np.random.default_rng(seed)
    stage_scales = stage_scales or {}
    cells = {}
    for i, stage in enumerate(STAGES):
        cells[stage] = {}
        own = stage_scales.get(stage, scale)
        for variant, lift in zip(variants, lifts, strict=True):
            converted = int(rng.binomial(exposed, BASE_RATES[i] * (1 + lift)))
            ratings = rng.multinomial(min(converted, int(exposed * rated_share)), _shape(own)) if own else ()
            cells[stage][variant] = CellStats(exposed, converted, tuple(int(r) for r in ratings))
    weights = (1 / len(variants),) * len(variants)
    return ExperimentStats(
        STAGES, "purchase", tuple(variants), variants[0], weights, scale, cells, stage_scales=stage_scales
    )


def time_conjugate(label: str, stats: ExperimentStats, repeats: int = 30, **kwargs) -> None:
    analyze(stats, **kwargs)  # imports and first-call costs out of the way
    seconds, cpu, worst = [], [], 0.0
    for seed in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = analyze(stats, seed=seed, **kwargs)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        errors = [c.p_better_error for s in result.stages for m in s.metrics for c in m.comparisons]
        worst = max([worst] + [e for e in errors if e is not None])
    print(
        f"  {label:<56} wall median {statistics.median(seconds) * 1e3:5.1f} ms, min {min(seconds) * 1e3:5.1f} ms;"
        f" CPU median {statistics.median(cpu) * 1e3:5.1f} ms; max P(better) MC error {worst:.4f}"
    )


def conjugate_figures() -> None:
    print("Conjugate analysis, 5 stages x 4 variants x 2 metrics (median of 30, default draws):")
    four = ("A", "B", "C", "D")
    time_conjugate("1-5 scale, 20k exposed per variant, effects", experiment(four, (0, 0.03, -0.02, 0)))
    time_conjugate("1-5 scale, A/A (no effects)", experiment(four, (0, 0, 0, 0)))
    time_conjugate("0-10 scale (mean rating, top box, NPS)", experiment(four, (0, 0.03, -0.02, 0), scale=Scale(0, 10)))
    time_conjugate(
        "a question per stage: none, 1-5, 1-7, none, 0-10",
        experiment(four, (0, 0.03, -0.02, 0), stage_scales=MIXED),
    )
    small = experiment(four, (0, 0.1, -0.1, 0), exposed=300, rated_share=0.02)
    time_conjugate("1-5 scale, 300 exposed, ~6 ratings per cell (simulated)", small)
    time_conjugate(
        "time-series mode (FAST_DRAWS, max_p_better_error=None)",
        experiment(four, (0, 0.03, -0.02, 0)),
        draws=FAST_DRAWS,
        max_p_better_error=None,
    )


FULL_MODEL_CHILD = """
import importlib.util, json, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
started = time.perf_counter()
import pymc  # noqa: F401
imported = time.perf_counter() - started
spec = importlib.util.spec_from_file_location("bench_analysis", {bench!r})
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from analysis.hierarchical import fit_full_model
stats = bench.experiment(("A", "B", "C"), (0, 0.04, -0.03))
started = time.perf_counter()
result = fit_full_model(stats, draws=1000, tune=1000, chains=4, seed=1)
total = time.perf_counter() - started
d = result.diagnostics
print(json.dumps(dict(import_s=imported, total_s=total, compile_s=d.seconds_compile, sampling_s=d.seconds_sampling,
                      r_hat=d.r_hat_max, ess_bulk=d.ess_bulk_min, ess_tail=d.ess_tail_min,
                      divergences=d.divergences, sampler=d.sampler, status=result.status)))
"""


def full_model_figures() -> None:
    print("Full model, 5 stages x 3 variants, 4 chains x (1000 tune + 1000 draws), cores = CPUs available:")
    root = Path(__file__).resolve().parents[1]
    code = FULL_MODEL_CHILD.format(root=str(root), bench=str(Path(__file__).resolve()))
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, PYTENSOR_FLAGS=f"compiledir={Path(scratch, 'pytensor')}")
        for label in ("cold (empty compile cache)", "warm (compile cache filled)"):
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
            if run.returncode != 0:
                print(f"  {label}: failed\n{run.stderr[-2000:]}")
                return
            f = json.loads(run.stdout.strip().splitlines()[-1])
            print(
                f"  {label:<28} fit {f['total_s']:6.1f} s = compile {f['compile_s']:5.1f} s + sampling "
                f"{f['sampling_s']:5.1f} s (+ import pymc {f['import_s']:.1f} s); R-hat max {f['r_hat']:.4f}, "
                f"ESS bulk/tail min {f['ess_bulk']:.0f}/{f['ess_tail']:.0f}, divergences {f['divergences']}, "
                f"{f['sampler']}, status {f['status']}"
            )


def calibration_figures(experiments: int = 1000, stages_each: int = 3) -> None:
    """Simulation-based calibration, as in tests/test_analysis_calibration.py."""
    prior = Prior(conversion_alpha=2.0, conversion_beta=8.0, rating_concentration=2.0)
    ratings = np.arange(1, 6, dtype=float)
    rng = np.random.default_rng(7)
    units = experiments * stages_each
    p = rng.beta(prior.conversion_alpha, prior.conversion_beta, size=(units, 2))
    theta = rng.dirichlet([prior.rating_concentration] * 5, size=(units, 2))
    exposed = rng.integers(200, 3000, size=(units, 2))
    converted = rng.binomial(exposed, p)
    rated = rng.integers(20, 200, size=(units, 2))
    truth = {"conversion": p[:, 1] / p[:, 0] - 1, "mean_rating": (theta @ ratings)[:, 1] / (theta @ ratings)[:, 0] - 1}
    covered = {m: [] for m in truth}
    p_better, better = [], []
    chunk = 300
    for start in range(0, units, chunk):
        names = tuple(f"u{u}" for u in range(start, start + chunk))
        cells = {
            name: {
                v: CellStats(
                    int(exposed[u, j]),
                    int(converted[u, j]),
                    tuple(int(c) for c in rng.multinomial(rated[u, j], theta[u, j])),
                )
                for j, v in enumerate(("A", "B"))
            }
            for u, name in zip(range(start, start + chunk), names, strict=True)
        }
        stats = ExperimentStats(names, names[0], ("A", "B"), "A", (0.5, 0.5), Scale(1, 5), cells)
        result = analyze(stats, prior=prior, draws=2000, max_p_better_error=None, seed=start)
        for u, stage in zip(range(start, start + chunk), result.stages, strict=True):
            for metric in truth:
                c = stage.metric(metric).comparison("B")
                covered[metric].append(c.relative_lift.low <= truth[metric][u] <= c.relative_lift.high)
                p_better.append(c.p_better)
                better.append(truth[metric][u] > 0)
    p_better, better = np.array(p_better), np.array(better)
    print(f"Calibration, {experiments} simulated experiments x {stages_each} stages, truths from the prior:")
    for metric, hits in covered.items():
        print(
            f"  95% interval of the relative lift covers the truth ({metric:<11}) {np.mean(hits):.1%}  (target 93-97%)"
        )
    confident = p_better >= 0.9
    print(
        f"  of {confident.sum()} comparisons with P(better) in [0.9, 1], "
        f"truly better: {better[confident].mean():.1%}  (target >= 90%)"
    )
    for low in np.arange(0, 1, 0.2):
        in_bin = (p_better >= low) & (p_better < low + 0.2)
        print(
            f"    P(better) in [{low:.1f}, {low + 0.2:.1f}): mean {p_better[in_bin].mean():.3f}, "
            f"truly better {better[in_bin].mean():.3f}"
        )


def _rate(calls: Calls, harmful: bool) -> tuple[int, int]:
    days = calls.harm_day if harmful else calls.ship_day
    return int((days > 0).any(axis=1).sum()), calls.simulations


def _cell(hits: int, n: int) -> str:
    low, high = binomial_interval(hits, n)
    return f"{hits / n:5.1%} [{low:4.1%},{high:4.1%}]"


def decision_figures(simulations: int = 1000) -> None:
    """The targets of issue 12, measured with ``analysis.operating`` (the functions
    ``analyze`` decides with, applied to simulated cumulative counts at every look)."""
    rng = np.random.default_rng(12)
    print(
        f"Peeking-safe decisions, {simulations} simulated experiments per cell, a look every day; "
        "share of experiments where the call is EVER made [Monte Carlo 95% interval]:"
    )
    header = (
        "  looks base  per/day | ship: A/A (<=5%)        A/A/A (<=5%)        3% worse (<=1%)    "
        "| harmful: A/A (<=5%)     A/A/A (<=5%)        3% better (<=1%)"
    )
    print(header)
    worst = {"aa": (0, 1), "aaa": (0, 1), "worse": (0, 1), "haa": (0, 1), "haaa": (0, 1), "better": (0, 1)}

    def keep(key: str, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] / value[1] > worst[key][0] / worst[key][1]:
            worst[key] = value
        return value

    for days in (14, 60):
        for baseline in (0.02, 0.10, 0.50):
            for per_day in (100, 400, 5000):
                runs = {
                    lifts: simulate_conversion(
                        rng, baseline=baseline, lifts=lifts, per_day=per_day, days=days, simulations=simulations
                    )
                    for lifts in ((0.0,), (0.0, 0.0), (-0.03,), (0.03,))
                }
                cells = [
                    keep("aa", _rate(runs[(0.0,)], False)),
                    keep("aaa", _rate(runs[(0.0, 0.0)], False)),
                    keep("worse", _rate(runs[(-0.03,)], False)),
                    keep("haa", _rate(runs[(0.0,)], True)),
                    keep("haaa", _rate(runs[(0.0, 0.0)], True)),
                    keep("better", _rate(runs[(0.03,)], True)),
                ]
                text = [_cell(*c) for c in cells]
                print(
                    f"  {days:5d} {baseline:4.0%} {per_day:6d}   | "
                    + "  ".join(text[:3])
                    + " | "
                    + "  ".join(text[3:]),
                    flush=True,
                )
    fixed = [
        simulate_conversion(rng, baseline=0.1, lifts=lifts, per_day=400, days=14, simulations=simulations, design=None)
        for lifts in ((0.0,), (0.0, 0.0), (-0.03,))
    ]
    print(
        "  before (fixed-horizon rule, analyze(..., sequential=None)), 14 looks, 10%, 400 per arm per day: ship ever "
        f"A/A {_cell(*_rate(fixed[0], False))}, A/A/A {_cell(*_rate(fixed[1], False))}, "
        f"3% worse {_cell(*_rate(fixed[2], False))}"
    )
    print("  worst cells (conversion): " + ", ".join(f"{k} {_cell(*v)}" for k, v in worst.items()))

    csat = np.array(CSAT)
    nps = np.array([1, 1, 1, 1, 2, 3, 5, 10, 20, 25, 31]) / 100
    print("  Mean rating (per/day = ratings per arm per day; Bayesian conditions taken as met: upper bounds):")
    for label, probs, values in (("1-5 ", csat, np.arange(1, 6.0)), ("0-10", nps, np.arange(0, 11.0))):
        for days in (14, 60):
            for per_day in (20, 100, 400, 5000):
                runs = {
                    lifts: simulate_rating(
                        rng,
                        probs=probs,
                        values=values,
                        lifts=lifts,
                        per_day=per_day,
                        days=days,
                        simulations=simulations,
                    )
                    for lifts in ((0.0,), (0.0, 0.0), (-0.03,), (0.03,))
                }
                text = [
                    _cell(*_rate(runs[(0.0,)], False)),
                    _cell(*_rate(runs[(0.0, 0.0)], False)),
                    _cell(*_rate(runs[(-0.03,)], False)),
                    _cell(*_rate(runs[(0.0,)], True)),
                    _cell(*_rate(runs[(0.0, 0.0)], True)),
                    _cell(*_rate(runs[(0.03,)], True)),
                ]
                print(f"  {label} {days:3d} {per_day:6d}    | " + "  ".join(text[:3]) + " | " + "  ".join(text[3:]))

    print("  Power at a 10% baseline, 400 customers per arm per day (2,000 experiments each):")
    plus15 = simulate_conversion(rng, baseline=0.1, lifts=(0.15,), per_day=400, days=28, simulations=2000)
    plus30 = simulate_conversion(rng, baseline=0.1, lifts=(0.30,), per_day=400, days=28, simulations=2000)
    print(
        f"    +15%: ship within 28 days {_cell(int(plus15.ship_by(28) * 2000), 2000)} (target >= 80%); "
        f"median day {plus15.median_ship_day():.0f}"
    )
    print(
        f"    +30%: median day of ship {plus30.median_ship_day():.0f} (target <= 7); by day 28 {plus30.ship_by(28):.1%}"
    )

    print("  Planning (analysis.planning.plan) against 1,000 simulated experiments (target: within 25%):")
    for baseline, lift, per_day, arms in (
        (0.1, 0.15, 400, 2),
        (0.1, 0.3, 400, 2),
        (0.02, 0.2, 2000, 2),
        (0.5, 0.05, 1000, 2),
        (0.1, 0.1, 400, 3),
    ):
        planned = plan(baseline=baseline, lift=lift, per_arm_per_day=per_day, arms=arms, max_days=150)
        lifts = (lift,) + (0.0,) * (arms - 2)
        calls = simulate_conversion(rng, baseline=baseline, lifts=lifts, per_day=per_day, days=150, simulations=1000)
        simulated = calls.median_ship_day(0)
        print(
            f"    baseline {baseline:4.0%} lift {lift:+4.0%} {per_day:5d}/arm/day {arms} arms: planned median day "
            f"{planned.median_days}, simulated {simulated:.0f} ({planned.median_days / simulated - 1:+.0%}); "
            f"80% decided by day {planned.days_for_power} "
            f"(~{planned.median_customers_per_arm:,} customers per arm at the median)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-full", action="store_true", help="skip the full model (minutes)")
    parser.add_argument("--no-decisions", action="store_true", help="skip the decision simulations (minutes)")
    args = parser.parse_args()
    conjugate_figures()
    calibration_figures()
    if not args.no_decisions:
        decision_figures()
    if not args.no_full:
        full_model_figures()


if __name__ == "__main__":
    main()
