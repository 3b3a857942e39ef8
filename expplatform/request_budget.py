"""A request's waits for the SQLite write lock count from when its worker queued it.

gunicorn's threaded worker accepts every connection at once and queues it for its
threads, and with ``reuse_port`` each worker has a socket of its own: a request can
land on a worker whose threads all wait for a locked database while another worker has
threads free. It then waits in that queue (up to a busy timeout), and then for the lock
itself (a busy timeout again): 7 s in ``bench/soak.py`` against a bound of the timeout
plus 1 s. So the worker (``gunicorn_worker.HandoverWorker``) says when it queued the
request (accepted its connection, or saw the next request on a kept-alive one), and
the SQLite waits of the request (``db.Database.write``, the ingest turn, the
assignment hot path's writes) take only what is left of the busy timeout since then.
At least a millisecond: a request that waited out its time in the queue still goes
through at once when the database is free, and answers 503 at once when it is not.
(PostgreSQL bounds each statement's lock wait at half the request's bound.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_queued_at: ContextVar[float | None] = ContextVar("queued_at", default=None)
# Waits are shortened only past this much queueing: most requests never queue, and a
# shortened wait costs a statement or two.
SLACK_MS = 50


@contextmanager
def queued_at(moment: float) -> Iterator[None]:
    """Serve a request that the worker queued at ``moment`` (time.monotonic)."""
    token = _queued_at.set(moment)
    try:
        yield
    finally:
        _queued_at.reset(token)


def wait_left_ms(budget_ms: int) -> int | None:
    """What is left of ``budget_ms`` since the request was queued, at least 1 ms; None
    when that is nearly all of it (the request did not queue), or unknown (not served by
    our worker: a test client, the CLI)."""
    queued = _queued_at.get()
    if queued is None:
        return None
    left = budget_ms - int((time.monotonic() - queued) * 1000)
    if left >= budget_ms - SLACK_MS:
        return None
    return max(1, left)
