"""Simulation-based calibration of the conjugate path.

Each simulated experiment draws its true conversion rates and rating distributions
from the analysis prior, then its data from them; over many experiments the 95%
intervals must then cover the truth 95% of the time and P(better) must mean what it
says. 600 experiments x 3 stages, each stage with its own truths, are analysed as
stages of a few large ``ExperimentStats`` (the engine is vectorised over stages).
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis import CellStats, ExperimentStats, Prior, Scale, analyze

PRIOR = Prior(conversion_alpha=2.0, conversion_beta=8.0, rating_concentration=2.0)
RATINGS = np.arange(1, 6, dtype=float)
EXPERIMENTS, STAGES_EACH, CHUNK = 600, 3, 300


def simulate(rng: np.random.Generator, units: int):
    """Truths and data for ``units`` stage x (control, treatment) pairs."""
    p = rng.beta(PRIOR.conversion_alpha, PRIOR.conversion_beta, size=(units, 2))
    theta = rng.dirichlet([PRIOR.rating_concentration] * 5, size=(units, 2))
    exposed = rng.integers(200, 3000, size=(units, 2))
    converted = rng.binomial(exposed, p)
    rated = rng.integers(20, 200, size=(units, 2))
    histograms = np.stack([[rng.multinomial(rated[u, v], theta[u, v]) for v in range(2)] for u in range(units)])
    return p, theta @ RATINGS, exposed, converted, histograms


@pytest.mark.slow
def test_intervals_cover_the_truth_and_p_better_is_calibrated():
    rng = np.random.default_rng(20240501)
    units = EXPERIMENTS * STAGES_EACH
    p, mean_rating, exposed, converted, histograms = simulate(rng, units)
    truths = {
        "conversion": p[:, 1] / p[:, 0] - 1,
        "mean_rating": mean_rating[:, 1] / mean_rating[:, 0] - 1,
    }
    truly_better = {"conversion": p[:, 1] > p[:, 0], "mean_rating": mean_rating[:, 1] > mean_rating[:, 0]}
    covered = {m: [] for m in truths}
    covered_difference = []
    p_better, better = [], []
    for start in range(0, units, CHUNK):
        chunk = range(start, start + CHUNK)
        stages = tuple(f"u{u}" for u in chunk)
        cells = {
            f"u{u}": {
                v: CellStats(int(exposed[u, j]), int(converted[u, j]), tuple(int(c) for c in histograms[u, j]))
                for j, v in enumerate(("A", "B"))
            }
            for u in chunk
        }
        stats = ExperimentStats(stages, stages[0], ("A", "B"), "A", (0.5, 0.5), Scale(1, 5), cells)
        result = analyze(stats, prior=PRIOR, draws=2000, max_p_better_error=None, seed=start)
        for u, stage in zip(chunk, result.stages, strict=True):
            for metric in truths:
                comparison = stage.metric(metric).comparison("B")
                lift = comparison.relative_lift
                covered[metric].append(lift.low <= truths[metric][u] <= lift.high)
                p_better.append(comparison.p_better)
                better.append(truly_better[metric][u])
            difference = stage.metric("conversion").comparison("B").absolute_difference
            covered_difference.append(difference.low <= p[u, 1] - p[u, 0] <= difference.high)

    for metric, hits in covered.items():
        assert len(hits) == units
        assert 0.93 <= np.mean(hits) <= 0.97, (metric, np.mean(hits))
    assert 0.93 <= np.mean(covered_difference) <= 0.97
    p_better, better = np.array(p_better), np.array(better)
    confident = p_better >= 0.9
    assert confident.sum() > 500
    assert better[confident].mean() >= 0.9
    assert better[p_better <= 0.1].mean() <= 0.1
    # Calibrated across the range: within each decile of P(better), the share truly
    # better sits near the mean P(better) (binomial noise, 4 standard errors).
    for low in np.arange(0, 1, 0.1):
        bin_ = (p_better >= low) & (p_better < low + 0.1)
        expected = p_better[bin_].mean()
        assert abs(better[bin_].mean() - expected) <= 4 * np.sqrt(expected * (1 - expected) / bin_.sum()) + 0.01
