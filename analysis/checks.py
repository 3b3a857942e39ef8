"""Checks on the data before any estimate is trusted: sample-ratio mismatch and which
cells have data at all."""

from __future__ import annotations

import numpy as np

from .types import SampleRatio


def sample_ratio(stages: tuple[str, ...], exposed: np.ndarray, weights: tuple[float, ...], alpha: float) -> SampleRatio:
    """Chi-square goodness of fit of exposed customers to the configured weights.

    ``exposed`` is (stages, variants). Exposure is usually counted once per customer,
    so every stage holds the same vector; where stages differ the most extreme one is
    reported. A variant with weight 0 is left out unless it has exposures, which is a
    mismatch by itself (p = 0).
    """
    from scipy import special  # here, not at the top: keeps scipy out of the app's start-up

    share = np.asarray(weights, dtype=float)
    share = share / share.sum() if share.sum() > 0 else share
    worst: SampleRatio | None = None
    for stage, observed in zip(stages, exposed, strict=True):
        total = int(observed.sum())
        expected = share * total
        if total == 0:
            result = SampleRatio(stage, tuple(int(o) for o in observed), tuple(expected), None, None, False)
        elif np.any((share == 0) & (observed > 0)):
            result = SampleRatio(stage, tuple(int(o) for o in observed), tuple(expected), None, 0.0, True)
        else:
            used = share > 0
            if used.sum() < 2:
                result = SampleRatio(stage, tuple(int(o) for o in observed), tuple(expected), None, None, False)
            else:
                chi2 = float(((observed[used] - expected[used]) ** 2 / expected[used]).sum())
                p = float(special.chdtrc(used.sum() - 1, chi2))  # chi-square survival function
                result = SampleRatio(stage, tuple(int(o) for o in observed), tuple(expected), chi2, p, p < alpha)
        if worst is None or _more_extreme(result, worst):
            worst = result
    assert worst is not None  # ExperimentStats has at least its target stage
    return worst


def _more_extreme(a: SampleRatio, b: SampleRatio) -> bool:
    if a.p_value is None:
        return False
    return b.p_value is None or a.p_value < b.p_value
