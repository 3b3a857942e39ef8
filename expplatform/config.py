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


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{ENV_PREFIX}{name} must be true or false, got {raw!r}")


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


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with; defaults suit `make run`."""

    instance_path: Path
    database_url: str
    secret_key: str
    testing: bool = False
    # Refuse to serve when the schema is behind the migrations (tests create it directly).
    check_migrations: bool = True
    sqlite_busy_timeout_ms: int = 30_000
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
    "sqlite_busy_timeout_ms": _parse_int,
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
    return Settings(instance_path=instance_path, database_url=database_url, secret_key=secret_key, **values)
