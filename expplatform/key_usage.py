"""When each API key was last used, recorded without costing the requests that use it.

Every authenticated key request calls :meth:`KeyUsage.note` (the assignment fast
path included): a dictionary look-up that, at most once a minute per key and
process, hands the time to a background thread. That thread writes it to
``api_keys.last_used_at`` in its own short transaction, and only where the stored
time is more than a minute older, so many workers write about once a minute per key
between them. The request never waits for the database here; a key that is used
constantly costs one tiny UPDATE a minute per worker.

Test apps (``testing``) write in the request instead (``background=False``): a
thread writing while a test disposes of its database would leave a connection
behind, and the tests read the time right after the request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import or_, update

from .db import Database
from .models import ApiKey, utcnow

log = logging.getLogger(__name__)

RECORD_INTERVAL_SECONDS = 60.0


class KeyUsage:
    def __init__(
        self, database: Database, interval: float = RECORD_INTERVAL_SECONDS, *, background: bool = True
    ) -> None:
        self.database, self.interval, self.background = database, interval, background
        self._noted: dict[int, float] = {}  # key id -> monotonic time its use was last queued
        self._pending: dict[int, datetime] = {}  # key id -> when it was used, not yet written
        self._lock = threading.Lock()  # guards the two dictionaries
        self._writing = threading.Lock()  # one flush at a time, so flush() returns after any other
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def note(self, key_id: int) -> None:
        """A request authenticated with the key: queue its time if the last one queued
        (in this process) is a minute old. Reading ``_noted`` without the lock is
        fine: two requests racing past it queue the same minute twice."""
        now = time.monotonic()
        last = self._noted.get(key_id)
        if last is not None and now - last < self.interval:
            return
        with self._lock:
            self._noted[key_id] = now
            self._pending[key_id] = utcnow()
        if self.background:
            self._start_writer()
            self._wake.set()
        else:
            self._flush_logged()

    def flush(self) -> int:
        """Write what is queued (the writer thread calls this; tests may too, and it
        returns only after a flush the thread had begun); returns how many keys."""
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return 0
            with self.database.write() as session:
                for key_id, used_at in pending.items():
                    session.execute(
                        update(ApiKey)
                        .where(
                            ApiKey.id == key_id,
                            or_(
                                ApiKey.last_used_at.is_(None),
                                ApiKey.last_used_at < used_at - timedelta(seconds=self.interval),
                            ),
                        )
                        .values(last_used_at=used_at)
                    )
            return len(pending)

    def _start_writer(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:  # threads are not inherited across fork: start one per process
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._wake = threading.Event()
                self._thread = threading.Thread(target=self._run, name="expplatform-key-usage", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:  # the time of use is for people to read: never fail a request for it
            log.warning("could not record when API keys were last used", exc_info=True)


def key_usage(app: Flask) -> KeyUsage:
    """The app's recorder (``auth.init_app`` makes it)."""
    return app.extensions["key_usage"]
