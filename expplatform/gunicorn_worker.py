"""gunicorn's threaded worker, made to hand over to a restarted master without a gap.

With ``reuse_port`` (``gunicorn.conf.py``) every worker listens on a socket of its own
and the kernel spreads new connections over those sockets. gunicorn's own worker stops
as soon as it notices that its master has gone (a ``kill -9``), and a master started
again loads the app before its workers bind the port: for one to three seconds every
connection was refused (``bench/soak.py``: 1.2 s on a quiet machine, 3.2 s on a busy
one). And a worker that stops keeps its socket open until it has finished the requests
it holds, while the kernel goes on queueing new connections on it: all reset when it
finally closes. So this worker:

- when orphaned, goes on serving until a worker of another master listens on its port
  (a successor), or for at most :data:`ORPHAN_SERVE_SECONDS`, then stops (with
  ``reuse_port`` only: without it, a new master cannot bind the port until the orphans
  have left, so they leave at once, as gunicorn's do);
- when it stops (orphaned, or told to by its master on a reload or a shutdown), first
  accepts what is already queued on its socket and closes the socket, which takes it
  out of the kernel's choice at once, and only then finishes its requests;
- tells the app when it queued each request for its threads, so that the request's
  waits for the database count from then (``request_budget``).

Its master is gone, so an orphan's requests are not timed out by anyone: hence the
bound. Under systemd (``KillMode=mixed``, README) orphans are killed with their master
and none of this applies. A successor is seen in ``/proc/net/tcp`` (Linux, where
``reuse_port`` spreads connections; elsewhere an orphan stops at once, as gunicorn's
does).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from . import request_budget

# Long enough for a supervisor to start a new master (it imports the app: one to three
# seconds), short enough that workers nobody supervises do not serve for long.
ORPHAN_SERVE_SECONDS = 10.0
# How often an orphan looks for a successor (reading /proc/net/tcp costs a millisecond
# or so with thousands of connections in TIME_WAIT).
SUCCESSOR_CHECK_SECONDS = 0.1
_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"


def listening_sockets(ports: set[int], tables: tuple[Path, ...] = _TCP_TABLES) -> set[int] | None:
    """The inodes of the TCP sockets listening on any of ``ports``, or None where the
    kernel does not list them."""
    inodes: set[int] = set()
    found = False
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(int(fields[9]))
    return inodes if found else None


class HandoverWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker that serves on until a successor listens and
    leaves no connection queued on a closed socket (see the module's description)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._orphaned_at: float | None = None
        self._ports: set[int] = set()
        self._predecessors: set[int] = set()  # the sockets listening on them when the master went
        self._next_check = 0.0

    def is_parent_alive(self) -> bool:
        if self.ppid == os.getppid():
            return True
        now = time.monotonic()
        if self._orphaned_at is None:
            self._orphaned_at = now
            self._ports = {
                address[1]
                for address in (listener.getsockname() for listener in self.sockets if listener.sock is not None)
                if isinstance(address, tuple)
            }
            # Without reuse_port a new master cannot bind while we listen: make room.
            listening = listening_sockets(self._ports) if self._ports and self.cfg.reuse_port else None
            if listening is None:
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False
                return False
            self._predecessors = listening
            self.log.info(
                "Parent changed: %s serves until another master's worker listens (at most %g s)",
                self,
                ORPHAN_SERVE_SECONDS,
            )
        if now < self._next_check:
            return True
        self._next_check = now + SUCCESSOR_CHECK_SECONDS
        successors = (listening_sockets(self._ports) or set()) - self._predecessors
        if successors:
            self.log.info("Parent changed, shutting down: %s (another master's worker listens)", self)
        elif now - self._orphaned_at > ORPHAN_SERVE_SECONDS:
            self.log.info("Parent changed, shutting down: %s (no other master within %g s)", self, ORPHAN_SERVE_SECONDS)
        else:
            return True
        self.alive = False
        return False

    def enqueue_req(self, conn: Any) -> None:
        conn.queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        with request_budget.queued_at(conn.queued_at):
            return super().handle(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        """When stopping: accept what is queued, then close the listening sockets, so
        that the kernel queues nothing more on them while the requests held finish."""
        super().set_accept_enabled(enabled)
        if enabled or self.alive:
            return  # pausing under load (too many connections): keep the socket
        for listener in self.sockets:
            if listener.sock is None:
                continue
            while True:  # self.accept swallows "nothing queued": stop when it accepted nothing
                held = self.nr_conns
                self.accept(listener)
                if self.nr_conns == held:
                    break
            listener.close()
