"""Assignment for client apps: POST and GET /api/v1/assign (client-scope key).

The input is checked here, completely, before the service sees it: anything wrong
with the body is a 400 naming the field. Per-experiment outcomes (not enrolled,
unknown key) are not errors: they come back in the list, so one stale key in a
client app never breaks the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, request

from .. import assignment
from ..auth import api_access
from ..definitions import MAX_ATTRIBUTE, MAX_CUSTOMER_ID, MAX_STRING_VALUE, UNSTORABLE_MESSAGE, storable
from ..errors import MalformedRequest
from . import bp
from .bodies import json_body

MAX_ATTRIBUTES = 50
MAX_EXPERIMENTS = 100
MAX_KEY = 64
_FIELDS = frozenset({"customer_id", "attributes", "experiments", "stage"})
_QUERY_FIELDS = frozenset({"customer_id", "experiment", "stage"})
RESPONSE_HEADERS = {"Cache-Control": "no-store"}


def _invalid(field: str, why: str) -> MalformedRequest:
    return MalformedRequest(fields={field: why})


def _text(field: str, value: Any, limit: int) -> str:
    # NUL: PostgreSQL text cannot hold it; a lone surrogate cannot be written back as UTF-8.
    if not isinstance(value, str) or not 1 <= len(value) <= limit or not storable(value):
        raise _invalid(field, f"must be a string of 1 to {limit} characters, without NUL or unpaired surrogates")
    return value


def _attributes(value: Any) -> Mapping[str, assignment.Scalar]:
    if not isinstance(value, dict):
        raise _invalid("attributes", "must be an object of text, number or true/false values")
    if len(value) > MAX_ATTRIBUTES:
        raise _invalid("attributes", f"at most {MAX_ATTRIBUTES} attributes")
    for name, item in value.items():
        if not 1 <= len(name) <= MAX_ATTRIBUTE or not storable(name):
            raise _invalid("attributes", f"names must be 1 to {MAX_ATTRIBUTE} characters, without NUL or surrogates")
        if isinstance(item, str):
            if len(item) > MAX_STRING_VALUE:
                raise _invalid(f"attributes.{name}", f"text values are at most {MAX_STRING_VALUE} characters")
            if not storable(item):
                raise _invalid(f"attributes.{name}", UNSTORABLE_MESSAGE)
        elif not isinstance(item, (bool, int, float)) or (isinstance(item, float) and not math.isfinite(item)):
            raise _invalid(f"attributes.{name}", "must be text, a finite number or true/false")
    return value


def _keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EXPERIMENTS:
        raise _invalid("experiments", f"must be a list of 1 to {MAX_EXPERIMENTS} experiment keys")
    keys = [_text(f"experiments.{i}", key, MAX_KEY) for i, key in enumerate(value)]
    return tuple(dict.fromkeys(keys))  # a repeated key is answered once


def parse_body(body: Any) -> assignment.AssignRequest:
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise MalformedRequest(fields={name: "unknown field" for name in unknown})
    if "customer_id" not in body:
        raise _invalid("customer_id", "is required")
    if "experiments" in body and "stage" in body:
        raise _invalid("stage", "give either experiments or stage, not both")
    return assignment.AssignRequest(
        customer_id=_text("customer_id", body["customer_id"], MAX_CUSTOMER_ID),
        attributes=_attributes(body["attributes"]) if "attributes" in body else {},
        experiments=_keys(body["experiments"]) if "experiments" in body else None,
        stage=_text("stage", body["stage"], MAX_KEY) if "stage" in body else None,
    )


def parse_query(args: Any) -> assignment.AssignRequest:
    """The same request as a query string; it carries no attributes."""
    unknown = sorted(set(args) - _QUERY_FIELDS)
    if unknown:
        raise MalformedRequest(fields={name: "unknown parameter" for name in unknown})
    body: dict[str, Any] = {"customer_id": args["customer_id"]} if "customer_id" in args else {}
    if "experiment" in args:
        body["experiments"] = args.getlist("experiment")
    if "stage" in args:
        body["stage"] = args["stage"]
    return parse_body(body)


def _assignment_json(item: assignment.Assignment) -> dict[str, Any]:
    if item.variant is None:
        return {"experiment": item.experiment, "enrolled": False, "reason": item.reason}
    body = {"experiment": item.experiment, "variant": item.variant, "stage": item.stage, "enrolled": True}
    if item.forced:
        body["forced"] = True
    return body


def answer(app: Flask, parsed: assignment.AssignRequest) -> bytes:
    """The 200 body for a parsed request (shared with the fast path, fast_assign.py)."""
    assignments = assignment.assign(assignment.exposure_store(app), assignment.definitions(app), parsed)
    body = {"customer_id": parsed.customer_id, "assignments": [_assignment_json(a) for a in assignments]}
    # Compact and unsorted: on this hot path Flask's JSON provider (sorting, indent
    # checks) is a measurable share of the request.
    return json.dumps(body, separators=(",", ":")).encode()


def _respond(parsed: assignment.AssignRequest) -> Response:
    return Response(answer(current_app, parsed), 200, RESPONSE_HEADERS, mimetype="application/json")


@bp.post("/assign")
@api_access(scope="client")
def post_assign():
    return _respond(parse_body(json_body()))


@bp.get("/assign")
@api_access(scope="client")
def get_assign():
    return _respond(parse_query(request.args))


# -- OpenAPI -------------------------------------------------------------------------------

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_RESPONSES = {
    "200": {
        "description": "One entry per experiment, in the order asked for (or defined). Show the "
        "control experience for every entry with enrolled false.",
        "headers": {"Cache-Control": {"schema": {"type": "string", "const": "no-store"}, "required": True}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AssignResult"}}},
    },
    "400": {
        "description": "Malformed request (validation_failed names the field; invalid_content_type; malformed_json)",
        **_ERROR,
    },
    "401": {"description": "No or unknown key", **_ERROR},
    "403": {"description": "Not a client-scope key", **_ERROR},
    "413": {"description": "Body too large", **_ERROR},
    "503": {"description": "Database unavailable; retry", **_ERROR},
}
_SELECTION = (
    "Give `experiments` (keys) or `stage` (every running or paused experiment targeting that "
    "stage) or neither (every running or paused experiment)."
)

OPENAPI: dict[str, Any] = {
    "paths": {
        "/assign": {
            "post": {
                "summary": "Assign a customer to experiments; records the first exposure",
                "description": _SELECTION + " The first assignment of an enrolled customer records one "
                "exposure with the attributes given; later calls write nothing and return the same variant.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/AssignRequest"},
                            "examples": {
                                "named": {
                                    "value": {
                                        "customer_id": "c-1042",
                                        "attributes": {"country": "FR", "platform": "ios", "visits": 3, "member": True},
                                        "experiments": ["checkout-button"],
                                    }
                                },
                                "stage": {"value": {"customer_id": "c-1042", "stage": "purchase"}},
                            },
                        }
                    },
                },
                "responses": _RESPONSES,
            },
            "get": {
                "summary": "Assign a customer to experiments (query string form, no attributes)",
                "description": _SELECTION + " Repeat `experiment` for several. Without attributes, a "
                "customer is never newly enrolled in a targeted experiment: use POST for those.",
                "parameters": [
                    {
                        "name": "customer_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOMER_ID},
                    },
                    {
                        "name": "experiment",
                        "in": "query",
                        "required": False,
                        "style": "form",
                        "explode": True,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {"name": "stage", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {k: v for k, v in _RESPONSES.items() if k != "413"},
            },
        }
    },
    "schemas": {
        "AssignRequest": {
            "type": "object",
            "required": ["customer_id"],
            "additionalProperties": False,
            "properties": {
                "customer_id": {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOMER_ID},
                "attributes": {
                    "type": "object",
                    "maxProperties": MAX_ATTRIBUTES,
                    "propertyNames": {"minLength": 1, "maxLength": MAX_ATTRIBUTE},
                    "additionalProperties": {
                        "oneOf": [
                            {"type": "string", "maxLength": MAX_STRING_VALUE},
                            {"type": "number"},
                            {"type": "boolean"},
                        ]
                    },
                    "description": "Flat values for targeting; stored with the first exposure for segment reports.",
                },
                "experiments": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_EXPERIMENTS,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
                },
                "stage": {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
            },
            "not": {"required": ["experiments", "stage"]},
        },
        "Assignment": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["experiment", "variant", "stage", "enrolled"],
                    "additionalProperties": False,
                    "properties": {
                        "experiment": {"type": "string"},
                        "variant": {"type": "string"},
                        "stage": {"type": "string"},
                        "enrolled": {"const": True},
                        "forced": {"const": True, "description": "A QA override: served, excluded from analysis."},
                    },
                },
                {
                    "type": "object",
                    "required": ["experiment", "enrolled", "reason"],
                    "additionalProperties": False,
                    "properties": {
                        "experiment": {"type": "string"},
                        "enrolled": {"const": False},
                        "reason": {
                            "enum": ["traffic", "targeting", "layer", "paused", "not_running", "unknown_experiment"],
                            "description": "Why not enrolled; in every case show the control experience.",
                        },
                    },
                },
            ]
        },
        "AssignResult": {
            "type": "object",
            "required": ["customer_id", "assignments"],
            "additionalProperties": False,
            "properties": {
                "customer_id": {"type": "string"},
                "assignments": {"type": "array", "items": {"$ref": "#/components/schemas/Assignment"}},
            },
        },
    },
}
