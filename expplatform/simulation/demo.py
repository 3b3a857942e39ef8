"""The demo that ``make run`` serves: the demo journey's experiments
(``experiments/*.toml``) and four simulated weeks of their customers.

The scenario ``experiments/scenarios/demo.toml`` is the demo's story: which
experiment ran on which days (one finished after two weeks, its next iteration ran
the last two), what each variant truly does, and the customers. ``expplatform demo
setup`` creates the experiments as drafts (the iteration as a clone of the one it
follows), ``expplatform demo seed`` backfills the weeks (``backfill``) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..definitions import ExperimentDefinition
from ..models import Experiment
from .backfill import create_experiment
from .scenario import Scenario, load

SCENARIO = "demo"
CUSTOMERS = 50_000
DAYS = 28


def scenario() -> Scenario:
    return load(SCENARIO)


def create_experiments(
    session: Session, files: Sequence[tuple[Path, ExperimentDefinition]], demo: Scenario, actor: str
) -> list[str]:
    """Create the demo experiments that do not exist yet, as drafts: an iteration the
    demo scenario says was ``cloned_from`` another as a clone of that one (so after
    it). The keys created, in that order."""
    existing = set(session.scalars(select(Experiment.key)))

    def iteration_of(definition: ExperimentDefinition) -> str | None:
        spec = demo.experiments.get(definition.key)
        return spec.cloned_from if spec is not None else None

    created = []
    for _path, definition in sorted(files, key=lambda item: iteration_of(item[1]) is not None):
        if definition.key not in existing:
            create_experiment(session, definition, actor, cloned_from=iteration_of(definition))
            created.append(definition.key)
    return created


def seeded(session: Session, demo: Scenario) -> bool:
    """Whether the demo's history is there: a backfill marks its experiments
    simulated in the transaction that writes their data."""
    marked = session.scalars(select(Experiment.simulated).where(Experiment.key.in_(list(demo.experiments)))).all()
    return len(marked) == len(demo.experiments) and all(marked)
