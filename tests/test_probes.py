"""/healthz (liveness: the worker, no database) and /readyz (readiness: the database
reachable in time, its hot tables usable, the schema current), on both databases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from expplatform import migrations

from .conftest import POSTGRES_URL, drop_postgres_schema, fresh_postgres_schema, make_test_app, process_tag
from .ops_support import chattr, hot_tables_locked

READY_TIMEOUT = 0.5


def probed_app(database_url: str, tmp_path: Path, **overrides):
    app = make_test_app(database_url, tmp_path, ready_timeout_seconds=READY_TIMEOUT, **overrides)
    return app


@pytest.fixture(params=["sqlite"] + (["postgresql"] if POSTGRES_URL else []))
def migrated_url(request, tmp_path) -> Iterator[str]:
    """A database brought to the latest migration the way `expplatform db upgrade` does."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    else:
        schema = f"probes_{process_tag()}"
        url = fresh_postgres_schema(schema)
    engine = create_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    yield url
    if request.param == "postgresql":
        drop_postgres_schema(schema)


@pytest.fixture
def migrated_app(migrated_url, tmp_path):
    app = probed_app(migrated_url, tmp_path, check_migrations=True)
    yield app
    app.extensions["db"].engine.dispose()


def timed_get(app, path: str):
    started = time.monotonic()
    response = app.test_client().get(path)
    return response, time.monotonic() - started


def assert_not_ready(response, code: str) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.json["error"] == code and response.json["message"]
    assert response.headers["Retry-After"] == "1"


def test_ready_when_the_database_is_reachable_and_current(migrated_app):
    response = migrated_app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ready", "schema": migrations.head_revision()}
    assert migrated_app.test_client().get("/healthz").json == {"status": "ok"}


def test_not_ready_on_a_schema_behind_the_code(migrated_app, migrated_url):
    engine = create_engine(migrated_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    engine.dispose()
    response = migrated_app.test_client().get("/readyz")
    assert_not_ready(response, "schema_out_of_date")
    assert "older" in response.json["message"]


def down(database_url: str, tmp_path: Path) -> str:
    """The same kind of database, unreachable: a missing file, a port nobody listens on."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'gone' / 'missing.sqlite3'}"
    return make_url(database_url).set(host="127.0.0.1", port=9).render_as_string(hide_password=False)


def test_a_worker_starting_during_an_outage_boots_and_is_not_ready(database_url, tmp_path):
    """A worker that refused to boot would make gunicorn stop the whole service; one
    started while the database is down serves 503s and recovers with it."""
    app = probed_app(down(database_url, tmp_path), tmp_path, check_migrations=True)
    try:
        ready, _ = timed_get(app, "/readyz")
    finally:
        app.extensions["db"].engine.dispose()
    assert_not_ready(ready, "database_unreachable")


def test_the_database_down_is_not_ready_but_still_alive(database_url, tmp_path):
    app = probed_app(down(database_url, tmp_path), tmp_path)
    try:
        alive, _ = timed_get(app, "/healthz")
        legacy, _ = timed_get(app, "/api/v1/health")
        ready, seconds = timed_get(app, "/readyz")
    finally:
        app.extensions["db"].engine.dispose()
    assert alive.status_code == 200 and legacy.status_code == 200
    assert_not_ready(ready, "database_unreachable")
    assert seconds < 5


def test_hot_tables_locked_is_not_ready_within_the_timeout(database_url, tmp_path):
    app = probed_app(database_url, tmp_path)
    app.extensions["db"].engine.connect().close()  # the app's first connection puts SQLite in WAL mode
    try:
        with hot_tables_locked(database_url):
            ready, seconds = timed_get(app, "/readyz")
            alive, alive_seconds = timed_get(app, "/healthz")
        after, _ = timed_get(app, "/readyz")
    finally:
        app.extensions["db"].engine.dispose()
    assert alive.status_code == 200 and alive_seconds < 1
    if database_url.startswith("sqlite"):
        # A SQLite write lock does not stop readers, and it is the writers' busy timeout
        # that bounds how long a write waits for it: still ready.
        assert ready.status_code == 200
    else:
        assert_not_ready(ready, "database_locked")
        assert seconds < READY_TIMEOUT + 2
    assert after.status_code == 200


def test_readiness_does_not_wait_for_an_exhausted_pool(database_url, tmp_path):
    app = probed_app(database_url, tmp_path, pool_size=1, db_connect_timeout_seconds=5)
    engine = app.extensions["db"].engine
    held = [engine.connect() for _ in range(engine.pool.size() + max(engine.pool._max_overflow, 0))]
    try:
        ready, seconds = timed_get(app, "/readyz")
    finally:
        for connection in held:
            connection.close()
        engine.dispose()
    assert ready.status_code == 200 and seconds < 2


def test_an_immutable_sqlite_file_is_not_ready(tmp_path):
    url = f"sqlite:///{tmp_path / 'ro.sqlite3'}"
    engine = create_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    path = tmp_path / "ro.sqlite3"
    app = probed_app(url, tmp_path, check_migrations=True)  # puts the file in WAL mode, as a worker does
    app.extensions["db"].engine.dispose()
    if not chattr("+i", str(path)):
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs/btrfs)")
    try:
        ready, _ = timed_get(app, "/readyz")
        app.extensions["db"].engine.dispose()
    finally:
        chattr("-i", str(path))
    assert_not_ready(ready, "database_read_only")
