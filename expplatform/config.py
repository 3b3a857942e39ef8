"""Typed settings, parsed once from the environment.

Every setting comes from an ``EXPPLATFORM_*`` variable (or a test override) and is
parsed into a frozen dataclass; a malformed value stops the service at start with a
message naming the variable, instead of surfacing later as a confusing error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "EXPPLATFORM_"


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def parse_flag(raw: str) -> bool | None:
    """True or false as people write it in settings and query strings; None if neither."""
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    return None


def _parse_bool(name: str, raw: str) -> bool:
    value = parse_flag(raw)
    if value is None:
        raise ConfigError(f"{ENV_PREFIX}{name} must be true or false, got {raw!r}")
    return value


def _parse_int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name} must be at least {minimum}, got {value}")
    return value


def _parse_float(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{ENV_PREFIX}{name} must be at least {minimum}, got {value}")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parse_log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"{ENV_PREFIX}{name} must be one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return level


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with; defaults suit `make run`."""

    instance_path: Path
    database_url: str
    secret_key: str
    testing: bool = False
    # Refuse to serve when the schema is behind the migrations (tests create it directly).
    check_migrations: bool = True
    # Bounded waits. Every wait on the database ends well before gunicorn's worker
    # timeout, as a 503 the client may retry, instead of a worker killed mid-request
    # (checked in load_settings). SQLite: how long a writer waits for the write lock.
    sqlite_busy_timeout_ms: int = 5_000
    # PostgreSQL: the longest one statement may run, the longest it may wait for a
    # lock (a migration or a manual LOCK TABLE), and the longest a new connection (or
    # a connection from an exhausted pool) may take.
    db_statement_timeout_ms: int = 10_000
    db_lock_timeout_ms: int = 2_500  # per statement: a request that meets two locks still answers within 5 s
    db_connect_timeout_seconds: int = 5
    # PostgreSQL: the statement timeout of work no request waits for (report series and
    # segments computed in the background), through Database.background_reader().
    db_background_statement_timeout_ms: int = 300_000
    # /readyz: how long the readiness probe may take to reach the database.
    ready_timeout_seconds: float = 2.0
    # gunicorn (gunicorn.conf.py reads these): a worker silent this long is killed and
    # replaced; on a restart or a stop, workers get this long to finish their requests.
    worker_timeout_seconds: int = 30
    graceful_timeout_seconds: int = 30
    # Logs: one JSON object per line on stderr; a line per request at INFO.
    log_level: str = "INFO"
    # How often a worker checks whether experiment definitions changed (seconds).
    definitions_refresh_seconds: float = 0.5
    max_batch_events: int = 1000
    max_body_bytes: int = 2 * 1024 * 1024
    # Events may arrive this much before the exposure they follow and still count.
    clock_skew_seconds: float = 5.0
    max_future_seconds: float = 24 * 3600
    wtf_csrf_enabled: bool = True
    pool_size: int = 5
    # Full-model (PyMC) jobs: a worker touches its jobs' heartbeat this often, and a
    # job whose heartbeat is older than the timeout belongs to a dead worker.
    job_heartbeat_seconds: float = 5.0
    job_timeout_seconds: float = 120.0
    full_model_draws: int = 1000
    full_model_tune: int = 1000
    full_model_chains: int = 4
    # Reports: the daily series and segment breakdowns take seconds on a million
    # customers, so they are computed in the background, reused for this long while
    # new data arrives, and waited for at most this long by the request that starts one.
    report_refresh_seconds: float = 600.0
    # Warehouse experiments: the fit worker recomputes a running experiment's
    # statistics in its warehouse when the last are older than this.
    warehouse_refresh_seconds: float = 900.0
    # Between two full recomputations, a refresh adds what changed since the last:
    # events received up to the load lag ago (the warehouse has loaded them by then).
    # A full one, at least this often, also counts rows loaded later than that.
    warehouse_full_refresh_seconds: float = 86_400.0
    warehouse_load_lag_seconds: float = 0.0
    # What one warehouse statistics query may hold in memory (DuckDB, ClickHouse spill past it).
    warehouse_memory_limit_mb: int = 2048
    report_wait_seconds: float = 0.5
    # Web logins: an idle session ends after this long (each use renews it); the
    # session cookie is marked Secure when this is set or the request came over TLS.
    session_lifetime_seconds: float = 8 * 3600
    secure_cookies: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_PARSERS: dict[str, Any] = {
    "testing": _parse_bool,
    "check_migrations": _parse_bool,
    "sqlite_busy_timeout_ms": lambda n, r: _parse_int(n, r, minimum=1),
    "db_statement_timeout_ms": lambda n, r: _parse_int(n, r, minimum=1),
    "db_lock_timeout_ms": lambda n, r: _parse_int(n, r, minimum=1),
    "db_connect_timeout_seconds": lambda n, r: _parse_int(n, r, minimum=1),
    "db_background_statement_timeout_ms": lambda n, r: _parse_int(n, r, minimum=1),
    "ready_timeout_seconds": lambda n, r: _parse_float(n, r, minimum=0.1),
    "worker_timeout_seconds": lambda n, r: _parse_int(n, r, minimum=2),
    "graceful_timeout_seconds": lambda n, r: _parse_int(n, r, minimum=1),
    "log_level": _parse_log_level,
    "definitions_refresh_seconds": _parse_float,
    "max_batch_events": lambda n, r: _parse_int(n, r, minimum=1),
    "max_body_bytes": lambda n, r: _parse_int(n, r, minimum=1024),
    "clock_skew_seconds": _parse_float,
    "max_future_seconds": _parse_float,
    "wtf_csrf_enabled": _parse_bool,
    "pool_size": lambda n, r: _parse_int(n, r, minimum=1),
    "job_heartbeat_seconds": lambda n, r: _parse_float(n, r, minimum=0.01),
    "job_timeout_seconds": lambda n, r: _parse_float(n, r, minimum=1.0),
    "full_model_draws": lambda n, r: _parse_int(n, r, minimum=10),
    "full_model_tune": lambda n, r: _parse_int(n, r, minimum=10),
    "full_model_chains": lambda n, r: _parse_int(n, r, minimum=1),
    "report_refresh_seconds": _parse_float,
    "warehouse_refresh_seconds": lambda n, r: _parse_float(n, r, minimum=10.0),
    "warehouse_memory_limit_mb": lambda n, r: _parse_int(n, r, minimum=64),
    "warehouse_full_refresh_seconds": lambda n, r: _parse_float(n, r, minimum=0.0),
    "warehouse_load_lag_seconds": lambda n, r: _parse_float(n, r, minimum=0.0),
    "report_wait_seconds": _parse_float,
    "session_lifetime_seconds": lambda n, r: _parse_float(n, r, minimum=60.0),
    "secure_cookies": _parse_bool,
}


def default_instance_path() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}INSTANCE_PATH", Path.cwd() / "instance")).resolve()


def _persisted_secret(instance_path: Path) -> str:
    """Generate the secret key once and keep it beside the database, never in code."""
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: when several workers start at once, exactly one writes the key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then ``EXPPLATFORM_*`` variables, then explicit overrides (tests)."""
    environ = os.environ if environ is None else environ
    overrides = {k.lower(): v for k, v in (overrides or {}).items()}
    instance_path = Path(
        overrides.get("instance_path") or environ.get(f"{ENV_PREFIX}INSTANCE_PATH") or default_instance_path()
    ).resolve()
    database_url = overrides.get("database_url") or environ.get(f"{ENV_PREFIX}DATABASE_URL")
    if not database_url:
        database_url = f"sqlite:///{instance_path / 'expplatform.sqlite3'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgres://") :]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    if not (database_url.startswith("sqlite") or database_url.startswith("postgresql")):
        raise ConfigError(f"{ENV_PREFIX}DATABASE_URL must be a sqlite:/// or postgresql:// URL, got {database_url!r}")
    secret_key = overrides.get("secret_key") or environ.get(f"{ENV_PREFIX}SECRET_KEY")
    values: dict[str, Any] = {}
    for spec in fields(Settings):
        if spec.name in {"instance_path", "database_url", "secret_key"}:
            continue
        if spec.name in overrides:
            values[spec.name] = overrides[spec.name]
            continue
        raw = environ.get(ENV_PREFIX + spec.name.upper())
        if raw is not None:
            values[spec.name] = _PARSERS[spec.name](spec.name.upper(), raw)
    if not secret_key:
        secret_key = secrets.token_urlsafe(32) if values.get("testing") else _persisted_secret(instance_path)
    settings = Settings(instance_path=instance_path, database_url=database_url, secret_key=secret_key, **values)
    _check_waits_end_before_the_worker_timeout(settings)
    return settings


def _check_waits_end_before_the_worker_timeout(settings: Settings) -> None:
    """A database wait as long as the worker timeout ends with gunicorn killing the
    worker (a dropped connection, every other request of that worker lost) instead of
    a 503: refuse such settings at start. A request may wait twice (the assignment
    fast path hands a call that failed to the Flask view, which tries again), so twice
    each wait must end before the worker timeout."""
    limit_ms = settings.worker_timeout_seconds * 1000
    waits_ms = {
        "SQLITE_BUSY_TIMEOUT_MS": settings.sqlite_busy_timeout_ms,
        "DB_STATEMENT_TIMEOUT_MS": settings.db_statement_timeout_ms,
        "DB_LOCK_TIMEOUT_MS": settings.db_lock_timeout_ms,
        "DB_CONNECT_TIMEOUT_SECONDS": settings.db_connect_timeout_seconds * 1000,
        "READY_TIMEOUT_SECONDS": settings.ready_timeout_seconds * 1000,
    }
    for name, wait_ms in waits_ms.items():
        if 2 * wait_ms >= limit_ms:
            raise ConfigError(
                f"{ENV_PREFIX}{name} must be shorter than half {ENV_PREFIX}WORKER_TIMEOUT_SECONDS "
                f"({settings.worker_timeout_seconds} s), or a slow database gets workers killed instead of a 503"
            )
