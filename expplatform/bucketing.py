"""Deterministic bucketing: the same answer in every worker, machine and language.

Pure functions, no I/O and no state. The README section "Assignment and bucketing"
states the algorithm so that other languages can reproduce it, and
``tests/vectors/bucketing.json`` holds the published test vectors.

Every decision draws its own value in [0, 1) from SHA-256 of
``"<purpose>:<salt>:<customer id>"``: ``layer`` (salted with the layer name),
``enrol`` and ``variant`` (salted with the experiment's salt). SHA-256 because it is
in every language's standard library, is fully specified, and mixes similar ids and
similar salts as well as any hash can; at about a microsecond per call it is far
from being the cost of an assignment. Because enrolment and variant come from
different hashes, raising traffic only adds customers (the enrolment threshold
moves) and never changes anyone's variant (which does not depend on traffic).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from itertools import compress

import numpy as np

# A layer's hash space: experiments in one layer hold disjoint ranges of these buckets.
LAYER_BUCKETS = 10_000
PURPOSE_LAYER, PURPOSE_ENROL, PURPOSE_VARIANT = "layer", "enrol", "variant"
# Results of placing a customer that are not a variant index.
NOT_IN_TRAFFIC = -1
OUTSIDE_LAYER = -2
_TO_UNIT = 2.0**-53


class LayerFull(ValueError):
    """Not enough free buckets in the layer for the requested share."""


def allocate_layer_ranges(taken: list[list[int]], share: float) -> list[list[int]]:
    """Pick buckets for a new experiment in a layer, leaving ``taken`` untouched.

    First fit over the free gaps in ascending order, so the result may be several
    ranges. Existing experiments keep their ranges, which is what makes adding an
    experiment to a layer never move a customer already in another one.
    """
    if not 0 < share <= 1:
        raise ValueError(f"layer share must be in (0, 1], got {share!r}")
    need = round(share * LAYER_BUCKETS)
    if need < 1:
        raise ValueError(f"layer share {share!r} is less than one of {LAYER_BUCKETS} buckets")
    ranges = sorted((int(start), int(end)) for start, end in taken)
    cursor = 0
    gaps: list[tuple[int, int]] = []
    for start, end in ranges:
        if not 0 <= start < end <= LAYER_BUCKETS:
            raise ValueError(f"taken range [{start}, {end}) is not inside [0, {LAYER_BUCKETS})")
        if start < cursor:
            raise ValueError(f"taken range [{start}, {end}) overlaps another")
        if start > cursor:
            gaps.append((cursor, start))
        cursor = end
    if cursor < LAYER_BUCKETS:
        gaps.append((cursor, LAYER_BUCKETS))
    free = sum(end - start for start, end in gaps)
    if free < need:
        raise LayerFull(f"the layer has {free} free buckets of {LAYER_BUCKETS}; this experiment needs {need}")
    allocated: list[list[int]] = []
    for start, end in gaps:
        size = min(end - start, need)
        allocated.append([start, start + size])
        need -= size
        if need == 0:
            break
    return allocated


# -- single customers ------------------------------------------------------------------


def unit_value(purpose: str, salt: str, customer_id: str) -> float:
    """The top 53 bits of the first 8 bytes (big-endian) of the SHA-256 digest, as a
    fraction: exact in a double, uniform on [0, 1), and never 1.0 (the whole 64 bits
    divided by 2**64 can round up to 1.0)."""
    digest = sha256(f"{purpose}:{salt}:{customer_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) * _TO_UNIT


def layer_bucket(layer: str, customer_id: str) -> int:
    return int(unit_value(PURPOSE_LAYER, layer, customer_id) * LAYER_BUCKETS)


def cumulative_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Running sums of the weights in variant order, the last one set to exactly 1 so
    that float rounding can never leave a value above every boundary."""
    if not weights or any(not w > 0 for w in weights):
        raise ValueError("weights must be positive and at least one")
    total = 0.0
    bounds = []
    for weight in weights:
        total += float(weight)
        bounds.append(total)
    bounds[-1] = 1.0
    return tuple(bounds)


def variant_for(value: float, cumulative: Sequence[float]) -> int:
    """The first variant whose cumulative boundary is above ``value``."""
    return bisect.bisect_right(cumulative, value)


def in_ranges(bucket: int, ranges: Iterable[Sequence[int]]) -> bool:
    return any(start <= bucket < end for start, end in ranges)


@dataclass(frozen=True, slots=True)
class Split:
    """How one experiment divides customers: everything bucketing needs, nothing else."""

    salt: str
    traffic: float
    cumulative: tuple[float, ...]
    layer: str | None = None
    layer_ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(
        cls,
        salt: str,
        weights: Sequence[float],
        traffic: float = 1.0,
        layer: str | None = None,
        layer_ranges: Iterable[Sequence[int]] = (),
    ) -> Split:
        if not 0 < traffic <= 1:
            raise ValueError(f"traffic must be in (0, 1], got {traffic!r}")
        ranges = tuple((int(start), int(end)) for start, end in layer_ranges)
        return cls(salt, float(traffic), cumulative_weights(weights), layer, ranges)


def place(split: Split, customer_id: str) -> int:
    """The customer's variant index, or ``OUTSIDE_LAYER`` / ``NOT_IN_TRAFFIC``.

    A traffic of 1 admits every value, so its hash is skipped: same answer, less work.
    """
    if split.layer is not None and not in_ranges(layer_bucket(split.layer, customer_id), split.layer_ranges):
        return OUTSIDE_LAYER
    if split.traffic < 1.0 and not unit_value(PURPOSE_ENROL, split.salt, customer_id) < split.traffic:
        return NOT_IN_TRAFFIC
    return variant_for(unit_value(PURPOSE_VARIANT, split.salt, customer_id), split.cumulative)


# -- many customers at once ----------------------------------------------------------------


def unit_values(purpose: str, salt: str, customer_ids: Iterable[str]) -> np.ndarray:
    """``unit_value`` for many ids: the digests are taken one by one (hashlib is C
    already), the arithmetic is done on the whole array."""
    prefix = f"{purpose}:{salt}:".encode()
    digests = b"".join([sha256(prefix + cid.encode()).digest()[:8] for cid in customer_ids])
    return (np.frombuffer(digests, dtype=">u8") >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def place_many(split: Split, customer_ids: Sequence[str]) -> np.ndarray:
    """``place`` for every id, as an int64 array; each hash is computed only for the
    ids still undecided, as in the single path."""
    result = np.full(len(customer_ids), OUTSIDE_LAYER, dtype=np.int64)
    candidates = np.ones(len(customer_ids), dtype=bool)
    if split.layer is not None:
        buckets = (unit_values(PURPOSE_LAYER, split.layer, customer_ids) * LAYER_BUCKETS).astype(np.int64)
        candidates = np.zeros(len(customer_ids), dtype=bool)
        for start, end in split.layer_ranges:
            candidates |= (buckets >= start) & (buckets < end)
    result[candidates] = NOT_IN_TRAFFIC
    if split.traffic < 1.0:
        enrol = unit_values(PURPOSE_ENROL, split.salt, _among(customer_ids, candidates)) < split.traffic
        candidates[candidates] = enrol
    values = unit_values(PURPOSE_VARIANT, split.salt, _among(customer_ids, candidates))
    result[candidates] = np.searchsorted(np.asarray(split.cumulative), values, side="right")
    return result


def _among(customer_ids: Sequence[str], keep: np.ndarray) -> Iterable[str]:
    # compress() over a list of Python bools: iterating numpy bools one by one is slow.
    return customer_ids if keep.all() else compress(customer_ids, keep.tolist())
