"""The soak's recovery figure (``bench/soak.py``) counts against a fault only the
failures that came after it and were not another fault's: a connection reset by a
worker SIGKILLed later is that kill's, also one opened in the milliseconds while the
killed worker was exiting (its own listening socket, gunicorn's reuse_port, still took
connections, reset when it closed). Measured on timelines made up here."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str, as_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(as_name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[as_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak() -> Iterator[ModuleType]:
    """bench/soak.py as a module (bench/ itself stays off sys.path: its analysis.py
    would hide the package)."""
    saved = {name: sys.modules.get(name) for name in ("benchlib", "bench_soak")}
    try:
        _load("benchlib", "benchlib")
        yield _load("soak", "bench_soak")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def lock_over_at_10(soak: ModuleType) -> object:
    return soak.Fault("table_lock", at=0.0, duration=10.0, begun=0.0, start=0.0, end=10.0)


def answered_after_the_lock(soak: ModuleType) -> list[object]:
    return [
        soak.Attempt("events", 9.0, 10.01, "http_503", "database_unavailable"),  # started during the lock
        soak.Attempt("assign", 10.0, 10.02, "ok"),
        soak.Attempt("events", 10.05, 10.08, "ok"),
    ]


def figure(soak: ModuleType, attempts: list[object], kills: list[object]) -> float:
    result = soak.recovery(lock_over_at_10(soak), attempts, float("inf"), kills, 6.0)
    return result.seconds


def test_a_reset_of_a_connection_opened_while_a_killed_worker_was_exiting_is_the_kills(soak):
    kill = soak.Kill(pid=1, at=12.0, gone=12.03)
    attempts = [
        *answered_after_the_lock(soak),
        soak.Attempt("events", 11.9, 12.01, "reset", "RemoteDisconnected"),  # in flight at the kill
        soak.Attempt("assign", 12.01, 12.04, "reset", "ConnectionResetError"),  # queued on the dying socket
        soak.Attempt("assign", 12.05, 12.06, "ok"),
    ]
    assert figure(soak, attempts, [kill]) == 0.02
    result = soak.recovery(lock_over_at_10(soak), attempts, float("inf"), [kill], 6.0)
    assert result.decided_by == "first answer: assign ok 10.000-10.020 s"


def test_a_failure_after_the_killed_worker_was_gone_still_counts(soak):
    kill = soak.Kill(pid=1, at=12.0, gone=12.03)
    reset_later = soak.Attempt("assign", 12.1, 12.12, "reset", "ConnectionResetError")
    assert figure(soak, [*answered_after_the_lock(soak), reset_later], [kill]) == 2.12
    refused = soak.Attempt("assign", 12.01, 12.02, "refused")  # not a reset: not the kill's
    assert figure(soak, [*answered_after_the_lock(soak), refused], [kill]) == 2.02
    slow = soak.Attempt("events", 10.1, 16.5, "ok")  # over the bound of 6 s
    assert figure(soak, [*answered_after_the_lock(soak), slow], []) == 6.5
