"""What the simulator asks of the service besides the client's calls: whether its URL
is on this machine, and (with an admin key) that the scenario's experiments exist and
run, creating them from the scenario with ``--create``."""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from .scenario import Experiment, Scenario


class SimulationError(Exception):
    """The simulation cannot run (or go on): the message says why and what to do."""


# -- the service's host -------------------------------------------------------------------------


def is_loopback(url: str) -> bool:
    """Whether every address the URL's host names is a loopback address."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


# -- the admin API (for --create) ----------------------------------------------------------------


def _admin(url: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url.rstrip("/") + "/api/v1" + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except ValueError:  # not JSON: not expplatform
        return 0, None
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                return exc.code, json.load(exc)
            except ValueError:
                return exc.code, None
    except (urllib.error.URLError, OSError) as exc:
        raise SimulationError(f"cannot reach {url}: {exc}") from None


def check_reachable(url: str) -> None:
    """Raise SimulationError unless the service answers its liveness probe: a run
    against nothing would only retry every batch."""
    status, _body = _admin(url, "", "GET", "/health")
    if status != 200:
        raise SimulationError(f"{url} does not answer as expplatform (GET /api/v1/health: HTTP {status})")


def definition_for(scenario: Scenario, experiment: Experiment, *, legacy: bool) -> dict[str, Any]:
    """The definition ``--create`` sends: the scenario's fields, with the journey
    (or, for a service before journeys, the stage list and one satisfaction scale)."""
    definition = dict(experiment.definition)
    definition.setdefault("name", experiment.key)
    if legacy:
        for name in ("journey", "metrics"):
            definition.pop(name, None)
        definition.setdefault("stages", list(scenario.stages))
        lo, hi = scenario.legacy_scale
        definition.setdefault("satisfaction_scale", {"min": lo, "max": hi})
    else:
        definition.setdefault("journey", scenario.journey)
    return definition


def prepare_experiments(
    scenario: Scenario,
    url: str,
    key: str,
    *,
    create: bool,
    legacy: bool,
    say: Callable[[str], None],
    days: int | None = None,
) -> None:
    """With an admin ``key``: check that each of the scenario's experiments exists and
    runs (of a run of ``days`` simulated days: those that run on its last day); with
    ``create``, create the missing ones from the scenario and start drafts (resume
    paused ones) instead of refusing them."""
    for experiment in scenario.experiments.values():
        if days is not None and not experiment.runs_on_last_day(days):
            continue
        status, body = _admin(url, key, "GET", f"/experiments/{experiment.key}")
        if status == 404 and create:
            definition = definition_for(scenario, experiment, legacy=legacy)
            status, body = _admin(url, key, "POST", "/experiments", definition)
            if status != 201:
                hint = ""
                if not legacy and isinstance(body, dict) and "journey" in (body.get("fields") or {}):
                    hint = (
                        f" (is the journey {scenario.journey!r} defined? `expplatform demo setup` defines the demo "
                        "journey; --legacy creates the experiment in the form from before journeys)"
                    )
                raise SimulationError(f"creating {experiment.key} failed: HTTP {status} {body}{hint}")
            say(f"created experiment {experiment.key}")
        elif status == 404:
            raise SimulationError(f"experiment {experiment.key} does not exist (--create makes it from the scenario)")
        elif status != 200:
            raise SimulationError(f"reading experiment {experiment.key} failed: HTTP {status} {body}")
        state = body.get("status")
        if state == "stopped":
            raise SimulationError(f"experiment {experiment.key} is stopped: its outcomes would not count")
        action = {"draft": "start", "paused": "resume"}.get(state)
        if action and not create:
            raise SimulationError(f"experiment {experiment.key} is {state}: {action} it, or run with --create")
        if action:
            status, body = _admin(url, key, "POST", f"/experiments/{experiment.key}/{action}")
            if status != 200:
                raise SimulationError(f"{action} {experiment.key} failed: HTTP {status} {body}")
            say(f"{'started' if action == 'start' else 'resumed'} experiment {experiment.key}")
