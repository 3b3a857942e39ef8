"""Stage outcomes in: client apps send what a customer did at a stage, without
knowing which experiments the customer is in, and ingest turns it into the outcome
rows and counters that reports read.

A batch flows through one module per step, each importing only the ones before it:

- ``validation``: the body into typed events, or rejections by index (no database);
- ``catalog``: the journeys' stages and rating questions that events name, cached
  per process until the definitions version moves;
- ``attribution``: what each event is (its stage and question) and which experiments
  it counts for, from the catalog and a read of the exposures (and the rules that
  need the database);
- ``outcomes``: the events folded into the per experiment x customer x stage outcome
  rows and the per journey x customer x stage x question journey outcome rows, and
  the counter moves that follow;
- ``store``: the events, outcome rows and counters written in one idempotent,
  retried transaction, and :func:`record_events`, the entry point;
- ``rebuild``: the same rows and counters recomputed from the raw data in SQL.

The raw-SQL layer is ``expplatform.rawsql`` (shared with the exposure writes of
``assignment``), and the counters' day rules are ``expplatform.counters`` (shared
with ``aggregation``, which reads the counters); nothing here imports the API.
"""

from .rebuild import (
    RebuildSummary,
    rebuild_everything,
    rebuild_journey_counters,
    rebuild_outcomes,
    rebuild_unmatched_counts,
    stored_journey_counters,
    stored_outcomes,
)
from .store import IngestResult, record_events
from .validation import EventIn, Rejection, batch_items, validate_events

__all__ = [
    "EventIn",
    "IngestResult",
    "RebuildSummary",
    "Rejection",
    "batch_items",
    "rebuild_everything",
    "rebuild_journey_counters",
    "rebuild_outcomes",
    "rebuild_unmatched_counts",
    "record_events",
    "stored_journey_counters",
    "stored_outcomes",
    "validate_events",
]
