"""Real gunicorn, started with the project's gunicorn.conf.py, for the tests of what only
a served process shows (log lines on stderr, a master restarted after a SIGKILL)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine

from expplatform import migrations

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
# The app as wsgi.py serves it.
APP_MODULE = """
from expplatform import create_app

app = create_app()
"""


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.master_pid}/task/{self.master_pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()  # also when the server is not up yet (the callers poll)


def prepare(tmp_path: Path) -> dict[str, str]:
    """A migrated SQLite database and the app module; the environment to serve them."""
    database = tmp_path / "served.sqlite3"
    if not database.exists():
        engine = create_engine(f"sqlite:///{database}")
        migrations.upgrade(engine)
        engine.dispose()
    (tmp_path / "served_app.py").write_text(APP_MODULE)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
        "EXPPLATFORM_DATABASE_URL": f"sqlite:///{database}",
        "EXPPLATFORM_INSTANCE_PATH": str(tmp_path / "instance"),
    }


def start(tmp_path: Path, settings: list[str], port: int, log_name: str = "gunicorn.log") -> Server:
    log = tmp_path / log_name
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [
                str(GUNICORN),
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                *settings,
                "--bind",
                f"127.0.0.1:{port}",
                "served_app:app",
            ],
            cwd=tmp_path,
            env=prepare(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return Server(port, process, log)


def wait_until_serving(server: Server, deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            if get(server.port, "/healthz").status == 200:
                return
        except OSError:
            pass
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({server.process.returncode}): {server.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn did not answer in {deadline_seconds} s: {server.log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)


@contextmanager
def serve(tmp_path: Path, settings: list[str]) -> Iterator[Server]:
    server = start(tmp_path, settings, free_port())
    try:
        wait_until_serving(server)
        yield server
    finally:
        stop(server)
