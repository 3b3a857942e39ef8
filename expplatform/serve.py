"""``expplatform serve``: the web (gunicorn) and the fit workers as one service.

Full-model fits run in ``expplatform worker`` processes, never in the web workers
(see ``jobs.py``). This supervisor starts gunicorn and the fit workers side by side as
child processes and stops them together: on SIGINT/SIGTERM (Ctrl-C) it passes SIGTERM
on and waits for them; when one of them exits by itself, it stops the others too and
reports the failure rather than serve half a service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from flask import Flask

GRACE_SECONDS = 30.0  # how long a child may take to stop before it is killed


def wsgi_app() -> Flask:
    """The served app, as gunicorn loads it (``expplatform.serve:wsgi_app()``): what
    ``wsgi.py`` does, from the installed package, so it works from any directory."""
    from . import create_app, plots

    app = create_app()
    plots.warm_up_after_fork()  # in each worker, so its first report page need not wait
    return app


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    threads: int = 4
    fit_workers: int = 1
    poll_seconds: float = 2.0


def commands(options: ServeOptions) -> dict[str, list[str]]:
    """The child processes, by name: gunicorn, then the fit workers."""
    python = sys.executable
    children = {
        "gunicorn": [
            python,
            "-P",  # no current directory on sys.path (gunicorn adds it back, see bundled.check_analysis)
            "-m",
            "gunicorn",
            "--workers",
            str(options.workers),
            "--worker-class",
            "expplatform.gunicorn_worker.HandoverWorker",
            "--threads",
            str(options.threads),
            "--bind",
            f"{options.host}:{options.port}",
            "--access-logfile",
            "-",
            "expplatform.serve:wsgi_app()",
        ]
    }
    for number in range(1, options.fit_workers + 1):
        children[f"fit worker {number}"] = [
            python,
            "-P",  # a folder named `analysis` where it runs must not hide ours
            "-m",
            "expplatform.cli",
            "worker",
            "--poll-seconds",
            str(options.poll_seconds),
        ]
    return children


def supervise(children: Mapping[str, Sequence[str]], *, grace_seconds: float = GRACE_SECONDS) -> int:
    """Run ``children`` until a signal or until one exits; stop the rest; return 0 when
    stopped by a signal (or when every child ended well), else 1."""
    stopping = False
    running: dict[str, subprocess.Popen[bytes]] = {}

    def stop_all(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in running.values():
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        for name, command in children.items():
            running[name] = subprocess.Popen(list(command))
        by_pid = {child.pid: name for name, child in running.items()}
        pid, status = os.wait()  # the first child to end (retried after a signal handler)
        first = by_pid[pid]
        running[first].returncode = os.waitstatus_to_exitcode(status)
        if not stopping:
            print(
                f"expplatform serve: {first} exited (code {running[first].returncode}); stopping the rest",
                file=sys.stderr,
            )
            failed = True
            stop_all(signal.SIGTERM, None)
    finally:
        for child in running.values():
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for name, child in running.items():
            try:
                child.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                print(f"expplatform serve: {name} did not stop in {grace_seconds:.0f} s; killed", file=sys.stderr)
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = failed or any(child.returncode not in (0, -signal.SIGTERM, -signal.SIGINT) for child in running.values())
    return 1 if failed else 0
