"""Deterministic bucketing: the same answer in every worker, machine and language.

Pure functions, no I/O. The README section "Assignment and bucketing" states the
algorithm so that other languages can reproduce it; ``tests/vectors/bucketing.json``
holds the published test vectors.
"""

from __future__ import annotations

# A layer's hash space: experiments in one layer hold disjoint ranges of these buckets.
LAYER_BUCKETS = 10_000


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
