"""Pure bucketing: hashing, weights, ramps, layers and the published vectors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from expplatform.bucketing import (
    LAYER_BUCKETS,
    NOT_IN_TRAFFIC,
    OUTSIDE_LAYER,
    LayerFull,
    Split,
    allocate_layer_ranges,
    cumulative_weights,
    layer_bucket,
    place,
    place_many,
    unit_value,
    unit_values,
    variant_for,
)

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


# -- the hash ---------------------------------------------------------------------------------

VECTORS = json.loads((Path(__file__).parent / "vectors" / "bucketing.json").read_text(encoding="utf-8"))


def _reference_value(message: str) -> float:
    """The README's definition, written independently of the module: hex digits, not bytes."""
    top = int(hashlib.sha256(message.encode("utf-8")).hexdigest()[:16], 16)
    return (top // 2**11) / 2**53


@pytest.mark.parametrize("case", VECTORS["hashes"], ids=lambda c: c["message"][:40])
def test_published_hash_vectors(case):
    assert case["message"] == f"{case['purpose']}:{case['salt']}:{case['customer_id']}"
    assert hashlib.sha256(case["message"].encode()).hexdigest()[:16] == case["sha256_first_8_bytes"]
    assert _reference_value(case["message"]) == case["value"]
    assert unit_value(case["purpose"], case["salt"], case["customer_id"]) == case["value"]
    assert unit_values(case["purpose"], case["salt"], [case["customer_id"]])[0] == case["value"]


@pytest.mark.parametrize("case", VECTORS["layer_buckets"], ids=lambda c: f"{c['layer']}-{c['customer_id']}")
def test_published_layer_bucket_vectors(case):
    assert layer_bucket(case["layer"], case["customer_id"]) == case["bucket"]
    assert (
        math.floor(_reference_value(f"layer:{case['layer']}:{case['customer_id']}") * LAYER_BUCKETS) == case["bucket"]
    )


def _split(experiment: dict) -> Split:
    return Split.of(
        experiment["salt"],
        [v["weight"] for v in experiment["variants"]],
        experiment["traffic"],
        experiment["layer"],
        experiment["layer_ranges"],
    )


def _expected(case: dict) -> int:
    expected = case["expected"]
    if expected["enrolled"]:
        return [v["key"] for v in case["experiment"]["variants"]].index(expected["variant"])
    return {"traffic": NOT_IN_TRAFFIC, "layer": OUTSIDE_LAYER}[expected["reason"]]


def test_published_assignment_vectors_single_and_bulk():
    cases = VECTORS["assignments"]
    outcomes = {json.dumps(case["expected"], sort_keys=True) for case in cases}
    assert len(outcomes) >= 8  # the vectors exercise every kind of outcome, not one
    for case in cases:
        split = _split(case["experiment"])
        assert place(split, case["customer_id"]) == _expected(case), case
        assert place_many(split, [case["customer_id"]])[0] == _expected(case), case


JS_REPRODUCTION = r"""
const crypto = require("crypto");
const vectors = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
function unitValue(purpose, salt, customerId) {
  const d = crypto.createHash("sha256").update(`${purpose}:${salt}:${customerId}`, "utf8").digest();
  return (d.readUInt32BE(0) * 2 ** 21 + (d.readUInt32BE(4) >>> 11)) / 2 ** 53;
}
function assign(e, customerId) {
  if (e.layer !== null) {
    const bucket = Math.floor(unitValue("layer", e.layer, customerId) * 10000);
    if (!e.layer_ranges.some(([start, end]) => start <= bucket && bucket < end)) return { enrolled: false, reason: "layer" };
  }
  if (e.traffic < 1 && !(unitValue("enrol", e.salt, customerId) < e.traffic)) return { enrolled: false, reason: "traffic" };
  const x = unitValue("variant", e.salt, customerId);
  let total = 0;
  for (let i = 0; i < e.variants.length; i++) {
    total += e.variants[i].weight;
    if (i === e.variants.length - 1 || x < total) return { enrolled: true, variant: e.variants[i].key };
  }
}
const got = vectors.hashes.map((h) => unitValue(h.purpose, h.salt, h.customer_id) === h.value)
  .concat(vectors.assignments.map((a) => JSON.stringify(assign(a.experiment, a.customer_id)) === JSON.stringify(a.expected)));
console.log(JSON.stringify(got));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_a_javascript_implementation_of_the_readme_algorithm_reproduces_the_vectors(tmp_path):
    script = tmp_path / "reproduce.js"
    script.write_text(JS_REPRODUCTION)
    vectors = Path(__file__).parent / "vectors" / "bucketing.json"
    output = subprocess.run(["node", str(script), str(vectors)], capture_output=True, text=True, check=True).stdout
    results = json.loads(output)
    assert len(results) == len(VECTORS["hashes"]) + len(VECTORS["assignments"])
    assert all(results)


def test_buckets_are_the_same_in_another_process_with_another_hash_seed():
    ids = [f"user-{i}" for i in range(200)] + ["café", "🙂", "a:b"]
    code = (
        "import json, sys; from expplatform.bucketing import unit_value, layer_bucket; "
        "ids = json.load(sys.stdin); "
        "print(json.dumps([[unit_value('variant', 'exp', i), layer_bucket('lay', i)] for i in ids]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True, check=True, env=env
    ).stdout
    assert json.loads(output) == [[unit_value("variant", "exp", i), layer_bucket("lay", i)] for i in ids]


def test_values_are_in_the_unit_interval_and_uniform_for_sequential_ids():
    ids = [f"user{i}" for i in range(100_000)]
    values = unit_values("variant", "exp", ids)
    assert values.min() >= 0 and values.max() < 1
    counts = np.histogram(values, bins=20, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 0.001


def test_similar_salts_and_purposes_give_unrelated_values():
    """Keys differing in one character, and the enrolment vs variant hash of one key,
    must not move together: correlations near 0 and an even 2x2 split."""
    ids = [f"user{i}" for i in range(50_000)]
    a = unit_values("variant", "exp-1", ids)
    for other in (unit_values("variant", "exp-2", ids), unit_values("enrol", "exp-1", ids)):
        assert abs(np.corrcoef(a, other)[0, 1]) < 0.02
        table = np.histogram2d(a, other, bins=2, range=[[0, 1], [0, 1]])[0]
        assert stats.chi2_contingency(table).pvalue > 0.001


def test_bulk_placement_equals_single_placement():
    ids = [f"c{i}" for i in range(3000)]
    for split in (
        Split.of("e", [0.5, 0.5]),
        Split.of("e", [0.2, 0.3, 0.5], traffic=0.4),
        Split.of("e", [0.7, 0.3], traffic=0.9, layer="l", layer_ranges=[[100, 2600], [9000, 10_000]]),
    ):
        assert place_many(split, ids).tolist() == [place(split, i) for i in ids]


# -- weights, ramps, layers -----------------------------------------------------------------

WEIGHTINGS = [[0.5, 0.5], [0.1, 0.9], [0.2, 0.3, 0.5], [0.25] * 4, [0.01, 0.01, 0.98], [1 / 3] * 3]


@pytest.mark.parametrize("weights", WEIGHTINGS, ids=str)
def test_weights_are_honoured_on_100k_ids(weights):
    ids = [f"customer-{i}" for i in range(100_000)]
    placed = place_many(Split.of("weights-test", weights), ids)
    observed = np.bincount(placed, minlength=len(weights))
    expected = np.asarray(weights) / sum(weights) * len(ids)
    assert stats.chisquare(observed, expected).pvalue > 0.001
    # Teeth: the same counts are far from a weighting with a fifth of the first
    # variant's weight moved to the last.
    skewed = np.array(weights, dtype=float)
    skewed[0], skewed[-1] = skewed[0] * 1.2, skewed[-1] - skewed[0] * 0.2
    assert stats.chisquare(observed, skewed / skewed.sum() * len(ids)).pvalue < 0.001


def test_cumulative_weights_end_at_exactly_one():
    assert cumulative_weights([0.1] * 10)[-1] == 1.0
    assert variant_for(np.nextafter(1.0, 0.0), cumulative_weights([0.1] * 10)) == 9
    with pytest.raises(ValueError):
        cumulative_weights([0.5, 0.0])


def test_raising_traffic_only_adds_customers_and_never_moves_one():
    ids = [f"u{i}" for i in range(20_000)]
    previous = None
    for traffic in (0.05, 0.2, 0.5, 0.9, 1.0):
        placed = place_many(Split.of("ramp", [0.3, 0.3, 0.4], traffic=traffic), ids)
        enrolled = placed >= 0
        assert abs(enrolled.mean() - traffic) < 0.015
        if previous is not None:
            was = previous >= 0
            assert not (was & ~enrolled).any(), "a customer left the experiment when traffic rose"
            assert (placed[was] == previous[was]).all(), "a customer changed variant when traffic rose"
        previous = placed


def test_layer_experiments_are_mutually_exclusive_and_adding_one_moves_nobody():
    ids = [f"visitor-{i}" for i in range(20_000)]
    taken: list[list[int]] = []
    splits = []
    placements = []
    for salt, share in (("hero", 0.3), ("banner", 0.2), ("footer", 0.45)):
        ranges = allocate_layer_ranges(taken, share)
        taken += ranges
        splits.append(Split.of(salt, [0.5, 0.5], layer="homepage", layer_ranges=ranges))
        placed = place_many(splits[-1], ids)
        placements.append(placed)
        assert abs((placed != OUTSIDE_LAYER).mean() - share) < 0.015
        # The experiments already in the layer place everyone exactly as before.
        for split, before in zip(splits, placements, strict=True):
            assert (place_many(split, ids) == before).all()
    in_layer = np.vstack([p != OUTSIDE_LAYER for p in placements])
    assert in_layer.sum(axis=0).max() == 1
    # A different layer is independent of this one.
    other = place_many(Split.of("other", [0.5, 0.5], layer="checkout", layer_ranges=[[0, 3000]]), ids) != OUTSIDE_LAYER
    assert abs(other[in_layer[0]].mean() - 0.3) < 0.03


def test_bucketing_rejects_an_invalid_split():
    with pytest.raises(ValueError):
        Split.of("e", [0.5, 0.5], traffic=0)
    with pytest.raises(ValueError):
        Split.of("e", [], traffic=1)
