"""Engine, sessions and the declarative base.

One engine per app. On SQLite the connection is put in WAL mode with a busy timeout
and foreign keys on, and transactions are begun by us (not by the driver) so a write
path can ask for ``BEGIN IMMEDIATE``: it takes the write lock up front and waits for
it, instead of failing with "database is locked" when a read transaction later tries
to upgrade.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app, g
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if settings.is_sqlite:
        in_memory = url in {"sqlite://", "sqlite:///:memory:"} or "mode=memory" in url
        kwargs: dict = {"connect_args": {"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_ms / 1000}}
        if in_memory:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms, wal=not in_memory)
        return engine
    return create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
    )


def _configure_sqlite(engine: Engine, busy_timeout_ms: int, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        if wal:
            _ensure_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _ensure_wal(cursor) -> None:
    """Put the file in WAL mode unless it is already (WAL is a property of the file,
    normally set once by `db upgrade`). Changing the mode needs an exclusive lock, and
    SQLite refuses it at once ("database is locked", no busy wait) while another
    connection has the file open: workers starting together on a file in another
    mode race to convert it, and the losers look again and find it done."""
    for attempt in range(50):
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.02)


class Database:
    """The app's engine and session factory, reachable as ``app.extensions['db']``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one write transaction, committed on success.

        On SQLite it begins IMMEDIATE (waits for the write lock rather than failing
        later). Lock errors that still escape the busy timeout are not retried here:
        callers that are idempotent use :func:`retry_on_lock`.
        """
        session = self.sessionmaker()
        try:
            if self.settings.is_sqlite:
                session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def retry_on_lock(fn, *, attempts: int = 5, base_delay: float = 0.05):
    """Run an idempotent transaction again when SQLite reports a lock or PostgreSQL a
    serialisation failure; other errors propagate at once."""
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            message = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
            transient = "locked" in message or "busy" in message or "could not serialize" in message
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(base_delay * (2**attempt))
    raise AssertionError("unreachable")


def get_db(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["db"]


def get_session() -> Session:
    """The request's session, closed when the request ends."""
    if "db_session" not in g:
        g.db_session = get_db().sessionmaker()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def init_app(app: Flask, settings: Settings) -> Database:
    database = Database(settings)
    app.extensions["db"] = database
    app.teardown_appcontext(_close_session)
    return database
