"""What a warehouse source maps: for each role the attribution rules need, the
column of the source's events or exposures table that plays it, and the kind of
type that column must have.

Events are stored as the platform stores them (``models.Event``): one row per copy
received, a resent copy included; the statistics keep the first stored copy of each
``event_id``. Exposures are the platform's ledger (``expplatform warehouse export``
copies it there) or the warehouse's own table with the same meaning; its
``attributes`` (JSON text, as the export writes ``Exposure.attributes``) give the
segments (``segments``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TypeFamily = Literal["text", "integer", "timestamp", "boolean"]


@dataclass(frozen=True)
class Role:
    name: str
    family: TypeFamily
    required: bool
    meaning: str


EVENT_ROLES: tuple[Role, ...] = (
    Role("event_id", "text", True, "the client's event id; copies sharing it count once (the first stored)"),
    Role("customer_id", "text", True, "the customer the event is about"),
    Role("stage", "text", True, "the journey stage"),
    Role("kind", "text", True, "'conversion', or 'satisfaction' (or 'rating') for a rating"),
    Role("metric", "text", False, "the rating question's key (empty or NULL: the stage's only question)"),
    Role("value", "integer", False, "the rating"),
    Role("occurred_at", "timestamp", True, "when the event happened, by the client's clock"),
    Role("received_at", "timestamp", True, "when the platform (or collector) received it, not the load time"),
    Role(
        "exposure_cutoff",
        "timestamp",
        False,
        "the latest exposure time the event may follow, fixed at ingest; without it: "
        "least(occurred_at + the source's clock skew, received_at)",
    ),
    Role("experiment", "text", False, "the experiment key the event names, if any"),
    Role("sequence", "integer", False, "the order events were stored in, for ties of time"),
)

EXPOSURE_ROLES: tuple[Role, ...] = (
    Role("experiment", "text", True, "the experiment key"),
    Role("customer_id", "text", True, "the customer"),
    Role("variant", "text", True, "the variant key"),
    Role("exposed_at", "timestamp", True, "the first assignment's time"),
    Role("forced", "boolean", False, "a QA customer forced into a variant (never counted)"),
    Role(
        "attributes",
        "text",
        False,
        "the attributes given at assignment, as a JSON object in text; without it the report has no segments",
    ),
)


# The columns ``expplatform warehouse export`` writes, and a mapping's defaults: a
# source whose tables use these names needs no column mapping at all.
DEFAULT_EVENT_COLUMNS = {role.name: role.name for role in EVENT_ROLES}
DEFAULT_EXPOSURE_COLUMNS = {role.name: role.name for role in EXPOSURE_ROLES}
