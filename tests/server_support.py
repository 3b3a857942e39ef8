"""Real processes for the worker and install tests: the ``expplatform`` command, a
gunicorn server answering on a free port, and JSON over HTTP with the standard library."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START_SECONDS = 120  # upper bounds on a loaded 2-core machine, never synchronisation delays
STOP_SECONDS = 60


def service_env(database_url: str, instance: Path, **settings: str) -> dict[str, str]:
    """The environment of a service process using this checkout (first on the path,
    whether or not it is installed) with ``EXPPLATFORM_<NAME>`` settings."""
    env = {**os.environ, "EXPPLATFORM_DATABASE_URL": database_url, "EXPPLATFORM_INSTANCE_PATH": str(instance)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update({f"EXPPLATFORM_{name.upper()}": value for name, value in settings.items()})
    return env


def cli(
    env: Mapping[str, str], *args: str, cwd: Path, python: str = sys.executable, timeout: float = START_SECONDS
) -> subprocess.CompletedProcess[str]:
    """Run ``expplatform ARGS`` (as ``python -m expplatform.cli``) and return the result."""
    return subprocess.run(
        [python, "-m", "expplatform.cli", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, key: str | None = None, body: Any = None, timeout: float = 30) -> Response:
    """One request; HTTP errors are returned, not raised."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Response(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read())


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> set[int]:
        """The gunicorn master's children: its web workers."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return {int(pid) for pid in children.split()}

    def healthy(self) -> bool:
        try:
            return http("GET", f"{self.url}/api/v1/health", timeout=5).status == 200
        except OSError:
            return False


def wait_for(condition, what: str, *, seconds: float = START_SECONDS, every: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


@contextmanager
def gunicorn(command: Sequence[str], env: Mapping[str, str], cwd: Path, *, workers: int = 1) -> Iterator[Server]:
    """Serve the app with ``command`` (the gunicorn executable, or ``python -m
    gunicorn``) and one gthread worker per ``workers``, until its health check answers."""
    port = free_port()
    process = subprocess.Popen(
        [
            *command,
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "expplatform.serve:wsgi_app()",
        ],
        cwd=cwd,
        env=dict(env),
    )
    server = Server(process, port)
    try:
        wait_for(lambda: server.healthy() or process.poll() is not None, "gunicorn to answer")
        assert process.poll() is None, f"gunicorn exited with {process.returncode}"
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
