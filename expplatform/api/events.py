"""Stage outcomes from client apps: POST /api/v1/events (client-scope key).

Valid events of a request are stored in one transaction; invalid ones come back by
index with a stable code. The request is safe to retry as a whole (a 503, a timeout):
events already stored come back as duplicates and count once.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..auth import api_access
from ..db import get_db
from ..ingest import IngestResult, batch_items, record_events
from . import bp
from .bodies import json_body


def _result_json(result: IngestResult) -> dict[str, Any]:
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": [{"index": r.index, "error": r.error, "message": r.message} for r in result.rejected],
    }


@bp.post("/events")
@api_access(scope="client")
def post_events():
    settings = current_app.extensions["settings"]
    items = batch_items(json_body(), max_events=settings.max_batch_events)
    return _result_json(record_events(get_db(), items, settings))


_EVENT = {
    "type": "object",
    "required": ["event_id", "customer_id", "type"],
    "additionalProperties": False,
    "properties": {
        "event_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "Client-generated idempotency key: a re-sent event_id counts once.",
        },
        "customer_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "stage": {
            "type": ["string", "null"],
            "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$",
            "description": (
                "Journey stage key. Required for a conversion; a rating naming its question may leave it out "
                "(the question's stage; one that differs is rejected stage_mismatch)."
            ),
        },
        "type": {
            "type": "string",
            "enum": ["conversion", "rating", "satisfaction"],
            "description": "A conversion at the stage, or a rating ('satisfaction' is the older name of 'rating').",
        },
        "metric": {
            "type": ["string", "null"],
            "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$",
            "description": (
                "The rating question answered (its key, unique across journeys). Without it a rating names its "
                "stage, and is accepted only where every journey with that stage asks exactly one question there "
                "(else ambiguous_metric, or no_question). Not for conversions."
            ),
        },
        "value": {
            "type": ["integer", "null"],
            "description": "The rating: required for a rating, within its question's scale; absent for conversion.",
        },
        "timestamp": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "When it happened, ISO 8601 with a zone; default: when received. At most 24 h ahead.",
        },
        "experiment": {"type": ["string", "null"], "description": "Count only for this experiment (key)."},
    },
}

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"content": {"application/json": {"schema": _ERROR}}}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/events": {
            "post": {
                "summary": "Report stage outcomes (one event or a batch)",
                "description": (
                    "A conversion names a journey stage; a rating names its question (metric), or only its stage "
                    "where that stage has one question in every journey. Each event counts for every experiment "
                    "that exposed the customer before the event (clock skew tolerated), measures its stage (for a "
                    "rating: measures its question there), and is named by it if it names one; forced (QA) "
                    "customers never count. A customer converts at most once per stage and experiment; their "
                    "satisfaction is their latest rating to the question. Other events are stored and reported "
                    "as data quality. Every stored event also counts in its journeys' counters (the journey map), "
                    "whatever experiment. Rejection codes: invalid_event, missing_field, unknown_field, "
                    "invalid_type, invalid_value, invalid_timestamp, timestamp_in_future, value_required, "
                    "value_not_allowed, metric_not_allowed, unknown_stage, unknown_metric, stage_mismatch, "
                    "ambiguous_metric, no_question, value_out_of_scale, unknown_experiment, stage_not_measured, "
                    "metric_not_measured, duplicate_in_batch."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            # Each event should be an Event; one that is not is answered by
                            # index in `rejected` (a 200), so the request schema only fixes
                            # the envelope.
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "description": "A batch of Event objects.",
                                        "required": ["events"],
                                        "additionalProperties": False,
                                        "properties": {"events": {"type": "array", "items": {"type": "object"}}},
                                    },
                                    {"type": "object", "description": "One Event.", "not": {"required": ["events"]}},
                                ]
                            },
                            "example": {
                                "events": [
                                    {
                                        "event_id": "7f3c-1",
                                        "customer_id": "cust-42",
                                        "stage": "purchase",
                                        "type": "conversion",
                                        "timestamp": "2024-05-01T12:30:00Z",
                                    },
                                    {
                                        "event_id": "7f3c-2",
                                        "customer_id": "cust-42",
                                        "type": "rating",
                                        "metric": "purchase-rating",
                                        "value": 4,
                                    },
                                ]
                            },
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Valid events stored (all in one transaction); invalid ones listed by index.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventsResult"}}},
                    },
                    "400": {"description": "Not JSON, or not an event or batch", **_JSON_ERROR},
                    "401": {"description": "No or unknown key", **_JSON_ERROR},
                    "403": {"description": "Not a client-scope key", **_JSON_ERROR},
                    "413": {
                        "description": "Too many events (too_many_events) or body too large (payload_too_large)",
                        **_JSON_ERROR,
                    },
                    "503": {"description": "Database unavailable; nothing was stored, retry", **_JSON_ERROR},
                },
            }
        }
    },
    "schemas": {
        "Event": _EVENT,
        "EventsResult": {
            "type": "object",
            "required": ["accepted", "duplicates", "rejected"],
            "properties": {
                "accepted": {"type": "integer", "minimum": 0, "description": "Events newly stored."},
                "duplicates": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Valid events whose event_id was already stored.",
                },
                "rejected": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "error", "message"],
                        "properties": {
                            "index": {"type": "integer", "minimum": 0},
                            "error": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
