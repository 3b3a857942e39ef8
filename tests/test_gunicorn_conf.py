"""gunicorn.conf.py: the master comes back after a SIGKILL, though the orphaned worker
still holds the port, and the orphans of a gthread master serve until the new master's
workers listen; the worker timeouts come from the settings."""

from __future__ import annotations

import os
import runpy
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from expplatform.config import ConfigError
from expplatform.gunicorn_worker import listening_sockets

from .gunicorn_support import ROOT, Server, free_port, get, serve, start, stop, wait_until_serving


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) holds nothing.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


SYNC = ["--worker-class", "sync", "--threads", "1", "--workers", "1"]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {seconds} s")
        time.sleep(0.1)


def test_a_master_killed_with_sigkill_is_replaced_while_its_orphan_still_serves(tmp_path):
    port = free_port()
    # A sync worker notices that its master is gone only between requests: one busy
    # with a long request (here: stopped) keeps the port meanwhile. The case of the report.
    first = start(tmp_path, SYNC, port, "first.log")
    orphans: list[int] = []
    second: Server | None = None
    try:
        wait_until_serving(first)
        orphans = first.worker_pids()
        assert orphans
        for pid in orphans:
            os.kill(pid, signal.SIGSTOP)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        assert all(alive(pid) for pid in orphans), "the workers outlived their master"

        second = start(tmp_path, SYNC, port, "second.log")
        wait_for(lambda: second.process.poll() is not None or second.worker_pids(), 60, "worker of the new master")
        for pid in orphans:  # the long request ends; the orphan sees it has no master and exits
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: not any(alive(pid) for pid in orphans), 30, "end of the orphaned workers")
        wait_until_serving(second)  # now only the new master's worker can answer
        assert second.process.poll() is None, second.log.read_text()
    finally:
        for pid in orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        stop(first)
        if second is not None:
            stop(second)


def answer(port: int, path: str = "/healthz", headers: dict[str, str] | None = None, timeout: float = 5) -> str:
    """The status of a request, or how it failed: refused, reset (a socket closed with
    connections queued on it) or timed out (queued on a socket nobody accepts from)."""
    try:
        return str(get(port, path, headers, timeout=timeout).status)
    except OSError as exc:
        return type(exc).__name__


def test_the_orphans_of_a_killed_master_serve_until_the_new_master_listens(tmp_path):
    """No refused or reset request while a master killed with SIGKILL is started again:
    gunicorn's own gthread worker left at the first request it saw without its master,
    and the new master imports the app before its workers bind the port."""
    port = free_port()
    settings = ["--workers", "2"]
    first = start(tmp_path, settings, port, "first.log")
    orphans: list[int] = []
    second: Server | None = None
    try:
        wait_until_serving(first)
        wait_for(lambda: len(first.worker_pids()) == 2, 30, "second worker")
        orphans = first.worker_pids()
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        assert Counter(answer(port) for _ in range(20)) == {"200": 20}, "the orphans stopped serving"

        second = start(tmp_path, settings, port, "second.log")
        answers: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in orphans):  # the handover, under a steady client
            assert time.monotonic() < deadline, "the orphans did not leave once the new master listened"
            answers[answer(port)] += 1
        assert answers and set(answers) == {"200"}, answers
        assert second.process.poll() is None and second.worker_pids(), second.log.read_text()
        assert Counter(answer(port) for _ in range(5)) == {"200": 5}
        assert "another master's worker listens" in first.log.read_text()
    finally:
        for pid in orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if second is not None:
            stop(second)


def test_a_worker_replaced_on_reload_takes_no_new_connection_while_it_finishes_the_ones_it_holds(tmp_path):
    """On a reload (SIGHUP) the master starts new workers, then stops the old ones: an
    old worker closes its listening socket before it waits for the connections it holds.
    gunicorn's own kept it open meanwhile, and connections the kernel went on queueing
    on it waited unanswered, then were reset."""
    with serve(tmp_path, ["--workers", "1"]) as server:
        (old,) = server.worker_pids()
        (old_socket,) = listening_sockets({server.port}) or set()
        held = socket.create_connection(("127.0.0.1", server.port))  # says nothing: the worker waits for it
        try:
            server.process.send_signal(signal.SIGHUP)
            wait_for(
                lambda: (listening_sockets({server.port}) or set()) - {old_socket},
                30,
                "socket of the new worker",
            )
            assert alive(old), "the old worker left before the test could look"
            assert Counter(answer(server.port, timeout=2) for _ in range(10)) == {"200": 10}
        finally:
            held.close()


def posix_lock_holders(path: Path) -> set[int]:
    """The processes holding a POSIX (fcntl) lock on ``path``, from /proc/locks."""
    inode = path.stat().st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "->":  # a waiter: "n: -> POSIX ..."
            continue
        if fields[1] == "POSIX" and int(fields[5].rsplit(":", 1)[1]) == inode:
            holders.add(int(fields[4]))
    return holders


def test_each_worker_holds_its_own_sqlite_locks_and_the_master_none(tmp_path):
    """The master forks with no database connection: a worker that inherited the
    master's open SQLite connection also inherited SQLite's record of its locks and
    never took them itself, so once the master was killed nothing marked the -shm file
    as in use and a restarted master truncated it under the orphans (SIGBUS)."""
    with serve(tmp_path, ["--workers", "2"]) as server:
        wait_for(lambda: len(server.worker_pids()) == 2, 30, "second worker")
        for _ in range(10):  # a key look-up: each worker's pool keeps a connection open
            assert answer(server.port, "/api/v1/experiments", {"Authorization": "Bearer nope"}) == "401"
        workers = set(server.worker_pids())
        holders = posix_lock_holders(tmp_path / "served.sqlite3-shm")
        assert server.master_pid not in holders
        assert holders & workers, holders  # those that answered hold theirs


def test_the_worker_timeouts_come_from_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPPLATFORM_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("EXPPLATFORM_WORKER_TIMEOUT_SECONDS", "45")
    monkeypatch.setenv("EXPPLATFORM_GRACEFUL_TIMEOUT_SECONDS", "20")
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert (config["timeout"], config["graceful_timeout"], config["reuse_port"]) == (45, 20, True)
    monkeypatch.setenv("EXPPLATFORM_WORKER_TIMEOUT_SECONDS", "5")  # shorter than the busy timeout
    with pytest.raises(ConfigError, match="EXPPLATFORM_SQLITE_BUSY_TIMEOUT_MS"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
