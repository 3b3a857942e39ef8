"""Alembic, driven from the app: the only way the schema changes outside tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from .bundled import bundled_dir

MIGRATIONS_DIR: Path = bundled_dir("migrations")


class SchemaOutOfDate(RuntimeError):
    pass


def alembic_config(database_url: str, connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(str(engine.url.render_as_string(hide_password=False)), connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(str(engine.url.render_as_string(hide_password=False)), connection), revision)


def require_current(engine: Engine) -> None:
    """Refuse to serve a database whose schema is not at the latest migration."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaOutOfDate(
            f"The database at {engine.url.render_as_string(hide_password=True)} has no schema yet. "
            "Run `expplatform db upgrade` first."
        )
    raise SchemaOutOfDate(
        f"The database schema is at revision {current} but this version of expplatform needs {head}. "
        "Run `expplatform db upgrade`."
    )
