"""What the benchmarks share: a throwaway database per run, and real gunicorn serving."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database(backend: str, name: str, admin_url: str | None = None) -> Iterator[str]:
    """An empty database for one benchmark: a SQLite file in a temporary folder, or a
    PostgreSQL database ``name`` created for the run and dropped after it (on the server
    of ``admin_url``, default ``BENCH_PG_URL``)."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix=f"{name}_"))
        try:
            yield f"sqlite:///{directory / 'bench.sqlite3'}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    admin_url = postgres_driver_url(admin_url or PG_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def postgres_driver_url(url: str) -> str:
    """``url`` with the psycopg (3) driver named, as the service itself reads it."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gunicorn(app_spec: str, cwd: Path, env: dict[str, str], settings: list[str]) -> Iterator[tuple[int, int]]:
    """Serve ``app_spec`` with these gunicorn settings until it answers its health
    check; yields (port, master pid)."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            *settings,
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            app_spec,
        ],
        cwd=cwd,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/api/v1/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"gunicorn did not start {app_spec}")
            time.sleep(0.2)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def answers_health(port: int, timeout: float = 5.0) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", "/api/v1/health")
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except OSError:
        return False


class GunicornServer:
    """A gunicorn master that can be killed and started again on the same port, the
    way an operator (or systemd) restarts it: the same command each time.

    Each master is started in a session of its own, so its workers, even orphaned by
    a SIGKILLed master, are found (by process group) and stopped at the end. Output
    goes to ``log_path``."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], port: int, log_path: Path) -> None:
        self.command = command
        self.cwd = cwd
        self.env = env
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: list[int] = []
        self.starts = 0
        self.stopped = False
        self._lock = threading.Lock()  # a start from a supervising thread never follows stop()

    def start(self) -> int:
        """Launch a master (not waiting for it to serve); return its pid."""
        with self._lock, self.log_path.open("ab") as log:
            if self.stopped:
                raise RuntimeError("this server was stopped")
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(self.process.pid)
            self.starts += 1
            return self.process.pid

    @property
    def master(self) -> int | None:
        return None if self.process is None else self.process.pid

    def master_exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def bound(self) -> bool:
        """Whether the current master has said it listens (its own line in the log),
        as opposed to orphaned workers of an earlier one still holding the socket."""
        if self.master_exited():
            return False
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return any("Listening at:" in line and f"({self.master})" in line for line in log.splitlines())

    def wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.master_exited():
                return False
            if answers_health(self.port, timeout=2):
                return True
            time.sleep(0.1)
        return False

    def workers(self) -> list[int]:
        """The current master's live children (its workers)."""
        if self.master_exited():
            return []
        pid = self.master
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def kill_master(self) -> int | None:
        """SIGKILL the master (its workers are left to notice); return its pid."""
        if self.process is None or self.master_exited():
            return None
        pid = self.process.pid
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        return pid

    def stop(self) -> None:
        """SIGTERM the live master and wait; then SIGKILL whatever is left in any
        process group this server started (orphaned workers of a killed master)."""
        with self._lock:
            self.stopped = True
        if self.process is not None and not self.master_exited():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for group in self.groups:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
