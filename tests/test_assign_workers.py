"""Assignment across workers, simulated by several app instances (each with its own
engine and caches, like gunicorn workers) on one SQLite file or PostgreSQL schema:
concurrent first calls leave exactly one exposure, and a definition changed through
one instance is served by the others within the refresh interval."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import func, select, text

from expplatform.assignment import exposure_store
from expplatform.auth import create_api_key
from expplatform.models import Exposure

from .assign_support import URL, exposures, seed
from .conftest import POSTGRES_URL, Api, make_test_app

WORKERS = 8


def _apps(database_url, tmp_path, count: int, **overrides):
    return [make_test_app(database_url, tmp_path / f"w{i}", **overrides) for i in range(count)]


def _dispose(apps) -> None:
    for app in apps:
        app.extensions["db"].engine.dispose()


def test_concurrent_first_calls_from_many_workers_leave_exactly_one_exposure(db, client_key, database_url, tmp_path):
    for name in ("alpha", "beta", "gamma"):
        seed(db, name)
    apps = _apps(database_url, tmp_path, WORKERS)
    try:
        clients = [Api(app.test_client(), client_key) for app in apps]
        for round_number in range(4):
            customer = f"racer-{round_number}"
            # Each worker asks for the experiments in its own order, as pages would.
            orders = [["alpha", "beta", "gamma"][i % 3 :] + ["alpha", "beta", "gamma"][: i % 3] for i in range(WORKERS)]
            barrier = threading.Barrier(WORKERS)
            results: list[dict | None] = [None] * WORKERS
            errors: list[BaseException] = []

            def call(index: int, barrier=barrier, customer=customer, orders=orders, results=results, errors=errors):
                try:
                    barrier.wait()
                    response = clients[index].post(URL, json={"customer_id": customer, "experiments": orders[index]})
                    assert response.status_code == 200, response.json
                    results[index] = {a["experiment"]: a["variant"] for a in response.json["assignments"]}
                except BaseException as exc:  # reported below, in the test's thread
                    errors.append(exc)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(WORKERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert all(result == results[0] for result in results)
            with db.sessionmaker() as session:
                rows = session.execute(
                    select(Exposure.experiment_id, func.count())
                    .where(Exposure.customer_id == customer)
                    .group_by(Exposure.experiment_id)
                ).all()
            assert sorted(count for _, count in rows) == [1, 1, 1]
    finally:
        _dispose(apps)


def _experiment(key: str) -> dict:
    return {
        "key": key,
        "name": key,
        "target_stage": "purchase",
        "variants": [{"key": "control", "weight": 0.5}, {"key": "treatment", "weight": 0.5}],
    }


class Clock:
    """A clock the test moves by hand: "once the refresh interval has passed" is exact,
    however loaded the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_changes_through_one_instance_reach_another_once_its_refresh_interval_passes(database_url, tmp_path):
    refresh = 0.5
    editor, server = _apps(database_url, tmp_path, 2, definitions_refresh_seconds=refresh)
    clock = Clock()
    server.extensions["assignment_cache"].clock = clock
    try:
        with editor.extensions["db"].write() as session:
            _record, admin = create_api_key(session, "admin", "automation", created_by="tests")
            _record, client = create_api_key(session, "client", "shop", created_by="tests")
        admin_api = Api(editor.test_client(), admin)
        shop = Api(server.test_client(), client)
        body = {"customer_id": "watcher", "experiments": ["fresh"]}

        def seen() -> dict:
            return shop.post(URL, json=body).json["assignments"][0]

        assert seen()["reason"] == "unknown_experiment"
        for change, expected in (
            (lambda: admin_api.post("/api/v1/experiments", json=_experiment("fresh")), {"reason": "not_running"}),
            (lambda: admin_api.post("/api/v1/experiments/fresh/start"), {"enrolled": True}),
            (lambda: admin_api.post("/api/v1/experiments/fresh/pause"), {"reason": "paused"}),
        ):
            before = seen()
            assert change().status_code in (200, 201)
            clock.now += refresh * 0.99
            assert seen() == before  # served from the cache: no look at the database yet
            clock.now += refresh * 0.02
            assert expected.items() <= seen().items()  # the next call after the interval sees it
    finally:
        _dispose([editor, server])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_locked_database_is_a_503_and_nothing_half_written(database_url, tmp_path):
    """SQLite: another writer holds the lock past the busy timeout; the insert fails
    cleanly (503, retry later) and the retry, once the lock is gone, records once."""
    app = make_test_app(database_url, tmp_path, sqlite_busy_timeout_ms=20)
    try:
        db = app.extensions["db"]
        with db.write() as session:
            _record, key = create_api_key(session, "client", "shop", created_by="tests")
        seed(db, "locked")
        api = Api(app.test_client(), key)
        blocker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            refused = api.post(URL, json={"customer_id": "c1"})
            assert (refused.status_code, refused.json["error"]) == (503, "database_unavailable")
            assert refused.headers["Retry-After"] == "1"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert api.post(URL, json={"customer_id": "c1"}).json["assignments"][0]["enrolled"] is True
        assert len(exposures(db)) == 1
    finally:
        app.extensions["db"].engine.dispose()


@pytest.mark.skipif(not POSTGRES_URL, reason="needs EXPPLATFORM_TEST_POSTGRES_URL (always set on CI)")
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_dropped_postgresql_connection_is_replaced_without_an_error(app, db, client_api, database_url):
    seed(db, "resilient")
    first = client_api.post(URL, json={"customer_id": "c1"}).json
    store = exposure_store(app)
    # The connection this thread's calls use (the test client serves in this thread).
    backend = store._connection().connection.dbapi_connection.info.backend_pid
    with db.engine.connect() as admin:
        assert admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    assert client_api.post(URL, json={"customer_id": "c1"}).json == first
    assert client_api.post(URL, json={"customer_id": "c2"}).status_code == 200
    assert len(exposures(db)) == 2
