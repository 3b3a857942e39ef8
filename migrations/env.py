"""Alembic environment: uses the app's metadata; a connection can be injected
(``config.attributes['connection']``) so tests and the CLI migrate the exact engine
they hold. Batch mode lets SQLite alter tables; empty autogenerate runs write nothing."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from expplatform import models  # noqa: F401  (registers the tables)
from expplatform.db import Base
from expplatform.models import UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_, obj, autogen_context):
    """Render our UTC wrapper as the plain column type it stores, so migrations do
    not depend on application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _skip_empty(context_, revision, directives):
    if getattr(config.cmd_opts, "autogenerate", False) and directives and directives[0].upgrade_ops.is_empty():
        directives[:] = []


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,
        render_item=render_item,
        process_revision_directives=_skip_empty,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        _configure(connection)
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
