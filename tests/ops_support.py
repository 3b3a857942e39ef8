"""Faults for the operations tests: an immutable file, and the hot tables locked by
another session."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def chattr(*args: str) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(["chattr", *args], capture_output=True).returncode == 0


@contextmanager
def hot_tables_locked(database_url: str) -> Iterator[Callable[[], None]]:
    """Another session locks the tables every assignment and event batch uses, as an
    operator's ``LOCK TABLE ... ACCESS EXCLUSIVE`` (PostgreSQL) or a long write
    transaction (SQLite) would, until the block ends or the yielded release is called."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(make_url(database_url).database, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = lambda: holder.in_transaction and holder.execute("ROLLBACK")  # noqa: E731
        try:
            yield release
        finally:
            release()
            holder.close()
        return
    engine = create_engine(database_url)
    connection = engine.connect()
    connection.execute(text("LOCK TABLE exposures, events IN ACCESS EXCLUSIVE MODE"))
    try:
        yield connection.rollback
    finally:
        connection.rollback()
        connection.close()
        engine.dispose()
