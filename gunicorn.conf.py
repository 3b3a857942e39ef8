"""gunicorn settings for serving expplatform: ``gunicorn -c gunicorn.conf.py wsgi:app``.

gunicorn also reads this file by itself when started from this directory. Options given
on the command line (``--workers``, ``--bind``) override the values here. The
``EXPPLATFORM_*`` settings are parsed here, in the master, so a bad value stops the
service at once with a message naming the variable, before any worker starts; the
worker and graceful timeouts come from them because the database waits are checked
against the worker timeout (``config.py``).
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn import glogging

from expplatform.config import load_settings
from expplatform.observability import JsonFormatter

_settings = load_settings()

bind = "127.0.0.1:8000"
workers = 2
# Threads overlap database waits (a PostgreSQL commit waits for its WAL flush) and keep
# connections alive; workers share nothing but the database. gunicorn's gthread worker,
# made to hand over to a master restarted after a kill -9 without refusing anything and
# to stop without dropping connections queued on its socket (expplatform/gunicorn_worker.py).
# (For sync workers pass --worker-class sync --threads 1: gunicorn runs a sync worker
# with threads as gthread.)
worker_class = "expplatform.gunicorn_worker.HandoverWorker"
threads = 4
backlog = 2048
keepalive = 5
# A worker silent this long is killed and replaced; every database wait ends before.
timeout = _settings.worker_timeout_seconds
# On SIGTERM or SIGHUP, workers finish the requests they hold for up to this long.
graceful_timeout = _settings.graceful_timeout_seconds
# Every worker binds the port itself (SO_REUSEPORT): a master that died by SIGKILL
# leaves workers that still hold the port (they serve until the new master's workers
# listen), and a new master then starts anyway instead of exiting with "Connection in
# use". (A worker killed outright drops the connections queued on its socket unless
# net.ipv4.tcp_migrate_req = 1; one that stops closes its socket first.)
reuse_port = True
# The app is imported once, in the master: a worker that replaces a killed one is
# serving within milliseconds instead of importing everything again (about 2 s of CPU,
# during which the connections the kernel gives its socket wait).
preload_app = True
# gunicorn's control socket is one path per user ($HOME/.gunicorn/gunicorn.ctl), which two
# instances on one host would fight over; nothing here uses it.
control_socket_disable = True
# The workers' heartbeat files on tmpfs: a slow disk must not get workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


class JsonLogger(glogging.Logger):
    """gunicorn's own lines (boot, worker exits and timeouts) as JSON, like the app's.
    Its access log is off: the app's ``expplatform.access`` logger writes one line per
    request with the request id (``observability.py``)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = JsonLogger


def pre_fork(server: Any, worker: Any) -> None:
    """The master holds no database connection when it forks a worker (the migration
    check opened one). Not only because a connection must not be shared: SQLite's file
    locks belong to a process and a child inherits none of them, but it inherits
    SQLite's record of them, so the worker's own connections took it that the locks
    were held and never asked for them. Once the master was gone (a kill -9), no process
    held the lock that says the -shm file is in use, and the next one to open the
    database (the restarted master) truncated it under the workers still using it: they
    died of SIGBUS."""
    app = server.app.callable  # loaded in the master only with preload_app
    database = getattr(app, "extensions", {}).get("db")
    if database is not None:
        database.engine.dispose()
