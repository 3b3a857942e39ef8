"""Connections that heal: a connection that failed because the database was read-only
(or full, or failing I/O, or gone) is thrown away, so writes work again as soon as the
fault is over; before, connections opened during the fault answered 503 for ever.

The fault is a read-only database for every connection opened while it lasts, as a
SQLite file made immutable (``chattr +i``: SQLite then opens it read-only, for good) or
a PostgreSQL server turned standby gives: ``PRAGMA query_only`` on SQLite and a
read-only session on PostgreSQL, set as each new connection opens.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from expplatform.auth import create_api_key
from expplatform.db import Base, connection_is_broken, retry_on_lock
from expplatform.models import Event, Exposure

from .assign_support import seed
from .conftest import make_test_app
from .ops_support import chattr

ASSIGN = "/api/v1/assign"
EVENTS = "/api/v1/events"


class ReadOnlyFault:
    """While ``on``, every connection the engine opens is read-only."""

    def __init__(self, engine: Engine) -> None:
        self.on = False
        self._sqlite = engine.dialect.name == "sqlite"
        event.listen(engine, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        if not self.on:
            return
        cursor = dbapi_connection.cursor()
        if self._sqlite:
            cursor.execute("PRAGMA query_only = ON")
        else:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            dbapi_connection.commit()
        cursor.close()


def batch(event_id: str, customer_id: str) -> dict[str, Any]:
    return {"events": [{"event_id": event_id, "customer_id": customer_id, "stage": "purchase", "type": "conversion"}]}


def stored(db, model: Any) -> int:
    with db.sessionmaker() as session:
        return len(session.scalars(select(model.id)).all())


def test_writes_work_again_as_soon_as_a_read_only_fault_is_over(app, db, client_key, caplog):
    seed(db, "checkout-button")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {client_key}"}
    assert client.post(ASSIGN, json={"customer_id": "before"}, headers=headers).status_code == 200
    fault = ReadOnlyFault(db.engine)

    fault.on = True
    db.engine.dispose()  # the workers restart during the fault: every connection is opened read-only
    caplog.set_level(logging.WARNING, logger="expplatform")
    for customer in ("during-1", "during-2"):
        for response in (
            client.post(ASSIGN, json={"customer_id": customer}, headers=headers),
            client.post(EVENTS, json=batch(f"e-{customer}", "before"), headers=headers),
        ):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.json["error"] == "database_unavailable" and response.headers["Retry-After"] == "1"
    logged = [r.getMessage() for r in caplog.records if r.name == "expplatform.api.errors"]
    assert len(logged) == 4 and all(
        "read" in line and "only" in line.replace("readonly", "read only") for line in logged
    )

    fault.on = False
    # The very first writes after the fault succeed: the hot path's per-thread connection
    # and the pool's connections opened during the fault are replaced.
    assert client.post(ASSIGN, json={"customer_id": "after"}, headers=headers).status_code == 200
    assert client.post(EVENTS, json=batch("e-after", "after"), headers=headers).status_code == 200
    assert stored(db, Exposure) == 2 and stored(db, Event) == 1


def test_the_broken_connection_errors():
    """Read-only, I/O, disk-full and server-going-away errors break a connection; lock
    timeouts, constraint violations and syntax errors do not."""

    def sqlite_error(code: int) -> sqlite3.Error:
        error = sqlite3.OperationalError("simulated")
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
        return error

    broken = [sqlite_error(8), sqlite_error(8 | (6 << 8)), sqlite_error(10), sqlite_error(13), sqlite_error(14)]
    broken += [psycopg.errors.ReadOnlySqlTransaction(), psycopg.errors.DiskFull(), psycopg.errors.IoError()]
    broken += [psycopg.errors.AdminShutdown(), psycopg.errors.ConnectionFailure()]
    healthy = [sqlite_error(5), sqlite_error(19), sqlite_error(1)]  # BUSY, CONSTRAINT, ERROR
    healthy += [psycopg.errors.QueryCanceled(), psycopg.errors.LockNotAvailable(), psycopg.errors.UniqueViolation()]
    assert [connection_is_broken(e) for e in broken] == [True] * len(broken)
    assert [connection_is_broken(e) for e in healthy] == [False] * len(healthy)


def test_a_discarded_connection_is_retried_once_on_a_new_one():
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError(
                "INSERT", (), Exception("attempt to write a readonly database"), connection_invalidated=True
            )
        return "stored"

    with pytest.raises(OperationalError):
        retry_on_lock(flaky)
    assert len(calls) == 2  # once more, not more
    assert retry_on_lock(flaky) == "stored"


@pytest.fixture
def immutable(tmp_path):
    """chattr +i on files, lifted again however the test ends."""
    made: list[Path] = []

    def make(*paths: Path) -> None:
        for path in paths:
            assert chattr("+i", str(path)), f"chattr +i {path} failed"
            made.append(path)

    yield make
    for path in made:
        chattr("-i", str(path))


def test_an_immutable_sqlite_file_heals_once_the_flag_is_removed(tmp_path, sqlite_url, client_key_for, immutable):
    """The tester's own fault, where ``chattr`` works (root, a filesystem with the flag)."""
    probe = tmp_path / "probe"
    probe.touch()
    if not chattr("+i", str(probe)):
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs/btrfs)")
    chattr("-i", str(probe))
    app = make_test_app(sqlite_url, tmp_path)
    db = app.extensions["db"]
    try:
        seed(db, "checkout-button")
        headers = {"Authorization": f"Bearer {client_key_for(db)}"}
        client = app.test_client()
        assert client.post(ASSIGN, json={"customer_id": "before"}, headers=headers).status_code == 200
        path = Path(make_url(sqlite_url).database)
        other_worker = sqlite3.connect(path)  # keeps the WAL file there, as a live worker does
        other_worker.execute("SELECT count(*) FROM exposures").fetchall()
        db.engine.dispose()  # this worker restarts during the fault
        immutable(path, Path(f"{path}-wal"))
        assert client.post(ASSIGN, json={"customer_id": "during"}, headers=headers).status_code == 503
        assert client.post(EVENTS, json=batch("e-during", "before"), headers=headers).status_code == 503
        chattr("-i", str(path))
        chattr("-i", f"{path}-wal")
        assert client.post(ASSIGN, json={"customer_id": "after"}, headers=headers).status_code == 200
        assert client.post(EVENTS, json=batch("e-after", "after"), headers=headers).status_code == 200
        other_worker.close()
    finally:
        app.extensions["db"].engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'immutable.sqlite3'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def client_key_for():
    def make(db) -> str:
        with db.write() as session:
            return create_api_key(session, "client", "healing", created_by="tests")[1]

    return make
