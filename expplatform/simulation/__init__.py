"""Synthetic customers driven through the real HTTP API (``expplatform simulate``).

``scenario`` reads and checks scenario files, ``customers`` says what each synthetic
customer does and what is truly expected of them (no I/O), ``runner`` sends it all to
a running service with :mod:`expplatform.client`, ``service`` checks the service's
address and prepares its experiments (admin API), ``summary`` counts what came back.
"""

from __future__ import annotations

from .customers import Truth
from .runner import Options, Result, simulate, truth_document, write_truth
from .scenario import Scenario, ScenarioError, available, load
from .service import SimulationError, is_loopback
from .summary import Summary

__all__ = [
    "Options",
    "Result",
    "Scenario",
    "ScenarioError",
    "SimulationError",
    "Summary",
    "Truth",
    "available",
    "is_loopback",
    "load",
    "simulate",
    "truth_document",
    "write_truth",
]
