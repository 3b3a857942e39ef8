"""Soak under faults (issue 11): does anything get lost, doubled or stuck?

gunicorn with several workers serves one running experiment on SQLite (temporary
file, WAL) and/or PostgreSQL (a database of its own, created and dropped by the run).
For ``--seconds`` (default 60) concurrent clients, each a thread acting like a client
app, assign new and returning customers and send event batches for the customers
they were given a variant for. Batches carry deliberate re-sends (earlier acknowledged
events mixed into new batches, and whole earlier batches sent again); every failed
request (refused, reset, timed out, 5xx) is retried with the same ids until it is
answered. A ledger keeps what was acknowledged: each customer's variant from a 200
assign answer, and each event of a 200 events answer (stored or duplicate).

Meanwhile, on a timeline scaled to ``--seconds`` (durations as the issue says at 60 s
and more; the two database faults shrink in shorter runs, the lock never below the
timeout + 3 s so that a missing timeout shows):

- a worker is SIGKILLed every few seconds (not while the master restarts, nor just
  before a database fault);
- the master is SIGKILLed once and started again with the same command (what the
  README says to do), or with the repository's gunicorn.conf.py once there is one;
- the database is unavailable once for 10 s. PostgreSQL: ``ALTER DATABASE <ours>
  ALLOW_CONNECTIONS false`` and ``pg_terminate_backend`` of our database's backends
  (new connections refused, live ones cut). SQLite: the database file and its -wal
  made immutable (``chattr +i``): writes fail with a disk I/O error and connections
  opened meanwhile are read-only. The -shm file is left alone: making it immutable
  SIGBUSes every process that maps it, which is a crash, not a read-only database.
  Where ``chattr`` is not supported, a separate process holds ``BEGIN EXCLUSIVE``
  instead, which is really a lock, not a read-only fault: the summary says so;
- a table lock is held once for 15 s: PostgreSQL ``LOCK TABLE events, exposures IN
  ACCESS EXCLUSIVE MODE`` in our database; SQLite a separate connection holding
  ``BEGIN IMMEDIATE`` (SQLite has no table locks: all writers wait).

The load goes on 3 s after the last fault (to see recovery), then each client finishes
its request in hand (retrying until a bound) and stops. Then the ledger is checked
against the database (direct SQL) and against the report JSON
(``GET /api/v1/experiments/<key>/report``).

Printed: requests, errors by kind, events lost (acknowledged, not stored) and
duplicated (stored more than once), exposures lost and duplicated (a customer with
more than one row in the experiment), the report's exposed, converted and rated
customers per variant against the ledger, the longest request and the longest time
without any answer, per fault the time from its end until the service answered again
and nothing failed any more, and what gunicorn's log tells (a master that shut itself
down, workers failing to boot, bind failures, unhandled errors). ``--json`` prints the
same as JSON on stdout; ``--log-dir`` keeps each request's timing, id and the pid of
the worker that answered it, the kills (when sent, when the process was gone), the
gunicorn log and the summary.

Targets (exit status 1 when one is missed, each missed one named; 2 when the soak
itself could not run): 0 events or exposures lost, 0 duplicated, 0 HTML or 500
answers, the report equal to the ledger, every request answered in the end, no
request waiting longer than ``--timeout`` + 1 s (``--timeout``: the service's
configured bound on a request, default 5 s), and recovery within 2 s of each fault's
end.

Recovery of a fault, from its end E (for the master restart: the new master's launch)
up to when the next fault began to be applied (worker kills apart; for the last fault,
up to the clients' last retry): the later of the first successful answer after E and
the end of the last failed request (an error, or slower than the bound) started after
E and over before the next fault began. Resets of connections open while a killed
process still existed are the kill's, not a failure after it: those in flight when it
was killed, and those opened in the milliseconds until its last thread had exited
(every worker listens on a socket of its own, gunicorn's reuse_port, and the kernel
queues new connections on a dying worker's socket until it is closed). Each fault's
figure names the request that set it. Worker kills inside another fault
(or within 3 s of its end, or of the restarted master serving) are counted but not
judged alone. The restarted master is supervised until the end: started again a
second after each time it exits (gunicorn gives up after 5 s when the port is still
held). A master that shuts itself down is not restarted (nothing in the repository
would): the service stays down until the planned restart.

The load generator, the service and PostgreSQL share one (2-core, shared) machine:
the summary gives its load average, and stalls and recovery times grow with it.

    .venv/bin/python bench/soak.py                               # both databases, 60 s each
    .venv/bin/python bench/soak.py --backend sqlite --seconds 20 --json
    .venv/bin/python bench/soak.py --backend postgresql --gunicorn-arg=--preload --log-dir /tmp/soak
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (beside this script)
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from expplatform import journeys, migrations  # noqa: E402
from expplatform.auth import create_api_key  # noqa: E402
from expplatform.models import Experiment, Variant, utcnow  # noqa: E402
from expplatform.versioning import bump_version  # noqa: E402

EXPERIMENT = "soak-checkout"
STAGES = ("awareness", "consideration", "purchase")
VARIANTS = ("control", "treatment")
SETTLE_SECONDS = 3.0  # load after the last fault, to see recovery
RECOVERY_TARGET = 2.0
KILL_QUIET_AFTER = 3.0  # a worker kill this close after another fault is not judged alone
# Answers that mean "retry the same request": the service said nothing was stored, or
# we could not tell.
RETRY_STATUSES = frozenset({500, 502, 503, 504})


# -- what happened --------------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """One HTTP request: when it started and ended (seconds since the load began),
    and ``kind``: "ok" or the kind of error."""

    endpoint: str
    start: float
    end: float
    kind: str
    detail: str = ""  # the error code of a JSON error, or the exception's class
    request_id: str = ""  # sent as X-Request-ID: the service's access log names the worker that answered

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


@dataclass
class Fault:
    kind: str
    at: float  # planned start
    duration: float = 0.0
    begun: float | None = None  # when we began to apply it, seconds since the load began
    start: float | None = None  # when it took effect
    end: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Kill:
    """A process SIGKILLed by the soak: when (seconds since the load began), and when
    it was seen gone (exited: its sockets closed). A worker has a listening socket of its
    own (gunicorn's reuse_port), and until it is gone the kernel still hands it new
    connections, which are reset when it goes: those are the kill's."""

    pid: int
    at: float
    gone: float


@dataclass
class Ledger:
    """What one client was told. Event values: (customer, stage, type, value)."""

    assigned: dict[str, str] = field(default_factory=dict)
    events: dict[str, tuple[str, str, str, int | None]] = field(default_factory=dict)
    unresolved_assign: set[str] = field(default_factory=set)
    unresolved_events: set[str] = field(default_factory=set)
    rejected_events: set[str] = field(default_factory=set)
    accepted: int = 0
    duplicates: int = 0
    resent: int = 0
    resent_batches: int = 0
    variant_changed: int = 0
    not_enrolled: Counter[str] = field(default_factory=Counter)
    malformed: list[str] = field(default_factory=list)  # 200 answers the client could not use


# -- the clients ----------------------------------------------------------------------------


class Load:
    """Shared clock, server address and the attempts of every client."""

    def __init__(self, port: int, client_key: str, timeout: float, client_timeout: float, tag: str) -> None:
        self.port = port
        self.client_key = client_key
        self.timeout = timeout
        self.client_timeout = client_timeout
        self.tag = tag
        self.t0 = time.monotonic()
        self.load_end = float("inf")  # set once the timeline is known
        self.hard_end = float("inf")
        self.lock = threading.Lock()
        self.attempts: list[Attempt] = []
        self.request_ids = itertools.count()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def request(self, endpoint: str, method: str, path: str, body: bytes | None, key: str) -> tuple[str, Any]:
        """One attempt on a fresh connection: ("ok", parsed JSON) or (error kind, detail)."""
        request_id = f"{self.tag}-r{next(self.request_ids)}"
        headers = {"Authorization": f"Bearer {key}", "Connection": "close", "X-Request-ID": request_id}
        if body is not None:
            headers["Content-Type"] = "application/json"
        start = self.now()
        kind, payload, detail = "ok", None, ""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.client_timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            content_type = response.getheader("Content-Type", "")
            if "html" in content_type.lower() or raw.lstrip()[:1] == b"<":
                kind = f"html_{response.status}"
            elif response.status != 200:
                kind = f"http_{response.status}"
                payload = raw[:300]
                detail = error_code(raw)
            else:
                try:
                    payload = json.loads(raw)
                except ValueError:
                    kind = "bad_json"
        except ConnectionRefusedError:
            kind = "refused"
        except TimeoutError:
            kind = "client_timeout"
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            kind, detail = "reset", type(exc).__name__  # reset, broken pipe, closed without an answer
        finally:
            connection.close()
        with self.lock:
            self.attempts.append(Attempt(endpoint, start, self.now(), kind, detail, request_id))
        return kind, payload


def error_code(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:60].decode(errors="replace")
    return str(body.get("error")) if isinstance(body, dict) else str(body)[:60]


class Client(threading.Thread):
    """A client app: assigns customers, then reports what they did, in batches."""

    def __init__(self, load: Load, index: int, seed: int) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.load = load
        self.index = index
        self.rng = random.Random(seed * 1000 + index)
        self.ledger = Ledger()
        self.customers: list[str] = []
        self.sent: list[dict[str, Any]] = []  # acknowledged events, for re-sends
        self.bodies: list[bytes] = []  # acknowledged batches, for whole re-sends
        self.next_customer = 0
        self.next_event = 0

    def run(self) -> None:
        while self.load.now() < self.load.load_end:
            roll = self.rng.random()
            try:
                if len(self.customers) < 5 or roll < 0.25:
                    self.assign_new()
                elif roll < 0.40:
                    self.assign_again()
                else:
                    self.send_events()
            except (KeyError, IndexError, TypeError, ValueError) as exc:  # a 200 of an unexpected shape
                self.ledger.malformed.append(repr(exc)[:200])
            time.sleep(self.rng.uniform(0.01, 0.04))

    def call(self, endpoint: str, path: str, body: bytes) -> Any | None:
        """POST until answered with a 200 (retrying the same body), or None when the
        hard end of the run comes first."""
        delay = 0.05
        while True:
            kind, payload = self.load.request(endpoint, "POST", path, body, self.load.client_key)
            if kind == "ok":
                return payload
            retry = kind in {"refused", "reset", "client_timeout", "bad_json"} or (
                kind.split("_")[-1].isdigit() and int(kind.split("_")[-1]) in RETRY_STATUSES
            )
            if not retry or self.load.now() + delay > self.load.hard_end:
                return None
            time.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.5)

    def assign(self, customer: str) -> None:
        body = json.dumps(
            {
                "customer_id": customer,
                "experiments": [EXPERIMENT],
                "attributes": {"platform": self.rng.choice(["web", "ios", "android"])},
            }
        ).encode()
        answer = self.call("assign", "/api/v1/assign", body)
        if answer is None:
            if customer not in self.ledger.assigned:
                self.ledger.unresolved_assign.add(customer)
            return
        self.ledger.unresolved_assign.discard(customer)
        entry = answer["assignments"][0]
        if not entry.get("enrolled"):
            self.ledger.not_enrolled[str(entry.get("reason"))] += 1
            return
        variant = entry["variant"]
        previous = self.ledger.assigned.setdefault(customer, variant)
        if previous != variant:
            self.ledger.variant_changed += 1
        elif customer not in self.customers:
            self.customers.append(customer)

    def assign_new(self) -> None:
        customer = f"{self.load.tag}-{self.index}-{self.next_customer}"
        self.next_customer += 1
        self.assign(customer)

    def assign_again(self) -> None:
        self.assign(self.rng.choice(self.customers))

    def send_events(self) -> None:
        if self.bodies and self.rng.random() < 0.05:  # a whole earlier batch again
            self.ledger.resent_batches += 1
            self.post_batch(self.rng.choice(self.bodies), None)
            return
        batch: list[dict[str, Any]] = []
        for _ in range(self.rng.randint(1, 20)):
            event: dict[str, Any] = {
                "event_id": f"{self.load.tag}-{self.index}-e{self.next_event}",
                "customer_id": self.rng.choice(self.customers),
                "stage": self.rng.choice(STAGES),
                "type": "conversion",
            }
            self.next_event += 1
            if self.rng.random() < 0.4:
                event["type"], event["value"] = "satisfaction", self.rng.randint(1, 5)
            batch.append(event)
        if self.sent and self.rng.random() < 0.15:  # earlier acknowledged events again
            for event in self.rng.sample(self.sent, min(len(self.sent), self.rng.randint(1, 3))):
                batch.append(event)
                self.ledger.resent += 1
        self.rng.shuffle(batch)
        self.post_batch(json.dumps({"events": batch}).encode(), batch)

    def post_batch(self, body: bytes, batch: list[dict[str, Any]] | None) -> None:
        events = batch if batch is not None else json.loads(body)["events"]
        answer = self.call("events", "/api/v1/events", body)
        ids = [e["event_id"] for e in events]
        if answer is None:
            self.ledger.unresolved_events.update(i for i in ids if i not in self.ledger.events)
            return
        rejected = {events[r["index"]]["event_id"] for r in answer.get("rejected", [])}
        self.ledger.rejected_events |= rejected
        self.ledger.accepted += answer["accepted"]
        self.ledger.duplicates += answer["duplicates"]
        for event in events:
            if event["event_id"] in rejected:
                continue
            self.ledger.unresolved_events.discard(event["event_id"])
            if event["event_id"] not in self.ledger.events:
                self.ledger.events[event["event_id"]] = (
                    event["customer_id"],
                    event["stage"],
                    event["type"],
                    event.get("value"),
                )
                self.sent.append(event)
        if batch is not None:
            self.bodies.append(body)
            del self.bodies[:-20]


# -- the faults -----------------------------------------------------------------------------


def plan(seconds: float, timeout: float) -> list[Fault]:
    """The timeline: the database made unavailable, then the table lock, then the
    master restart, each at least 3 s after the previous one ended (so that each
    recovery is its own); worker kills every few seconds throughout, except around the
    master restart."""
    scale = min(1.0, seconds / 60)
    unavailable = Fault("db_unavailable", at=max(0.08 * seconds, 3.5), duration=10 * scale)
    lock_duration = max(15 * scale, timeout + 3)
    lock = Fault("table_lock", at=max(0.3 * seconds, unavailable.at + unavailable.duration + 3), duration=lock_duration)
    restart = Fault("master_restart", at=max(0.75 * seconds, lock.at + lock.duration + 3))
    faults = [unavailable, lock, restart]
    interval = max(3.0, seconds / 12)
    at = 1.0
    while at < seconds:
        # Not just before a database fault (its errors would be the kill's), nor while
        # the master is replaced.
        if not any(f.at - 1.5 <= at < f.at for f in faults) and not restart.at - 1 <= at <= restart.at + 3:
            faults.append(Fault("worker_kill", at=at))
        at += interval
    return sorted(faults, key=lambda f: f.at)


def wait_gone(pid: int, load: Load, limit: float = 5.0) -> float:
    """When the SIGKILLed process ``pid`` (not our child) had exited with all its
    threads: only then are its files, its listening socket among them, closed. (Its
    main thread turns zombie first, while the others may still be exiting.)"""
    deadline = load.now() + limit
    while load.now() < deadline:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            break  # reaped
        if all(_task_state(task) in {"Z", "X", None} for task in tasks):
            break
        time.sleep(0.001)
    return load.now()


def _task_state(task: Path) -> str | None:
    """A thread's state letter from /proc, None when it has just gone."""
    try:
        return task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Faults(threading.Thread):
    """Applies the planned faults in order, each undone in a ``finally``."""

    def __init__(self, load: Load, server: benchlib.GunicornServer, backend: str, url: str, faults: list[Fault]):
        super().__init__(name="soak-faults", daemon=True)
        self.load = load
        self.server = server
        self.backend = backend
        self.url = url
        self.faults = faults
        self.kills: list[Kill] = []  # every process kill (workers and the master)
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.abort = threading.Event()
        self.admin_url = benchlib.PG_ADMIN_URL

    def wait_until(self, moment: float) -> None:
        while not self.abort.is_set() and self.load.now() < moment:
            time.sleep(min(0.05, max(0.0, moment - self.load.now())))

    def run(self) -> None:
        """Each fault in a thread of its own at its time (kills go on during the others)."""
        threads = []
        for fault in self.faults:
            self.wait_until(fault.at)
            if self.abort.is_set():
                break
            thread = threading.Thread(target=self.apply, args=(fault,), name=f"soak-{fault.kind}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=max(0.0, self.load.hard_end - self.load.now()) + 30)

    def apply(self, fault: Fault) -> None:
        fault.begun = self.load.now()
        try:
            getattr(self, fault.kind)(fault)
        except Exception as exc:  # a fault that could not be applied is reported, not fatal
            self.errors.append(f"{fault.kind} at {fault.at:.1f}s: {exc!r}")
            fault.note = f"not applied: {exc!r}"

    def worker_kill(self, fault: Fault) -> None:
        workers = self.server.workers()
        if not workers:
            fault.note = "no worker to kill (master down)"
            return
        victim = random.Random(int(fault.at * 1000)).choice(workers)
        os.kill(victim, signal.SIGKILL)
        fault.start = fault.end = self.load.now()
        gone = wait_gone(victim, self.load)
        self.kills.append(Kill(victim, fault.start, gone))
        fault.detail["pid"] = victim
        fault.detail["gone_after_seconds"] = round(gone - fault.start, 3)
        # How long the master takes to have as many live workers again.
        wanted = len(workers)
        deadline = self.load.now() + 10
        while self.load.now() < deadline and not self.abort.is_set():
            current = self.server.workers()
            if victim not in current and len(current) >= wanted:
                fault.detail["respawn_seconds"] = round(self.load.now() - fault.start, 2)
                return
            time.sleep(0.05)
        fault.detail["respawn_seconds"] = None

    def master_restart(self, fault: Fault) -> None:
        old = self.server.kill_master()  # and reaped: gone
        fault.start = self.load.now()
        if old is not None:
            self.kills.append(Kill(old, fault.start, fault.start))
        self.server.start()
        fault.end = self.load.now()
        fault.detail.update(old_master=old, launches=1, serving_after_seconds=None)
        # Then like a supervisor, until the run is over: start it again each time it
        # exits (e.g. when orphaned workers still hold the port). Serving means the new
        # master listens and the service answers (orphans answering do not count).
        while not self.abort.is_set() and self.load.now() < self.load.hard_end + 60:
            if self.server.master_exited():
                time.sleep(1)
                self.server.start()
                fault.detail["launches"] += 1
            elif (
                fault.detail["serving_after_seconds"] is None
                and self.server.bound()
                and benchlib.answers_health(self.server.port, timeout=1)
            ):
                fault.detail["serving_after_seconds"] = round(self.load.now() - fault.start, 2)
            time.sleep(0.1)

    def db_unavailable(self, fault: Fault) -> None:
        if self.backend == "postgresql":
            self._postgres_unavailable(fault)
        else:
            self._sqlite_read_only(fault)

    def _postgres_unavailable(self, fault: Fault) -> None:
        name = make_url(self.url).database
        admin = create_engine(benchlib.postgres_driver_url(self.admin_url), isolation_level="AUTOCOMMIT")
        terminate = text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()"
        )
        try:
            with admin.connect() as connection:
                connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                try:
                    fault.start = self.load.now()
                    terminated = connection.scalar(terminate, {"name": name})
                    time.sleep(0.2)  # and any connection that was being opened
                    terminated += connection.scalar(terminate, {"name": name})
                    fault.detail["backends_terminated"] = terminated
                    self.wait_until(fault.start + fault.duration)
                finally:
                    connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
                    fault.end = self.load.now()
        finally:
            admin.dispose()
        fault.note = "connections refused and existing ones terminated"

    def _sqlite_read_only(self, fault: Fault) -> None:
        path = Path(make_url(self.url).database or "")
        files = [str(p) for p in (path, Path(f"{path}-wal")) if p.exists()]
        if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode == 0:
            try:
                fault.start = self.load.now()
                fault.note = "chattr +i on the database file and its -wal (not -shm: that SIGBUSes its users)"
                self.wait_until(fault.start + fault.duration)
            finally:
                subprocess.run(["chattr", "-i", *files], capture_output=True, check=False)
                fault.end = self.load.now()
            return
        fault.note = (
            "chattr not supported here: a separate process held BEGIN EXCLUSIVE instead "
            "(a lock, like the table-lock fault, not a read-only database)"
        )
        self.notes.append(f"SQLite read-only fault: {fault.note}")
        self._sqlite_hold(fault, "EXCLUSIVE", separate_process=True)

    def table_lock(self, fault: Fault) -> None:
        if self.backend == "postgresql":
            engine = create_engine(self.url)
            try:
                with engine.connect() as connection:
                    connection.execute(text("SET lock_timeout = '5s'"))
                    connection.execute(text("LOCK TABLE events, exposures IN ACCESS EXCLUSIVE MODE"))
                    fault.start = self.load.now()
                    try:
                        self.wait_until(fault.start + fault.duration)
                    finally:
                        connection.rollback()
                        fault.end = self.load.now()
            finally:
                engine.dispose()
            fault.note = "LOCK TABLE events, exposures IN ACCESS EXCLUSIVE MODE"
        else:
            self._sqlite_hold(fault, "IMMEDIATE", separate_process=False)
            fault.note = "a separate connection held BEGIN IMMEDIATE (SQLite locks the whole database)"

    def _sqlite_hold(self, fault: Fault, mode: str, *, separate_process: bool) -> None:
        path = make_url(self.url).database or ""
        if separate_process:
            script = (
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)\n"
                f"c.execute('BEGIN {mode}')\n"
                "print('locked', flush=True)\n"
                "time.sleep(float(sys.argv[2]))\n"
                "c.execute('ROLLBACK')\n"
            )
            holder = subprocess.Popen(
                [sys.executable, "-c", script, path, str(fault.duration)], stdout=subprocess.PIPE, text=True
            )
            try:
                if holder.stdout is None or holder.stdout.readline().strip() != "locked":
                    raise RuntimeError("the lock holder could not take the lock")
                fault.start = self.load.now()
                holder.wait(timeout=fault.duration + 10)
            finally:
                if holder.poll() is None:
                    holder.kill()
                    holder.wait(timeout=10)
                fault.end = self.load.now()
            return
        connection = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            connection.execute(f"BEGIN {mode}")
            fault.start = self.load.now()
            try:
                self.wait_until(fault.start + fault.duration)
            finally:
                connection.execute("ROLLBACK")
                fault.end = self.load.now()
        finally:
            connection.close()


# -- the run --------------------------------------------------------------------------------


def gunicorn_command(port: int, workers: int, extra: list[str]) -> tuple[list[str], str | None]:
    """The README's serving command (``make run``), with our port and worker count, or
    the repository's gunicorn.conf.py when there is one; then ``extra`` arguments. Log
    level info: the soak reads the "Listening at" line of each master."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    config = ROOT / "gunicorn.conf.py"
    ours = ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--log-level", "info", *extra]
    if config.exists():
        return [gunicorn, "--config", str(config), *ours, "wsgi:app"], str(config.relative_to(ROOT))
    return [gunicorn, "--worker-class", "gthread", "--threads", "4", *ours, "wsgi:app"], None


def prepare(url: str) -> tuple[str, str]:
    """Migrate, start one experiment, make a client key and an admin key."""
    engine = create_engine(url)
    migrations.upgrade(engine)
    with Session(engine) as session, session.begin():
        experiment = Experiment(
            key=EXPERIMENT,
            name="Soak",
            stages=list(STAGES),
            target_stage="purchase",
            salt=EXPERIMENT,
            status="running",
            started_at=utcnow(),
            **journeys.implicit_fields(session, STAGES),
        )
        experiment.variants = [
            Variant(key=name, weight=0.5, position=i, is_control=i == 0) for i, name in enumerate(VARIANTS)
        ]
        session.add(experiment)
        bump_version(session)
        _record, client_key = create_api_key(session, "client", "soak", created_by="soak")
        _record, admin_key = create_api_key(session, "admin", "soak-admin", created_by="soak")
    engine.dispose()
    return client_key, admin_key


def served_code(env: dict[str, str]) -> str:
    """Where the service's workers import ``expplatform`` from, with this environment."""
    result = subprocess.run(
        [sys.executable, "-c", "import expplatform; print(expplatform.__file__)"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    return str(Path(result.stdout.strip()).parent) if result.returncode == 0 else result.stderr.strip()[-200:]


def run_soak(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    name = args.pg_database or f"bench_soak_{os.getpid()}"
    with benchlib.fresh_database(backend, name, args.pg_url) as url:
        instance = Path(tempfile.mkdtemp(prefix="soak_instance_"))
        try:
            return _run_on(backend, url, instance, args)
        finally:
            shutil.rmtree(instance, ignore_errors=True)


def _run_on(backend: str, url: str, instance: Path, args: argparse.Namespace) -> dict[str, Any]:
    client_key, admin_key = prepare(url)
    port = benchlib.free_port()
    command, config = gunicorn_command(port, args.workers, args.gunicorn_arg)
    env = {
        "EXPPLATFORM_DATABASE_URL": url,
        "EXPPLATFORM_INSTANCE_PATH": str(instance),
        "EXPPLATFORM_SECRET_KEY": "soak-secret",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_path = instance / "gunicorn.log"
    server = benchlib.GunicornServer(command, ROOT, env, port, log_path)
    faults = plan(args.seconds, args.timeout)
    longest_fault = max(f.duration for f in faults)
    client_timeout = max(20.0, longest_fault + 15)
    load = Load(port, client_key, args.timeout, client_timeout, tag=f"s{args.seed}")
    clients: list[Client] = []
    injector: Faults | None = None
    load_average = os.getloadavg()[:1]
    server.start()
    try:
        if not server.wait_ready(90):
            raise RuntimeError(f"gunicorn did not start; its log: {log_path.read_text()[-2000:]}")
        load.t0 = time.monotonic()
        load.load_end = max(args.seconds, *(f.at + f.duration for f in faults)) + SETTLE_SECONDS
        load.hard_end = load.load_end + client_timeout + 10
        injector = Faults(load, server, backend, url, faults)
        injector.admin_url = args.pg_url or benchlib.PG_ADMIN_URL
        clients = [Client(load, i, args.seed) for i in range(args.clients)]
        for thread in [*clients, injector]:
            thread.start()
        for client in clients:
            client.join(timeout=max(0.0, load.hard_end + client_timeout + 5 - load.now()))
        load_seconds = load.now()
        report, report_error = fetch_report(server, admin_key)  # the restarted master still supervised
        injector.abort.set()
        injector.join(timeout=60)
    finally:
        if injector is not None:
            injector.abort.set()
            injector.join(timeout=60)
        server.stop()
        if backend == "sqlite":  # in case the read-only fault was cut short
            database = make_url(url).database or ""
            subprocess.run(["chattr", "-i", database, f"{database}-wal"], capture_output=True, check=False)
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        (args.log_dir / f"{backend}-gunicorn.log").write_text(log_text)
        served_by = worker_of_request(log_text)
        rows = [
            f"{a.start:.3f},{a.end:.3f},{a.endpoint},{a.kind},{a.detail},{a.request_id},"
            f"{served_by.get(a.request_id, '')}"
            for a in sorted(load.attempts, key=lambda a: a.start)
        ]
        header = "start,end,endpoint,kind,detail,request_id,worker_pid\n"
        (args.log_dir / f"{backend}-requests.csv").write_text(header + "\n".join(rows) + "\n")
        kills = injector.kills if injector is not None else []
        (args.log_dir / f"{backend}-kills.csv").write_text(
            "pid,at,gone\n" + "".join(f"{k.pid},{k.at:.3f},{k.gone:.3f}\n" for k in kills)
        )
    return summarise(
        backend,
        args,
        url,
        load,
        clients,
        injector,
        report,
        report_error,
        load_seconds,
        [round(x, 1) for x in (*load_average, *os.getloadavg()[:1])],
        log_text,
        config,
        command,
        served_code(env),
    )


def worker_of_request(log_text: str) -> dict[str, int]:
    """Request id -> pid of the worker that answered it, from the access log lines."""
    served: dict[str, int] = {}
    for line in log_text.splitlines():
        if '"expplatform.access"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("request_id"):
            served[entry["request_id"]] = entry["pid"]
    return served


def fetch_report(server: benchlib.GunicornServer, admin_key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The report JSON once the load is over (retried for up to 30 s)."""
    deadline = time.monotonic() + 30
    problem = "no answer"
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        try:
            connection.request(
                "GET", f"/api/v1/experiments/{EXPERIMENT}/report", headers={"Authorization": f"Bearer {admin_key}"}
            )
            response = connection.getresponse()
            raw = response.read()
            if response.status == 200:
                return json.loads(raw), None
            problem = f"HTTP {response.status}: {raw[:200]!r}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problem = repr(exc)
        finally:
            connection.close()
        time.sleep(0.5)
    return None, problem


# -- the verdict ----------------------------------------------------------------------------


def stored_state(url: str) -> dict[str, Any]:
    """Events, exposures and duplicates as the database has them."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            events: dict[str, list[tuple[str, str, str, int | None]]] = defaultdict(list)
            for row in connection.execute(text("SELECT event_id, customer_id, stage, type, value FROM events")):
                events[row[0]].append((row[1], row[2], row[3], row[4]))
            exposures: dict[str, list[str]] = defaultdict(list)
            for customer, variant in connection.execute(
                text(
                    "SELECT e.customer_id, v.key FROM exposures e JOIN variants v ON v.id = e.variant_id "
                    "JOIN experiments x ON x.id = e.experiment_id WHERE x.key = :key"
                ),
                {"key": EXPERIMENT},
            ):
                exposures[customer].append(variant)
            duplicated_exposures = connection.scalar(
                text(
                    "SELECT count(*) FROM (SELECT customer_id, experiment_id FROM exposures "
                    "GROUP BY customer_id, experiment_id HAVING count(*) > 1) AS d"
                )
            )
    finally:
        engine.dispose()
    return {"events": events, "exposures": exposures, "duplicated_exposures": duplicated_exposures}


def report_counts(report: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """From the report JSON: exposed per variant, and per stage and variant the
    customers converted (conversion: n x observed) and rated (satisfaction arms' n)."""
    counts: dict[str, dict[str, dict[str, int]]] = {"exposed": {"all": dict(report["exposed"])}}
    counts["converted"], counts["rated"] = {}, {}
    for stage in report["result"]["stages"]:
        for metric in stage["metrics"]:
            if metric["metric"] == "conversion":
                counts["converted"][stage["stage"]] = {
                    a["variant"]: round((a["observed"] or 0) * a["n"]) for a in metric["arms"]
                }
            elif metric["metric"] == "mean_rating":
                counts["rated"][stage["stage"]] = {a["variant"]: a["n"] for a in metric["arms"]}
    return counts


def ledger_counts(assigned: dict[str, str], events: dict[str, tuple[str, str, str, int | None]]) -> dict[str, Any]:
    exposed = Counter(assigned.values())
    converted: dict[str, set[str]] = defaultdict(set)
    rated: dict[str, set[str]] = defaultdict(set)
    for customer, stage, kind, _value in events.values():
        (converted if kind == "conversion" else rated)[stage].add(customer)
    return {
        "exposed": {"all": {v: exposed.get(v, 0) for v in VARIANTS}},
        "converted": {s: {v: sum(assigned[c] == v for c in converted[s]) for v in VARIANTS} for s in STAGES},
        "rated": {s: {v: sum(assigned[c] == v for c in rated[s]) for v in VARIANTS} for s in STAGES},
    }


@dataclass(frozen=True)
class Recovery:
    """A fault's recovery figure and what set it: the first successful answer after
    the fault's end, or the last failure (an error or slower than the bound) after it."""

    seconds: float | None  # None: never answered
    still_failing: bool  # failing in the last second before the next fault began: a lower bound
    decided_by: str

    def row(self) -> dict[str, Any]:
        return {
            "recovery_seconds": self.seconds,
            "still_failing_at_next_fault": self.still_failing,
            "recovery_decided_by": self.decided_by,
        }


def describe(a: Attempt) -> str:
    return f"{a.endpoint} {a.kind}{f' {a.detail}' if a.detail else ''} {a.start:.3f}-{a.end:.3f} s"


def recovery(fault: Fault, attempts: list[Attempt], window_end: float, kills: list[Kill], bound: float) -> Recovery:
    """Seconds from the fault's end until the service answered again and nothing
    failed any more (see the module's description), None if it never answered; whether
    requests were still failing in the last second before the next fault began (then
    the figure is only a lower bound); and the request that set the figure."""
    assert fault.end is not None
    end = fault.end

    def killed_in_flight(a: Attempt) -> bool:
        # Open while the killed process existed (reset slightly before we noted the kill: 50 ms).
        return a.kind == "reset" and any(a.start < k.gone and k.at <= a.end + 0.05 for k in kills)

    # Failures over before the next fault began: one still running then may be its.
    failed = [
        a
        for a in attempts
        if end <= a.start and a.end < window_end and (not a.ok or a.end - a.start > bound) and not killed_in_flight(a)
    ]
    answered = [a for a in attempts if a.ok and a.end >= end]
    last_failure = max(failed, key=lambda a: a.end, default=None)
    still_failing = last_failure is not None and window_end != float("inf") and last_failure.end > window_end - 1
    if not answered:
        return Recovery(None, still_failing, "no successful answer after the fault's end")
    first_answer = min(answered, key=lambda a: a.end)
    if last_failure is not None and last_failure.end > first_answer.end:
        return Recovery(round(last_failure.end - end, 2), still_failing, f"last failure: {describe(last_failure)}")
    return Recovery(round(first_answer.end - end, 2), still_failing, f"first answer: {describe(first_answer)}")


def settled(fault: Fault) -> float:
    """When a fault's own effect was over: its end, or for the master restart the moment
    the new master first answered."""
    assert fault.end is not None
    serving = fault.detail.get("serving_after_seconds")
    if fault.start is not None and serving is not None:
        return max(fault.end, fault.start + serving)
    return fault.end


def summarise(
    backend: str,
    args: argparse.Namespace,
    url: str,
    load: Load,
    clients: list[Client],
    injector: Faults | None,
    report: dict[str, Any] | None,
    report_error: str | None,
    load_seconds: float,
    load_average: list[float],
    log_text: str,
    config: str | None,
    command: list[str],
    code: str,
) -> dict[str, Any]:
    assigned: dict[str, str] = {}
    events: dict[str, tuple[str, str, str, int | None]] = {}
    unresolved_assign: set[str] = set()
    unresolved_events: set[str] = set()
    rejected: set[str] = set()
    not_enrolled: Counter[str] = Counter()
    malformed: list[str] = []
    accepted = duplicates_reported = resent = resent_batches = variant_changed = 0
    for client in clients:
        ledger = client.ledger
        assigned.update(ledger.assigned)
        events.update(ledger.events)
        unresolved_assign |= ledger.unresolved_assign
        unresolved_events |= ledger.unresolved_events
        rejected |= ledger.rejected_events
        not_enrolled += ledger.not_enrolled
        malformed += ledger.malformed
        accepted += ledger.accepted
        duplicates_reported += ledger.duplicates
        resent += ledger.resent
        resent_batches += ledger.resent_batches
        variant_changed += ledger.variant_changed
    still_running = [c.name for c in clients if c.is_alive()]

    stored = stored_state(url)
    stored_events: dict[str, list[tuple[str, str, str, int | None]]] = stored["events"]
    exposures: dict[str, list[str]] = stored["exposures"]
    lost = sorted(i for i in events if i not in stored_events)
    duplicated = sorted(i for i, rows in stored_events.items() if len(rows) > 1)
    altered = sorted(i for i, rows in stored_events.items() if i in events and rows[0] != events[i])
    unknown = sorted(i for i in stored_events if i not in events and i not in unresolved_events)
    exposures_lost = sorted(c for c in assigned if c not in exposures)
    exposure_variant_differs = sorted(c for c, v in assigned.items() if c in exposures and exposures[c][0] != v)

    attempts = sorted(load.attempts, key=lambda a: a.start)
    kinds = Counter(a.kind for a in attempts if not a.ok)
    by_endpoint = Counter(a.endpoint for a in attempts)
    bound = args.timeout + 1
    longest = max(attempts, key=lambda a: a.end - a.start, default=None)
    answered_at = sorted(a.end for a in attempts if a.ok)
    gaps = [b - a for a, b in itertools.pairwise(answered_at)]
    gap_index = max(range(len(gaps)), key=gaps.__getitem__, default=None)

    faults = injector.faults if injector is not None else []
    kills = injector.kills if injector is not None else []
    major = [f for f in faults if f.kind != "worker_kill" and f.start is not None]
    fault_rows = []
    for fault in faults:
        row: dict[str, Any] = {
            "kind": fault.kind,
            "start": None if fault.start is None else round(fault.start, 2),
            "end": None if fault.end is None else round(fault.end, 2),
            "duration": round(fault.duration, 2),
            "note": fault.note,
            **fault.detail,
        }
        if fault.end is None:
            row["recovery_seconds"] = None
            row["judged"] = False
            fault_rows.append(row)
            continue
        # The window ends when the next fault (a major one, for a major fault) began to be applied.
        later = [
            f.begun
            for f in (faults if fault.kind == "worker_kill" else major)
            if f.begun is not None and f.begun > fault.end + 1e-6
        ]
        window_end = min(later, default=float("inf"))  # the last one: up to the clients' last retry
        inside = [
            f.kind
            for f in major
            if f is not fault
            and f.start is not None
            and f.end is not None
            and f.start <= fault.end <= settled(f) + KILL_QUIET_AFTER
        ]
        row["judged"] = not (fault.kind == "worker_kill" and inside)
        if inside and fault.kind == "worker_kill":
            row["during"] = inside[0]
        row.update(recovery(fault, attempts, window_end, kills, bound).row())
        fault_rows.append(row)

    comparison: dict[str, Any] = {"error": report_error}
    report_matches = False
    if report is not None:
        from_report = report_counts(report)
        from_ledger = ledger_counts(assigned, events)
        comparison.update(report=from_report, ledger=from_ledger)
        report_matches = from_report == from_ledger

    lines = [line for line in log_text.splitlines() if line.strip()]
    notable = [
        line
        for line in lines
        if any(word in line for word in ("Traceback", "Error", "error", "in use", "Retrying", "WORKER TIMEOUT"))
    ]

    targets: dict[str, dict[str, Any]] = {}

    def target(name: str, ok: bool, detail: str) -> None:
        targets[name] = {"ok": bool(ok), "detail": detail}

    html_or_500 = sum(
        n for k, n in kinds.items() if k.startswith("html") or (k.startswith("http_5") and k != "http_503")
    )
    target("events_lost", not lost, f"{len(lost)} acknowledged events not stored {lost[:5]}")
    target("events_duplicated", not duplicated, f"{len(duplicated)} event ids stored more than once {duplicated[:5]}")
    target("events_altered", not altered, f"{len(altered)} stored events differ from what was acknowledged")
    target("exposures_lost", not exposures_lost, f"{len(exposures_lost)} assigned customers without an exposure row")
    target(
        "exposures_duplicated",
        not stored["duplicated_exposures"] and not exposure_variant_differs and not variant_changed,
        f"{stored['duplicated_exposures']} customers with several exposure rows, "
        f"{len(exposure_variant_differs)} stored in another variant than answered, "
        f"{variant_changed} answered another variant later",
    )
    target("no_html_or_500", html_or_500 == 0, f"{html_or_500} HTML or 5xx (other than 503) answers")
    target("report_matches_ledger", report_matches, report_error or "report counts against the ledger")
    target(
        "all_answered",
        not (unresolved_assign or unresolved_events or still_running or rejected or malformed or not_enrolled),
        f"{len(unresolved_assign)} assigns and {len(unresolved_events)} events never answered, {len(rejected)} events "
        f"rejected, {sum(not_enrolled.values())} not enrolled, {len(malformed)} unusable answers {malformed[:2]}, "
        f"clients still running: {still_running}",
    )
    longest_seconds = 0.0 if longest is None else longest.end - longest.start
    target(
        "longest_request",
        longest_seconds <= bound,
        f"{longest_seconds:.2f} s (limit {bound:.1f} s = timeout {args.timeout:g} s + 1 s)",
    )
    slow_faults = [
        f"{r['kind']}@{r['start']}s: {r['recovery_seconds']}"
        for r in fault_rows
        if r["judged"] and (r["recovery_seconds"] is None or r["recovery_seconds"] > RECOVERY_TARGET)
    ]
    target("recovery", not slow_faults, "slower than 2 s (or never): " + (", ".join(slow_faults) or "none"))
    target(
        "faults_applied",
        injector is not None and not injector.errors,
        "; ".join(injector.errors) if injector is not None else "no fault injector",
    )

    return {
        "backend": backend,
        "seconds": args.seconds,
        "load_seconds": round(load_seconds, 1),
        "workers": args.workers,
        "clients": args.clients,
        "timeout": args.timeout,
        "gunicorn": {
            "config": config,
            "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command)),
        },
        "served_code": code,
        "load_average": load_average,
        "requests": {"total": len(attempts), **dict(by_endpoint), "ok": sum(a.ok for a in attempts)},
        "errors": dict(sorted(kinds.items())),
        "error_details": dict(
            Counter(f"{a.endpoint} {a.kind} {a.detail}".rstrip() for a in attempts if not a.ok).most_common(12)
        ),
        "events": {
            "acknowledged": len(events),
            "stored": sum(len(r) for r in stored_events.values()),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "altered": len(altered),
            "stored_unacknowledged": len(unknown),
            "unresolved": len(unresolved_events),
            "rejected": len(rejected),
            "accepted_reported": accepted,
            "duplicates_reported": duplicates_reported,
            "resent_in_new_batches": resent,
            "whole_batches_resent": resent_batches,
        },
        "exposures": {
            "assigned_customers": len(assigned),
            "rows": sum(len(v) for v in exposures.values()),
            "lost": len(exposures_lost),
            "duplicated": stored["duplicated_exposures"],
            "variant_differs": len(exposure_variant_differs),
            "variant_changed_in_answers": variant_changed,
            "unresolved": len(unresolved_assign),
            "not_enrolled": dict(not_enrolled),
        },
        "report": comparison,
        "stalls": {
            "longest_request_seconds": round(longest_seconds, 2),
            "longest_request": None
            if longest is None
            else {"endpoint": longest.endpoint, "start": round(longest.start, 2), "kind": longest.kind},
            "longest_without_answer_seconds": round(gaps[gap_index], 2) if gap_index is not None else None,
            "longest_without_answer_from": round(answered_at[gap_index], 2) if gap_index is not None else None,
            "limit_seconds": bound,
        },
        "faults": fault_rows,
        "notes": (injector.notes if injector is not None else []),
        "server_log": {
            "lines": len(lines),
            "notable": len(notable),
            # A master that shut itself down (e.g. "Reason: Worker failed to boot."): the
            # service is gone until something starts it again.
            "master_gave_up": [line[:200] for line in lines if "Reason:" in line],
            "bind_failures": sum("Connection in use" in line for line in lines),
            "worker_boot_failures": sum("exited with code 3" in line for line in lines),
            "unhandled_errors": sum("unhandled error on" in line for line in lines),
            "sample": notable[:8],
        },
        "targets": targets,
        "missed": [name for name, t in targets.items() if not t["ok"]],
    }


def print_summary(summary: dict[str, Any], out: Any) -> None:
    s = summary
    p = lambda line="": print(line, file=out)  # noqa: E731
    p(
        f"soak {s['backend']}: {s['seconds']:g} s of faults + {SETTLE_SECONDS:g} s settle "
        f"({s['load_seconds']} s of load), "
        f"{s['workers']} workers, {s['clients']} clients, timeout {s['timeout']:g} s; "
        f"gunicorn {s['gunicorn']['config'] or 'command line'}: {s['gunicorn']['command']}"
    )
    p(f"  served code: {s['served_code']}; machine load average (1 min) before and after: {s['load_average']}")
    r = s["requests"]
    p(f"  requests: {r['total']} ({', '.join(f'{k} {v}' for k, v in r.items() if k != 'total')})")
    p(f"  errors by kind: {s['errors'] or 'none'}")
    if s["error_details"]:
        p(f"  errors by endpoint and detail: {s['error_details']}")
    e = s["events"]
    p(
        f"  events: acknowledged {e['acknowledged']}, stored {e['stored']}, LOST {e['lost']}, DUPLICATED "
        f"{e['duplicated']}, altered {e['altered']}, stored unacknowledged {e['stored_unacknowledged']}, "
        f"unresolved {e['unresolved']}, rejected {e['rejected']}; re-sent {e['resent_in_new_batches']} in new batches "
        f"and {e['whole_batches_resent']} whole batches; answers said accepted {e['accepted_reported']}, "
        f"duplicates {e['duplicates_reported']}"
    )
    x = s["exposures"]
    p(
        f"  exposures: customers assigned {x['assigned_customers']}, rows {x['rows']}, LOST {x['lost']}, DUPLICATED "
        f"{x['duplicated']}, variant differs {x['variant_differs']}, changed in answers "
        f"{x['variant_changed_in_answers']}, unresolved {x['unresolved']}, not enrolled {x['not_enrolled'] or 0}"
    )
    c = s["report"]
    if c.get("report") is not None:
        for what in ("exposed", "converted", "rated"):
            cells = []
            for stage, by_variant in c["report"][what].items():
                ledger = c["ledger"][what].get(stage, {})
                cells.append(
                    f"{stage} "
                    + " ".join(
                        f"{v}={n}{'' if ledger.get(v) == n else f'(ledger {ledger.get(v)})'}"
                        for v, n in by_variant.items()
                    )
                )
            p(f"  report {what}: {'; '.join(cells)}")
    else:
        p(f"  report: not read ({c['error']})")
    st = s["stalls"]
    p(
        f"  longest request {st['longest_request_seconds']} s ({st['longest_request']}); longest time without any "
        f"answer {st['longest_without_answer_seconds']} s from {st['longest_without_answer_from']} s; "
        f"limit {st['limit_seconds']:g} s"
    )
    p("  faults (seconds since the load began; recovery after the fault's end):")
    for f in s["faults"]:
        extra = {
            k: v
            for k, v in f.items()
            if k
            not in {
                "kind",
                "start",
                "end",
                "duration",
                "note",
                "recovery_seconds",
                "judged",
                "still_failing_at_next_fault",
                "recovery_decided_by",
            }
        }
        p(
            f"    {f['kind']:15s} {f['start']}-{f['end']} s: recovery {f['recovery_seconds']} s"
            f"{' (or more: still failing when the next fault began)' if f.get('still_failing_at_next_fault') else ''}"
            f"{'' if f['judged'] else ' (not judged alone)'} {extra or ''} {f['note']}".rstrip()
        )
        if f["kind"] != "worker_kill" and f.get("recovery_decided_by"):
            p(f"      set by the {f['recovery_decided_by']}")
    for note in s["notes"]:
        p(f"  note: {note}")
    log = s["server_log"]
    p(
        f"  server log: {log['lines']} lines, {log['notable']} notable; unhandled errors {log['unhandled_errors']}, "
        f"workers failing to boot {log['worker_boot_failures']}, bind failures {log['bind_failures']}, "
        f"master shut itself down: {log['master_gave_up'] or 'no'}" + ("; e.g.:" if log["sample"] else "")
    )
    for line in log["sample"][:4]:
        p(f"    {line[:200]}")
    for name, t in s["targets"].items():
        p(f"  {'ok  ' if t['ok'] else 'MISS'} {name}: {t['detail']}")
    p(f"  missed targets: {', '.join(s['missed']) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the faults' timeline (at least 20)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="the service's configured bound on a request, in seconds: no request may wait longer than this + 1 s",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (the text on stderr)")
    parser.add_argument("--pg-url", default=None, help="PostgreSQL server to create the soak's database on")
    parser.add_argument("--pg-database", default=None, help="name of the soak's own database (dropped after)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        help="one more gunicorn argument, after ours (repeat; e.g. --gunicorn-arg=--reuse-port)",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep each run's requests (CSV) and gunicorn log here"
    )
    args = parser.parse_args(argv)
    if args.seconds < 20:
        parser.error("--seconds must be at least 20 (the faults need the room)")
    if args.workers < 1 or args.clients < 1:
        parser.error("--workers and --clients must be at least 1")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    runs = []
    for backend in backends:
        try:
            summary = run_soak(backend, args)
        except Exception as exc:
            traceback.print_exc()
            print(f"soak {backend}: could not run: {exc!r}", file=sys.stderr)
            return 2
        if args.log_dir is not None:
            (args.log_dir / f"{backend}-summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary, sys.stderr if args.json else sys.stdout)
        runs.append(summary)
    missed = [f"{run['backend']}:{name}" for run in runs for name in run["missed"]]
    if args.json:
        print(json.dumps({"runs": runs, "missed": missed}, indent=2))
    elif missed:
        print(f"targets missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
