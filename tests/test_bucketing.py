"""Pure bucketing: hashing, weights, ramps, layers and the published vectors."""

from __future__ import annotations

import numpy as np
import pytest

from expplatform.bucketing import LAYER_BUCKETS, LayerFull, allocate_layer_ranges


# -- layer allocation -------------------------------------------------------------------


def test_first_experiment_in_a_layer_takes_the_lowest_buckets():
    assert allocate_layer_ranges([], 0.25) == [[0, 2500]]
    assert allocate_layer_ranges([], 1.0) == [[0, LAYER_BUCKETS]]


def test_allocation_fills_gaps_first_fit_and_may_split():
    taken = [[2000, 5000], [0, 1000]]  # order of the input does not matter
    assert allocate_layer_ranges(taken, 0.1) == [[1000, 2000]]
    assert allocate_layer_ranges(taken, 0.15) == [[1000, 2000], [5000, 5500]]
    assert allocate_layer_ranges(taken, 0.6) == [[1000, 2000], [5000, 10_000]]


def test_allocation_rounds_the_share_to_whole_buckets():
    assert allocate_layer_ranges([], 0.33333) == [[0, 3333]]
    assert allocate_layer_ranges([], 0.0001) == [[0, 1]]


@pytest.mark.parametrize("share", [0, -0.1, 1.01, 0.00004])
def test_allocation_rejects_shares_outside_one_bucket_to_the_whole_layer(share):
    with pytest.raises(ValueError) as info:
        allocate_layer_ranges([], share)
    assert not isinstance(info.value, LayerFull)


def test_a_full_layer_raises_layer_full_and_allocates_nothing():
    taken = [[0, 4000], [4500, 10_000]]
    with pytest.raises(LayerFull, match="500 free buckets"):
        allocate_layer_ranges(taken, 0.06)
    assert allocate_layer_ranges(taken, 0.05) == [[4000, 4500]]
    assert issubclass(LayerFull, ValueError)


@pytest.mark.parametrize("taken", [[[-1, 10]], [[0, 10_001]], [[5, 5]], [[0, 10], [5, 20]]])
def test_corrupt_taken_ranges_are_refused(taken):
    with pytest.raises(ValueError, match="taken range"):
        allocate_layer_ranges(taken, 0.01)


def test_successive_allocations_are_disjoint_exact_and_leave_earlier_ranges_alone():
    rng = np.random.default_rng(7)
    owned: list[tuple[list[list[int]], set[int]]] = []
    full = 0
    for _ in range(300):
        share = float(rng.choice([0.05, 0.1, 0.125, 0.2, 0.3]))
        taken = [r for ranges, _ in owned for r in ranges]
        try:
            got = allocate_layer_ranges(taken, share)
        except LayerFull:
            full += 1
            owned.pop(int(rng.integers(len(owned))))  # an experiment stops and frees its buckets
            continue
        buckets = {b for start, end in got for b in range(start, end)}
        assert len(buckets) == round(share * LAYER_BUCKETS)
        assert all(not (buckets & earlier) for _, earlier in owned)
        owned.append((got, buckets))
    assert full > 10  # the layer did fill up, so gaps were reused and ranges split
    assert any(len(ranges) > 1 for ranges, _ in owned)
