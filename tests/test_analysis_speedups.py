"""The conjugate analysis's quicker kernels give numpy's values bit for bit, so the
speed-up (issue 12's 100 ms target) changes no result: central credible intervals
(``analysis.quantiles``) and the Dirichlet draws' category sums."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.conjugate import category_sums
from analysis.quantiles import central_interval

LEVELS = [(0.025, 0.975), (0.05, 0.95), (0.1, 0.9), (0.0005, 0.9995), (0.25, 0.75), (0.4, 0.6)]


def _draws(rng: np.random.Generator, dtype, n: int) -> np.ndarray:
    x = rng.normal(size=(3, 4, n)).astype(dtype)
    x[0, 1, rng.integers(n)] = np.nan  # a NaN makes the row NaN, as in numpy
    x[1, 2, : n // 2] = np.inf  # lifts over a control at 0
    x[1, 3, :5] = -np.inf
    x[2, 0] = np.sort(x[2, 0])  # sorted draws: the threshold shortcut falls short
    x[2, 1] = np.round(x[2, 1])  # ties
    x[2, 2] = 1.0  # one value
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 100, 511, 512, 2000, 8000, 8001, 30_000])
def test_central_interval_is_numpys_quantile_bit_for_bit(dtype, n):
    rng = np.random.default_rng(n)
    x = _draws(rng, dtype, n)
    for lo, hi in LEVELS:
        with np.errstate(invalid="ignore"):  # inf - inf between neighbours, in numpy too
            expected = np.quantile(x, [lo, hi], axis=-1)
            low, high = central_interval(x, lo, hi)
        assert low.dtype == expected.dtype and low.shape == expected[0].shape
        np.testing.assert_array_equal(low, expected[0])
        np.testing.assert_array_equal(high, expected[1])


def test_central_interval_leaves_its_input_alone():
    x = np.random.default_rng(1).normal(size=(2, 3, 4000))
    kept = x.copy()
    central_interval(x, 0.025, 0.975)
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("categories", range(1, 18))
def test_category_sums_are_numpys_sum_bit_for_bit(categories):
    rng = np.random.default_rng(categories)
    alpha = rng.uniform(0.2, 3000, size=categories).astype(np.float32)
    gamma = rng.standard_gamma(np.broadcast_to(alpha, (5, 4, 2000, categories)), dtype=np.float32)
    total = category_sums(gamma)
    assert total.dtype == np.float32
    np.testing.assert_array_equal(total, gamma.sum(-1))
