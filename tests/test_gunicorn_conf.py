"""gunicorn.conf.py: the master comes back after a SIGKILL, though the orphaned worker
still holds the port; the worker timeouts come from the settings."""

from __future__ import annotations

import os
import runpy
import signal
import time
from pathlib import Path

import pytest

from expplatform.config import ConfigError

from .gunicorn_support import ROOT, Server, free_port, start, stop, wait_until_serving


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


def test_the_worker_timeouts_come_from_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPPLATFORM_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("EXPPLATFORM_WORKER_TIMEOUT_SECONDS", "45")
    monkeypatch.setenv("EXPPLATFORM_GRACEFUL_TIMEOUT_SECONDS", "20")
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert (config["timeout"], config["graceful_timeout"], config["reuse_port"]) == (45, 20, True)
    monkeypatch.setenv("EXPPLATFORM_WORKER_TIMEOUT_SECONDS", "5")  # shorter than the busy timeout
    with pytest.raises(ConfigError, match="EXPPLATFORM_SQLITE_BUSY_TIMEOUT_MS"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
