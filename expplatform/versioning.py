"""Cross-worker cache invalidation without coordination.

Every change to experiment definitions or API keys bumps one counter row. A worker
reads that row (a single primary-key lookup) at most every ``refresh_seconds`` and
drops its caches when the number moved, so a change made through any worker is seen
by all of them within that interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import DefinitionsVersion

T = TypeVar("T")
_ROW_ID = 1


def bump_version(session: Session) -> None:
    """Mark definitions changed; call first in the transaction that changes them.

    An upsert, so the very first changes on a fresh database cannot race each other
    into a duplicate row; on PostgreSQL it also takes the row lock that serialises
    all definition changes until commit.
    """
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(DefinitionsVersion).values(id=_ROW_ID, version=1)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[DefinitionsVersion.id], set_={"version": DefinitionsVersion.version + 1}
        )
    )


def read_version(session: Session) -> int:
    return session.scalar(select(DefinitionsVersion.version).where(DefinitionsVersion.id == _ROW_ID)) or 0


class VersionedCache(Generic[T]):
    """A value rebuilt by ``load`` whenever the definitions version has moved.

    The version is checked at most every ``refresh_seconds``; between checks the
    cached value is served with no database access at all.
    """

    def __init__(
        self, load: Callable[[Session], T], refresh_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self.clock = clock  # a test's own clock makes "after the refresh interval" exact
        self._lock = threading.Lock()
        self._value: T | None = None
        self._version: int | None = None
        self._checked_at = float("-inf")

    def get(self, session_factory: Callable[[], Session]) -> T:
        now = self.clock()
        if self._value is not None and now - self._checked_at < self._refresh_seconds:
            return self._value
        with self._lock:
            if self._value is not None and self.clock() - self._checked_at < self._refresh_seconds:
                return self._value
            with session_factory() as session:
                version = read_version(session)
                if self._value is None or version != self._version:
                    self._value = self._load(session)
                    self._version = version
            self._checked_at = self.clock()
            return self._value

    def invalidate(self) -> None:
        """Force a reload on the next ``get`` (used by the worker that made a change)."""
        with self._lock:
            self._checked_at = float("-inf")
            self._version = None
