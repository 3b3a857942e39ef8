"""Analysis engine benchmark (issue 5). Prints:

- the conjugate analysis of 5 stages x 4 variants x 2 metrics (conversion and a 1-5
  satisfaction scale, with its mean rating and top-box share): wall-clock median and
  min over repeats, and the CPU time (single-threaded, so it is what the wall clock
  would be on an idle core), with the largest Monte Carlo error of any P(better);
  the same on a 0-10
  scale (NPS too), for an A/A experiment, with small samples (P(better) partly
  simulated), and in the time-series mode (FAST_DRAWS, no top-up);
- the full model on 5 stages x 3 variants, 4 chains x 1000 draws after 1000 tuning
  steps: cold (a new process with an empty PyTensor compile cache) and warm (a new
  process with that cache filled), split into compile and sampling, with R-hat,
  ESS and divergences;
- calibration: 95% interval coverage of the relative lift and the calibration of
  P(better) over simulated experiments whose truths are drawn from the prior.

The machine has 2 cores shared with everything else running on it: figures are noisy.

    .venv/bin/python bench/analysis.py             # everything (a few minutes)
    .venv/bin/python bench/analysis.py --no-full   # skip the full model
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

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
BASE_RATES = (0.6, 0.35, 0.12, 0.06, 0.03)
CSAT = (0.05, 0.07, 0.18, 0.35, 0.35)


def experiment(variants, lifts, exposed=20_000, scale=Scale(1, 5), rated_share=0.2, seed=1) -> ExperimentStats:
    """Conversion at each stage = base rate x (1 + lift); ratings from a fixed
    histogram shape for up to ``rated_share`` of the exposed converters."""
    rng = np.random.default_rng(seed)
    shape = np.array(CSAT) if scale.categories == 5 else np.array([1, 1, 1, 1, 2, 3, 5, 10, 20, 25, 31]) / 100
    cells = {}
    for i, stage in enumerate(STAGES):
        cells[stage] = {}
        for variant, lift in zip(variants, lifts):
            converted = int(rng.binomial(exposed, BASE_RATES[i] * (1 + lift)))
            ratings = rng.multinomial(min(converted, int(exposed * rated_share)), shape)
            cells[stage][variant] = CellStats(exposed, converted, tuple(int(r) for r in ratings))
    weights = (1 / len(variants),) * len(variants)
    return ExperimentStats(STAGES, "purchase", tuple(variants), variants[0], weights, scale, cells)


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
            for u, name in zip(range(start, start + chunk), names)
        }
        stats = ExperimentStats(names, names[0], ("A", "B"), "A", (0.5, 0.5), Scale(1, 5), cells)
        result = analyze(stats, prior=prior, draws=2000, max_p_better_error=None, seed=start)
        for u, stage in zip(range(start, start + chunk), result.stages):
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
        f"  of {confident.sum()} comparisons with P(better) in [0.9, 1], truly better: {better[confident].mean():.1%}  (target >= 90%)"
    )
    for low in np.arange(0, 1, 0.2):
        in_bin = (p_better >= low) & (p_better < low + 0.2)
        print(
            f"    P(better) in [{low:.1f}, {low + 0.2:.1f}): mean {p_better[in_bin].mean():.3f}, truly better {better[in_bin].mean():.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-full", action="store_true", help="skip the full model (minutes)")
    args = parser.parse_args()
    conjugate_figures()
    calibration_figures()
    if not args.no_full:
        full_model_figures()


if __name__ == "__main__":
    main()
