"""Engine, sessions and the declarative base.

One engine per app. On SQLite the connection is put in WAL mode with a busy timeout
and foreign keys on, and transactions are begun by us (not by the driver) so a write
path can ask for ``BEGIN IMMEDIATE``: it takes the write lock up front and waits for
it, instead of failing with "database is locked" when a read transaction later tries
to upgrade.

Every wait is bounded (settings in ``config.py``): SQLite's busy timeout, and on
PostgreSQL a statement timeout, a lock timeout and a connect timeout sent with each
connection, so a locked table or a lost server ends a request with a 503 in seconds
instead of holding a worker until gunicorn kills it. And a connection that failed in a
way that leaves it useless (read-only, disk full, I/O error, lost server) is thrown
away and reopened on next use rather than failing forever: see
:func:`connection_is_broken`.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, g
from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from . import request_budget
from .config import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, DBAPIModule
    from sqlalchemy.pool import PoolProxiedConnection

T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _in_memory(settings: Settings) -> bool:
    url = settings.database_url
    return settings.is_sqlite and (url in {"sqlite://", "sqlite:///:memory:"} or "mode=memory" in url)


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if settings.is_sqlite:
        in_memory = _in_memory(settings)
        kwargs: dict = {"connect_args": {"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_ms / 1000}}
        if in_memory:
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_timeout"] = settings.db_connect_timeout_seconds
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms, wal=not in_memory)
        if not in_memory:  # one connection is the whole database: never throw it away
            _discard_broken_connections(engine)
        return engine
    engine = create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
        pool_timeout=settings.db_connect_timeout_seconds,
        connect_args=_postgres_connect_args(
            url,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            lock_timeout_ms=settings.db_lock_timeout_ms,
            connect_timeout_seconds=settings.db_connect_timeout_seconds,
        ),
    )
    _discard_broken_connections(engine)
    return engine


def make_probe_engine(settings: Settings, main: Engine) -> Engine:
    """The engine the readiness probe uses: no pool, so that a pool exhausted by
    stuck requests cannot make the probe wait, and every wait capped at
    ``ready_timeout_seconds``. An in-memory database exists only in the main
    engine's one connection, so there the main engine is the probe's too."""
    if _in_memory(settings):
        return main
    timeout = settings.ready_timeout_seconds
    if settings.is_sqlite:
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": timeout}
    else:
        connect_args = _postgres_connect_args(
            settings.database_url,
            statement_timeout_ms=int(timeout * 1000),
            lock_timeout_ms=int(timeout * 1000),
            connect_timeout_seconds=max(2, math.ceil(timeout)),  # libpq's least
        )
    return create_engine(settings.database_url, poolclass=NullPool, connect_args=connect_args)


def _postgres_connect_args(
    url: str, *, statement_timeout_ms: int, lock_timeout_ms: int, connect_timeout_seconds: int
) -> dict[str, Any]:
    """Timeouts as server settings of every new connection (no round trip, and they
    hold for the assignment hot path's own connections too). ``options`` given in the
    URL (a search_path, say) are kept, after ours, so that they win."""
    query = make_url(url).query
    given = query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    ours = f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms}"
    args: dict[str, Any] = {"options": f"{ours} {given}".strip()}
    if "connect_timeout" not in query:
        args["connect_timeout"] = connect_timeout_seconds
    return args


# SQLite result codes (the low byte of ``sqlite_errorcode``) after which a connection
# stays useless: READONLY (a connection opened while the file could not be written is
# read-only for good), IOERR, FULL, CANTOPEN.
_SQLITE_BROKEN = frozenset({8, 10, 13, 14})
# PostgreSQL SQLSTATEs of the same kind: read-only transaction (a connection to a server
# that became a standby), disk full, I/O error, server shutting down or starting up;
# and class 08, connection exceptions.
_POSTGRES_BROKEN = frozenset({"25006", "53100", "58030", "57P01", "57P02", "57P03"})


def connection_is_broken(exc: BaseException) -> bool:
    """Whether a driver error means the connection it came from should be thrown away
    and a new one opened, because this one will keep failing after the fault is gone."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_BROKEN
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is not None and (sqlstate in _POSTGRES_BROKEN or sqlstate.startswith("08"))


def _discard_broken_connections(engine: Engine) -> None:
    """Make the engine's dialect count :func:`connection_is_broken` errors as
    disconnects. SQLAlchemy then invalidates that connection, and every other one of
    the pool opened before it (so all connections opened during a fault go), and
    reconnects on next use. Done on the dialect rather than in a ``handle_error``
    listener because the assignment hot path (``assignment.ExposureStore``) runs its
    statements on driver connections outside SQLAlchemy's execution and asks
    ``dialect.is_disconnect`` itself whether to replace its connection: one rule for
    both."""
    dialect = engine.dialect
    detect = dialect.is_disconnect

    def is_disconnect(  # the names of Dialect.is_disconnect's parameters, as they may be passed by name
        e: DBAPIModule.Error,
        connection: PoolProxiedConnection | DBAPIConnection | None,
        cursor: DBAPICursor | None,
    ) -> bool:
        return detect(e, connection, cursor) or connection_is_broken(e)

    dialect.is_disconnect = is_disconnect  # type: ignore[method-assign]


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
        options = connection.get_execution_options()
        mode = options.get("sqlite_begin", "DEFERRED")
        wait_ms = options.get("sqlite_lock_wait_ms")
        if wait_ms is None:
            connection.exec_driver_sql(f"BEGIN {mode}")
            return
        # What is left of a wait that began earlier (ingest's turn): BEGIN IMMEDIATE
        # waits that long for the write lock, then the connection's own timeout again.
        connection.exec_driver_sql(f"PRAGMA busy_timeout={int(wait_ms)}")
        try:
            connection.exec_driver_sql(f"BEGIN {mode}")
        finally:
            connection.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")


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
        self.probe_engine = make_probe_engine(settings, self.engine)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def write(self, *, lock_wait_ms: int | None = None) -> Iterator[Session]:
        """A session in one write transaction, committed on success.

        On SQLite it begins IMMEDIATE (waits for the write lock rather than failing
        later), for ``lock_wait_ms`` when given instead of the busy timeout, or for what
        is left of it since the request was accepted (``request_budget``). Lock errors
        that still escape are not retried here: callers that are idempotent use
        :func:`retry_on_lock`.
        """
        session = self.sessionmaker()
        try:
            if self.settings.is_sqlite:
                if lock_wait_ms is None:
                    lock_wait_ms = request_budget.wait_left_ms(self.settings.sqlite_busy_timeout_ms)
                options: dict[str, Any] = {"sqlite_begin": "IMMEDIATE"}
                if lock_wait_ms is not None:
                    options["sqlite_lock_wait_ms"] = lock_wait_ms
                session.connection(execution_options=options)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def background_reader(self) -> Iterator[Session]:
        """A session for reads no request waits for (a report's daily series, its
        segment breakdowns): on PostgreSQL its transaction may run statements for
        ``db_background_statement_timeout_ms`` instead of the request timeout, which
        would cancel a grouping over millions of rows."""
        with self.sessionmaker() as session:
            if not self.settings.is_sqlite:
                timeout = int(self.settings.db_background_statement_timeout_ms)
                session.execute(text(f"SET LOCAL statement_timeout = {timeout}"))
            yield session


def retry_on_lock(
    fn: Callable[[], T], *, attempts: int = 5, base_delay: float = 0.05, budget_seconds: float = 2.0
) -> T:
    """Run an idempotent transaction again when it failed in a way another try may not:
    at once, once, on a new connection when its connection was discarded (a broken
    connection: the fault may be over); and with backoff on a lock that SQLite refused
    without waiting (a read transaction that could not upgrade) or a PostgreSQL
    serialisation failure. Not after ``budget_seconds``: a lock error that comes after
    the busy or lock timeout has waited long enough, and waiting again would hold the
    worker past its timeout. Other errors propagate at once."""
    started = time.monotonic()
    reconnected = False
    attempt = 0
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if exc.connection_invalidated and not reconnected:
                reconnected = True
                continue
            message = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
            transient = isinstance(exc, OperationalError) and (
                "locked" in message or "busy" in message or "could not serialize" in message
            )
            delay = base_delay * (2**attempt)
            attempt += 1
            if not transient or attempt >= attempts or time.monotonic() - started + delay > budget_seconds:
                raise
            time.sleep(delay)


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
