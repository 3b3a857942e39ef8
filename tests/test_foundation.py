"""Configuration, migrations, start-up checks and the import boundaries."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from expplatform import create_app, migrations
from expplatform.config import ConfigError, load_settings
from expplatform.db import Base
from expplatform.migrations import SchemaOutOfDate

from .conftest import POSTGRES_URL, drop_postgres_schema, fresh_postgres_schema, make_test_app, process_tag


def test_settings_parse_typed_values(tmp_path):
    settings = load_settings(
        environ={
            "EXPPLATFORM_INSTANCE_PATH": str(tmp_path),
            "EXPPLATFORM_MAX_BATCH_EVENTS": "250",
            "EXPPLATFORM_TESTING": "yes",
            "EXPPLATFORM_DATABASE_URL": "postgresql://u@h/db",
        }
    )
    assert settings.max_batch_events == 250
    assert settings.testing is True
    assert settings.database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_BATCH_EVENTS", "lots", "must be an integer"),
        ("MAX_BATCH_EVENTS", "0", "at least 1"),
        ("TESTING", "maybe", "true or false"),
        ("CLOCK_SKEW_SECONDS", "soon", "must be a number"),
        ("DATABASE_URL", "mysql://x/y", "sqlite:/// or postgresql://"),
    ],
)
def test_bad_settings_fail_loudly(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(environ={"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), f"EXPPLATFORM_{name}": value})
    assert name in str(info.value) or name == "DATABASE_URL"


def test_secret_key_is_generated_once_and_persisted(tmp_path):
    first = load_settings(environ={"EXPPLATFORM_INSTANCE_PATH": str(tmp_path)}).secret_key
    second = load_settings(environ={"EXPPLATFORM_INSTANCE_PATH": str(tmp_path)}).secret_key
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert load_settings(environ={"EXPPLATFORM_INSTANCE_PATH": str(tmp_path / "other")}).secret_key != first


def _migration_urls(tmp_path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'migrated.sqlite3'}"]
    if POSTGRES_URL:
        urls.append(fresh_postgres_schema(f"m_{process_tag()}"))
    return urls


def test_migrations_round_trip_and_match_models(tmp_path):
    for url in _migration_urls(tmp_path):
        engine = create_engine(url)
        migrations.upgrade(engine)
        assert migrations.current_revision(engine) == migrations.head_revision()
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations disagree on {url}: {diff}"
        migrations.downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrations.upgrade(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        engine.dispose()
    if POSTGRES_URL:
        drop_postgres_schema(f"m_{process_tag()}")


def test_service_refuses_unmigrated_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    with pytest.raises(SchemaOutOfDate, match="expplatform db upgrade"):
        create_app({"database_url": url, "instance_path": str(tmp_path), "testing": True})
    migrations.upgrade(create_engine(url))
    assert create_app({"database_url": url, "instance_path": str(tmp_path), "testing": True}) is not None


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    db = make_test_app(f"sqlite:///{tmp_path / 'wal.sqlite3'}", tmp_path).extensions["db"]
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.settings.sqlite_busy_timeout_ms


def _connect_at_the_barrier(path: str, barrier, results) -> None:
    from sqlalchemy import text

    from expplatform.db import make_engine

    engine = make_engine(load_settings({"database_url": f"sqlite:///{path}", "instance_path": str(Path(path).parent)}))
    barrier.wait()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT count(*) FROM t"))
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))


def test_workers_starting_together_on_a_file_not_yet_in_wal_mode_all_connect(tmp_path):
    """Gunicorn starts its workers together; on a file in rollback-journal mode each one's
    first connection asks for WAL, and SQLite refuses all but one at once. Measured
    before the fix: 4 of 15 rounds of 6 processes had a worker fail to boot."""
    context = multiprocessing.get_context("fork")
    for round_ in range(8):
        path = tmp_path / f"round{round_}.sqlite3"
        with closing(sqlite3.connect(path)) as plain:
            plain.execute("CREATE TABLE t (x)")
            plain.commit()
        barrier, results = context.Barrier(6), context.Queue()
        workers = [
            context.Process(target=_connect_at_the_barrier, args=(str(path), barrier, results)) for _ in range(6)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert outcomes == ["ok"] * 6
        with closing(sqlite3.connect(path)) as plain:
            assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_importing_the_service_and_starting_it_does_not_load_pymc(tmp_path):
    code = (
        "import sys; from expplatform import create_app; "
        "create_app({'database_url': 'sqlite://', 'testing': True, 'check_migrations': False, "
        f"'instance_path': {str(tmp_path)!r}}}); "
        "import analysis; "
        "bad = [m for m in ('pymc', 'pytensor', 'arviz') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_upgrades_a_fresh_database_and_manages_keys(tmp_path):
    env = {"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    exe = [sys.executable, "-m", "expplatform.cli"]
    run = lambda *args: subprocess.run([*exe, *args], capture_output=True, text=True, env=env)  # noqa: E731
    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0 and f"revision {migrations.head_revision()}" in upgraded.stdout, upgraded.stderr
    created = run("keys", "create", "--scope", "client", "--name", "web shop")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("xp_") and len(key) > 40
    listed = run("keys", "list")
    assert key[:12] in listed.stdout and key not in listed.stdout and "active" in listed.stdout
    revoked = run("keys", "revoke", key[:12])
    assert revoked.returncode == 0
    assert "revoked" in run("keys", "list").stdout
    assert run("keys", "revoke", "xp_nope").returncode == 1


def test_first_definition_changes_on_a_fresh_database_do_not_collide(db):
    """Two workers bumping the version of an empty database at once: both succeed."""
    import threading

    from expplatform.versioning import bump_version, read_version

    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def bump() -> None:
        try:
            barrier.wait()
            with db.write() as session:
                bump_version(session)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with db.sessionmaker() as session:
        assert read_version(session) == 4


def test_demo_setup_creates_login_key_and_demo_experiments_once(tmp_path):
    env = {"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "expplatform.cli", *args], capture_output=True, text=True, env=env)

    assert run("db", "upgrade").returncode == 0
    first = run("demo", "setup")
    assert first.returncode == 0, first.stderr
    key = first.stdout.split("demo client key:")[1].split()[0]
    assert key.startswith("xp_") and "checkout-page" in first.stdout and "demo@example.com" in first.stdout
    second = run("demo", "setup")
    assert second.returncode == 0 and key in second.stdout and "created" not in second.stdout
    listed = run("experiments", "list")
    assert "checkout-page" in listed.stdout and "draft" in listed.stdout
    assert run("keys", "list").stdout.count("demo client app") == 1


def test_every_domain_error_has_one_http_status():
    """A new kind of domain error must get a row in the one table at the edge."""
    from expplatform import errors
    from expplatform.api.errors import status_for

    kinds = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.DomainError)]
    statuses = {cls: status_for(cls.__new__(cls)) for cls in kinds if cls is not errors.DomainError}
    assert len(statuses) == len(kinds) - 1
    assert all(400 <= status < 500 for status in statuses.values())
    with pytest.raises(TypeError):
        status_for(errors.DomainError("unmapped"))
