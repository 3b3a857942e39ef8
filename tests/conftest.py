"""Shared fixtures.

Every test that touches the database runs on SQLite (a WAL file per test) and, when
EXPPLATFORM_TEST_POSTGRES_URL is set, on PostgreSQL too: each pytest-xdist worker gets
its own schema, created once and truncated between tests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from expplatform import create_app
from expplatform.auth import SESSION_TOKEN, create_api_key, create_user, session_lifetime, start_session
from expplatform.db import Base

POSTGRES_URL = os.environ.get("EXPPLATFORM_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
PASSWORD = "correct horse battery"


def process_tag() -> str:
    """Unique per test process, so concurrent runs never share a schema."""
    return f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"


def postgres_schema_url(schema: str) -> str:
    """The test database URL with every connection's search_path set to ``schema``."""
    assert POSTGRES_URL
    url = make_url(POSTGRES_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def fresh_postgres_schema(schema: str) -> str:
    """Drop and recreate ``schema``; return a URL that uses it."""
    engine = create_engine(postgres_schema_url("public"))
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return postgres_schema_url(schema)


def drop_postgres_schema(schema: str) -> None:
    engine = create_engine(postgres_schema_url("public"))
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_tables_url() -> Iterator[str | None]:
    """A per-worker schema with every table created once for the session."""
    if not POSTGRES_URL:
        yield None
        return
    schema = f"t_{process_tag()}"
    url = fresh_postgres_schema(schema)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield url
    drop_postgres_schema(schema)


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path, postgres_tables_url) -> Iterator[str]:
    """An empty database with every table: SQLite file, or the worker's PG schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.sqlite3'}"
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
    else:
        _truncate_postgres(postgres_tables_url)
        yield postgres_tables_url


def make_test_app(database_url: str, tmp_path, **overrides: Any):
    config = {
        "testing": True,
        "database_url": database_url,
        "instance_path": str(tmp_path / "instance"),
        "check_migrations": False,
        "wtf_csrf_enabled": False,
        "definitions_refresh_seconds": 0.0,
    }
    config.update(overrides)
    return create_app(config)


REPORT_WAIT_SECONDS = 60.0


@pytest.fixture
def app(database_url, tmp_path):
    """The app on the test's database. A report's slow parts are waited for (a loaded
    test machine must not make a series 'computing'), and end with the test."""
    app = make_test_app(database_url, tmp_path, report_wait_seconds=REPORT_WAIT_SECONDS)
    yield app
    app.extensions["report_cache"].slow.wait_idle(REPORT_WAIT_SECONDS)
    app.extensions["db"].engine.dispose()


@pytest.fixture
def seeded(app, db):
    """The report tests' journey experiment with its exposures and outcomes
    (``reports_support.seed_journey``), and the counts it meant to produce."""
    from .reports_support import seed_journey

    return seed_journey(app, db)


@pytest.fixture
def db(app):
    """The app's Database (``db.write()`` for a committed transaction)."""
    return app.extensions["db"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(db):
    def _make(role: str = "editor", email: str | None = None):
        with db.write() as session:
            user = create_user(session, email or f"{role}@example.com", PASSWORD, role)  # type: ignore[arg-type]
        return user

    return _make


def sign_in(client, app, user) -> None:
    """Log ``client`` in as ``user`` with a real server-side login session."""
    with app.extensions["db"].write() as session:
        token = start_session(session, user, session_lifetime(app))
    with client.session_transaction() as flask_session:
        flask_session[SESSION_TOKEN] = token


@pytest.fixture
def login(app, client, make_user):
    """Log the test client in as a fresh user with ``role``; returns the user."""

    def _login(role: str = "editor"):
        user = make_user(role, f"{role}-{os.urandom(3).hex()}@example.com")
        sign_in(client, app, user)
        return user

    return _login


@pytest.fixture
def make_key(db):
    def _make(scope: str = "client", name: str = "test") -> str:
        with db.write() as session:
            _record, plaintext = create_api_key(session, scope, name, created_by="tests")  # type: ignore[arg-type]
        return plaintext

    return _make


@pytest.fixture
def client_key(make_key) -> str:
    return make_key("client", "client app")


@pytest.fixture
def admin_key(make_key) -> str:
    return make_key("admin", "automation")


@dataclass
class Api:
    """Calls to the JSON API with a bearer key, for readable tests."""

    client: Any
    key: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def get(self, path: str, **kwargs):
        return self.client.get(path, headers=self.headers(kwargs.pop("key", None)), **kwargs)

    def post(self, path: str, json: Any = None, **kwargs):
        return self.client.post(path, json=json, headers=self.headers(kwargs.pop("key", None)), **kwargs)

    def patch(self, path: str, json: Any = None, **kwargs):
        return self.client.patch(path, json=json, headers=self.headers(kwargs.pop("key", None)), **kwargs)


@pytest.fixture
def admin_api(client, admin_key) -> Api:
    return Api(client, admin_key)


@pytest.fixture
def client_api(client, client_key) -> Api:
    return Api(client, client_key)


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app served over real HTTP by a threaded server; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
