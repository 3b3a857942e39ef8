"""The report's per-worker caches, and the background thread of its slow parts.

A report must answer in a fraction of a second at a million customers, so:

- ``Memo`` keeps deterministic results (the analysis of a data version, its plots):
  a report whose data did not move costs one statistics query;
- ``SlowParts`` computes the seconds-long parts (the daily series, the segment
  breakdowns) one at a time in one background thread per worker, and reuses each
  while new data arrives for up to ``report_refresh_seconds`` (then recomputes it in
  the background while the old one is shown). The request that starts a first
  computation waits for it at most ``report_wait_seconds`` (enough for a small
  experiment); otherwise, and for the requests that come while it runs, the part
  says it is being computed.

Nothing here knows what a report is: keys, versions and computations come from
``build``. ``init_app`` gives each app its ``ReportCache``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from flask import Flask, current_app

from analysis.types import ExperimentResult

from ..config import Settings
from ..errors import DomainError
from ..models import utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Pending:
    """A slow part of the report (series, segments): its value, or why it is missing,
    and the data version it was computed from."""

    status: str  # "ready", "computing" or "failed"
    value: Any = None
    computed_at: datetime | None = None
    version: Hashable = None


class Memo(Generic[T]):
    """Small per-worker memo of deterministic computations (least recently used out)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


@dataclass
class _Entry:
    version: Hashable
    value: Any
    computed_at: datetime
    started: float  # monotonic time of the computation's start


class SlowParts:
    """Seconds-long report parts, computed one at a time in a background thread and
    reused while they are younger than ``refresh`` (see the module docstring)."""

    def __init__(self, refresh: float, size: int = 64) -> None:
        self._refresh, self._size = refresh, size
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._running: dict[Hashable, Future[None]] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def get(self, key: Hashable, version: Hashable, compute: Callable[[], Any], wait: float | None) -> Pending:
        """The part under ``key`` for data ``version``, waiting at most ``wait``
        seconds (None: as long as it takes) if this call starts its first computation."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.version == version or time.monotonic() - entry.started < self._refresh):
                return _ready(entry)
            future = self._running.get(key)
            started_here = future is None
            if future is None:
                future = self._submit(key, version, compute)
        if entry is not None:
            return _ready(entry)  # stale while the new one is computed
        if not started_here:
            return Pending("computing")  # the request that started it did the waiting
        try:
            future.result(timeout=wait)
        except FutureTimeout:
            return Pending("computing")
        except DomainError:
            raise  # the caller's mistake (e.g. an attribute with too many values): say so
        except Exception:
            return Pending("failed")
        with self._lock:
            return _ready(self._entries[key])

    def _submit(self, key: Hashable, version: Hashable, compute: Callable[[], Any]) -> Future[None]:
        if self._executor is None or self._pid != os.getpid():  # not inherited across fork
            self._executor, self._pid = ThreadPoolExecutor(1, thread_name_prefix="expplatform-report"), os.getpid()
            self._running = {}
        started = time.monotonic()

        def run() -> None:
            try:
                value = compute()
            except DomainError:
                raise
            except Exception:
                log.exception("report part %r failed", key[:2] if isinstance(key, tuple) else key)
                raise
            finally:
                with self._lock:
                    self._running.pop(key, None)
            with self._lock:
                self._entries[key] = _Entry(version, value, utcnow(), started)
                self._entries.move_to_end(key)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)

        future = self._executor.submit(run)
        self._running[key] = future
        return future

    def wait_idle(self, timeout: float) -> bool:
        """For tests: True once nothing is being computed."""
        with self._lock:
            running = list(self._running.values())
        for future in running:
            try:
                future.result(timeout=timeout)
            except FutureTimeout:
                return False
            except Exception:
                pass
        return True


def _ready(entry: _Entry) -> Pending:
    return Pending("ready", entry.value, entry.computed_at, entry.version)


class ReportCache:
    """One app's report caches: analysed results, drawn plots and the slow parts."""

    def __init__(self, settings: Settings) -> None:
        self.results: Memo[ExperimentResult] = Memo(64)
        self.plots: Memo[dict[str, str]] = Memo(32)
        self.forecasts: Memo[Any] = Memo(32)
        self.slow = SlowParts(settings.report_refresh_seconds)


def report_cache() -> ReportCache:
    """The current app's caches (inside an app context)."""
    return current_app.extensions["report_cache"]


def init_app(app: Flask) -> None:
    app.extensions["report_cache"] = ReportCache(app.extensions["settings"])
