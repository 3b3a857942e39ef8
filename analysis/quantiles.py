"""Central credible intervals over draws, bit for bit what ``np.quantile(x, [lo, hi],
axis=-1)`` (its default linear method) gives, in about a third of the time.

``np.quantile`` partitions every row at six ranks (the two neighbours of each
quantile, the minimum and the maximum); those partitions were a quarter of a
conjugate analysis. A central interval needs only the few order statistics in each
tail, so each tail's candidates are taken with one comparison against a threshold
read from every eighth draw, and only those few are partitioned. The threshold is
set well past the needed rank, and a row whose threshold falls short (possible only
for draws in a very unusual order) is partitioned whole: the values never depend on
the shortcut.
"""

from __future__ import annotations

import numpy as np

_STEP = 8  # every eighth draw gives the thresholds
_MIN_DRAWS = 512  # below this, np.quantile is as quick


def central_interval(x: np.ndarray, lo_q: float, hi_q: float) -> tuple[np.ndarray, np.ndarray]:
    """``np.quantile(x, [lo_q, hi_q], axis=-1)`` for ``0 < lo_q < hi_q < 1``: the same
    values, the same dtype, NaN for a row holding a NaN."""
    n = x.shape[-1]
    virtual = (n - 1) * np.asanyarray([lo_q, hi_q])
    previous = np.floor(virtual)
    a, b = (int(i) for i in previous)
    if n < _MIN_DRAWS or not 0 < lo_q < hi_q < 1 or b + 1 >= n or a + 1 > b:
        low, high = np.quantile(x, [lo_q, hi_q], axis=-1)
        return low, high
    rows = np.ascontiguousarray(x).reshape(-1, n)
    order = np.empty((4, rows.shape[0]), dtype=x.dtype)  # ranks a, a+1, b, b+1 per row
    order[0], order[1] = _lowest(rows, a)
    order[2], order[3] = _highest(rows, b)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype).reshape(2, 1)
    # numpy's _lerp, so that the rounding is the same.
    before, after = order[[0, 2]], order[[1, 3]]
    with np.errstate(invalid="ignore"):
        step = after - before
        bounds = np.add(before, step * gamma)
        np.subtract(after, step * (1 - gamma), out=bounds, where=gamma >= 0.5, casting="unsafe", dtype=bounds.dtype)
    bounds[:, np.isnan(rows).any(-1)] = np.nan
    shape = x.shape[:-1]
    return bounds[0].reshape(shape), bounds[1].reshape(shape)


def _lowest(rows: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The order statistics ``rank`` and ``rank + 1`` (from 0, ascending) of each row."""
    needed = rank + 2
    sample = rows[:, ::_STEP]
    at = min(sample.shape[1] - 1, 2 * (needed // _STEP) + 8)
    threshold = np.partition(sample, at, axis=-1)[:, at]
    return _pick(rows, rows <= threshold[:, None], needed, rank, top=False)


def _highest(rows: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The order statistics ``rank`` and ``rank + 1`` (from 0, ascending) of each row,
    near the top."""
    needed = rows.shape[1] - rank
    sample = rows[:, ::_STEP]
    at = max(0, sample.shape[1] - 1 - (2 * (needed // _STEP) + 8))
    threshold = np.partition(sample, at, axis=-1)[:, at]
    return _pick(rows, rows >= threshold[:, None], needed, rank, top=True)


def _pick(rows: np.ndarray, keep: np.ndarray, needed: int, rank: int, *, top: bool) -> tuple[np.ndarray, np.ndarray]:
    """Order statistics ``rank`` and ``rank + 1`` of each row, read from its candidates
    ``keep`` when they hold the ``needed`` lowest (or, ``top``, highest) draws, else
    from the whole row (the shortcut fell short, or NaNs)."""
    first = np.empty(rows.shape[0], dtype=rows.dtype)
    second = np.empty(rows.shape[0], dtype=rows.dtype)
    for r, count in enumerate(keep.sum(-1)):
        if count >= needed:
            candidates = rows[r][keep[r]]
            at = (int(count) - needed, int(count) - needed + 1) if top else (rank, rank + 1)
        else:
            candidates, at = rows[r], (rank, rank + 1)
        part = np.partition(candidates, at)
        first[r], second[r] = part[at[0]], part[at[1]]
    return first, second
