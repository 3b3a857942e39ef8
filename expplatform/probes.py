"""Liveness and readiness probes for a supervisor or a load balancer.

``/healthz`` (liveness) answers from the worker alone: a 200 means the process serves
requests, so restarting it would not help. It never touches the database, which is
also why ``/api/v1/health`` keeps answering while the database is down.

``/readyz`` (readiness) says whether requests can be served now: the database is
reached within ``EXPPLATFORM_READY_TIMEOUT_SECONDS``, the tables the hot paths write are
not locked away (PostgreSQL) or read-only (SQLite), and the schema is at the migration
this code needs. It connects through the probe engine (``db.make_probe_engine``), which
has no pool, so requests stuck on the database cannot make the probe wait for a
connection. A 503 names the first problem found, and is logged.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from alembic.runtime.migration import MigrationContext
from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import migrations
from .auth import public
from .db import Database, get_db
from .models import Event, Exposure

log = logging.getLogger(__name__)
bp = Blueprint("probes", __name__)
# The tables every assignment and event batch writes.
HOT_TABLES = (Exposure.__tablename__, Event.__tablename__)
_HEAD = "probes.schema_head"


class NotReady(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@bp.get("/healthz")
@public
def healthz() -> dict[str, str]:
    """Liveness: the worker answers; no database."""
    return {"status": "ok"}


@bp.get("/readyz")
@public
def readyz() -> Any:
    head = current_app.extensions[_HEAD]
    try:
        revision = check_ready(get_db(), head)
    except NotReady as problem:
        log.warning("not ready: %s: %s", problem.code, problem.message)
        response = jsonify({"error": problem.code, "message": problem.message})
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response
    return {"status": "ready", "schema": revision}


def check_ready(database: Database, head: str | None) -> str | None:
    """The schema revision of a database ready to serve, else :class:`NotReady`.
    ``head`` None: the schema is not checked (tests that create tables directly)."""
    if database.settings.is_sqlite:
        _require_writable_files(database.probe_engine.url.database)
    try:
        with database.probe_engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # Waits at most the probe's lock timeout behind a LOCK TABLE or a migration.
                connection.exec_driver_sql(f"LOCK TABLE {', '.join(HOT_TABLES)} IN ACCESS SHARE MODE")
            else:
                connection.execute(text("SELECT count(*) FROM sqlite_master"))
            revision = _revision(connection) if head is not None else None
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in {"55P03", "57014"} or "locked" in str(exc.orig) or "busy" in str(exc.orig):
            raise NotReady("database_locked", f"The database is locked: {exc.orig}".strip()) from exc
        raise NotReady("database_unreachable", f"The database cannot be reached: {exc.orig}".strip()) from exc
    except SQLAlchemyError as exc:
        raise NotReady("database_unreachable", f"The database cannot be reached: {exc}") from exc
    if head is not None and revision != head:
        raise NotReady(
            "schema_out_of_date",
            f"The database schema is at revision {revision} but this version of expplatform needs {head}.",
        )
    return revision


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _require_writable_files(path: str | None) -> None:
    """A SQLite file that cannot be opened for writing (``chattr +i``, a read-only
    mount) serves reads but fails every write; root ignores permission bits, so ask
    the kernel by opening it, which takes no lock."""
    if not path or path == ":memory:":
        return
    for name in (path, f"{path}-wal"):
        try:
            os.close(os.open(name, os.O_RDWR))
        except FileNotFoundError:
            if name == path:
                raise NotReady("database_unreachable", f"The database file {path} does not exist.") from None
        except OSError as exc:
            raise NotReady("database_read_only", f"The database file {name} cannot be written: {exc}") from None


def init_app(app: Flask) -> None:
    settings = app.extensions["settings"]
    # Read once: the migration scripts do not change while the worker runs.
    app.extensions[_HEAD] = migrations.head_revision() if settings.check_migrations else None
    app.register_blueprint(bp)
