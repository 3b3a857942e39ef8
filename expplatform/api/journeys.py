"""Journey definitions over JSON: /api/v1/journeys (the journey map is in
``journey_map.py``).

Same callers as the experiments API: an admin-scope key, or a logged-in user
(viewer to read, editor to change); session-authenticated changes must be sent as
``application/json`` (see ``api/experiments.py``).
"""

from __future__ import annotations

from typing import Any

from flask import url_for

from .. import journeys as service
from ..db import get_db, get_session
from ..definitions import MAX_ATTRIBUTE, MAX_NAME, MAX_SCALE_SPAN, MAX_STAGES, SCALE_BOUND, SLUG
from ..journey_definitions import (
    KIND,
    MAX_GOAL,
    MAX_PERSONAS,
    MAX_QUESTION_TEXT,
    MAX_QUESTIONS,
    MAX_TOUCHPOINT,
    MAX_TOUCHPOINTS,
    parse_journey,
)
from . import bp, schemas
from .bodies import json_object
from .experiments import _actor, _json, _ref, _request_body, read_access, write_access


@bp.get("/journeys")
@read_access
def list_journeys():
    return {"items": [schemas.journey(row) for row in service.list_journeys(get_session())]}


@bp.post("/journeys")
@write_access
def create_journey():
    definition = parse_journey(json_object())
    with get_db().write() as session:
        saved = service.create_journey(session, definition, _actor())
        body = schemas.journey(saved.journey, notices=saved.notices)
    return body, 201, {"Location": url_for("api.get_journey", key=definition.key)}


@bp.get("/journeys/<key>")
@read_access
def get_journey(key: str):
    session = get_session()
    journey = service.get_journey(session, key)
    return schemas.journey(journey, audit=service.journey_audit_log(session, journey))


@bp.put("/journeys/<key>")
@write_access
def replace_journey(key: str):
    definition = parse_journey(json_object())
    with get_db().write() as session:
        saved = service.update_journey(session, key, definition, _actor())
        return schemas.journey(saved.journey, notices=saved.notices)


@bp.patch("/journeys/<key>")
@write_access
def patch_journey(key: str):
    changes = json_object()
    with get_db().write() as session:
        saved = service.patch_journey(session, key, changes, _actor())
        return schemas.journey(saved.journey, notices=saved.notices)


@bp.get("/journeys/<key>/audit")
@read_access
def journey_audit(key: str):
    session = get_session()
    journey = service.get_journey(session, key)
    return {"items": [schemas.journey_audit_entry(entry) for entry in service.journey_audit_log(session, journey)]}


# -- OpenAPI ---------------------------------------------------------------------------


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request: not JSON, not an object, or the wrong content type",
        401: "No credentials, or an unknown key",
        403: "A client-scope key, or a user whose role is too low",
        404: "No journey with that key (`journey_not_found`)",
        409: "Conflicts with what exists or relies on the journey: `duplicate_key`, `duplicate_question` "
        "(question keys are unique across journeys), `key_immutable`, `stage_in_use` (a stage an experiment "
        "measures removed, or reordered against a started experiment's order), `question_in_use` (a measured or "
        "answered question removed), `frozen_field` (the scale or stage of an answered question, or of one a "
        "started experiment measures); `fields` names each offending field",
        422: "Invalid journey (`validation_failed`); `fields` names each bad field by dotted path",
    }
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


_SLUG = {"type": "string", "pattern": SLUG.pattern}
_TEXT = {"type": "string", "default": ""}
_DEFINITION_PROPERTIES: dict[str, Any] = {
    "kind": {"type": "string", "enum": [KIND], "description": "Optional; what a journey file says first."},
    "key": {**_SLUG, "description": "Unique and immutable; experiments and the journey map name it."},
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
    "description": _TEXT,
    "persona_attribute": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ATTRIBUTE,
        "default": "persona",
        "description": "The customer attribute (sent with assignment calls) whose values are the personas.",
    },
    "stages": {
        "type": "array",
        "items": _ref("JourneyStage"),
        "minItems": 1,
        "maxItems": MAX_STAGES,
        "description": "In journey order; keys unique within the journey.",
    },
    "personas": {"type": "array", "items": _ref("JourneyPersona"), "maxItems": MAX_PERSONAS, "default": []},
    "questions": {
        "type": "array",
        "items": _ref("RatingQuestion"),
        "maxItems": MAX_QUESTIONS,
        "default": [],
        "description": "Rating questions; keys unique across all journeys (a rating event names its question).",
    },
}
_EXAMPLE: dict[str, Any] = {
    "key": "ecommerce",
    "name": "Online shop",
    "description": "From first hearing of the shop to recommending it.",
    "persona_attribute": "persona",
    "stages": [
        {"key": "awareness", "goal": "Visited the shop", "touchpoints": ["ads", "search", "social"]},
        {"key": "consideration", "goal": "Put a product in the cart", "touchpoints": ["product page", "reviews"]},
        {"key": "purchase", "name": "Purchase", "goal": "Placed an order", "touchpoints": ["cart", "checkout"]},
    ],
    "personas": [
        {"key": "bargain-hunter", "name": "Bargain hunter", "description": "Waits for discounts."},
        {"key": "first-timer", "name": "First-timer"},
    ],
    "questions": [
        {
            "key": "checkout-csat",
            "text": "How satisfied are you with checkout?",
            "stage": "purchase",
            "scale": {"min": 1, "max": 5},
        }
    ],
}
_KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": _SLUG}


OPENAPI: dict[str, Any] = {
    "paths": {
        "/journeys": {
            "get": {
                "summary": "List journeys, by key",
                "responses": {"200": _json(_ref("JourneyList"), "Every journey"), **_errors(401, 403)},
            },
            "post": {
                "summary": "Create a journey",
                "requestBody": _request_body("JourneyDefinition", {"ecommerce": _EXAMPLE}),
                "responses": {
                    "201": {
                        **_json(_ref("Journey"), "Created; `Location` points at it"),
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 409, 422),
                },
            },
        },
        "/journeys/{key}": {
            "parameters": [_KEY_PARAM],
            "get": {
                "summary": "A journey with its audit log",
                "responses": {"200": _json(_ref("Journey"), "The journey"), **_errors(401, 403, 404)},
            },
            "put": {
                "summary": "Replace a journey's definition (as far as what relies on it allows)",
                "description": "The whole definition, as for create; fields left out take their defaults. "
                "Stage and question keys are identities: a renamed one is a new one. A stage an experiment "
                "measures cannot be removed, nor reordered against the order a started experiment measures; a "
                "question measured by an experiment or answered cannot be removed or moved, and its scale is "
                "frozen once answered or measured by a started experiment.",
                "requestBody": _request_body(
                    "JourneyDefinition", {"ecommerce": {**_EXAMPLE, "name": "Online shop (EU)"}}
                ),
                "responses": {"200": _json(_ref("Journey"), "Updated"), **_errors(400, 401, 403, 404, 409, 422)},
            },
            "patch": {
                "summary": "Change some fields of a journey",
                "description": "Each top-level field given replaces the stored one (a list replaces the whole "
                "list); `null` resets a field to its default. The rules of PUT apply.",
                "requestBody": _request_body(
                    "JourneyPatch",
                    {
                        "rename": {"name": "Online shop (EU)"},
                        "personas": {"personas": [{"key": "loyal", "name": "Loyal customer"}]},
                    },
                ),
                "responses": {"200": _json(_ref("Journey"), "Updated"), **_errors(400, 401, 403, 404, 409, 422)},
            },
        },
        "/journeys/{key}/audit": {
            "parameters": [_KEY_PARAM],
            "get": {
                "summary": "Who changed the journey and how, newest first",
                "responses": {"200": _json(_ref("JourneyAuditLog"), "The audit log"), **_errors(401, 403, 404)},
            },
        },
    },
    "schemas": {
        "JourneyStage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key"],
            "properties": {
                "key": _SLUG,
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_NAME,
                    "description": "Default: made from the key (`first-purchase` -> `First purchase`).",
                },
                "goal": {**_TEXT, "maxLength": MAX_GOAL, "description": "What converting at this stage means."},
                "touchpoints": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_TOUCHPOINT},
                    "maxItems": MAX_TOUCHPOINTS,
                    "uniqueItems": True,
                    "default": [],
                    "description": "Where customers meet the stage: screens, emails, calls.",
                },
            },
        },
        "JourneyPersona": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key"],
            "properties": {
                "key": {**_SLUG, "description": "A value of the journey's persona attribute."},
                "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "description": "Default: from key."},
                "description": _TEXT,
            },
        },
        "QuestionScale": {
            "type": "object",
            "additionalProperties": False,
            "required": ["min", "max"],
            "properties": {
                "min": {"type": "integer", "minimum": -SCALE_BOUND, "maximum": SCALE_BOUND},
                "max": {"type": "integer", "minimum": -SCALE_BOUND, "maximum": SCALE_BOUND},
            },
            "description": f"Integer rating scale; max is 1 to {MAX_SCALE_SPAN} above min (1-5 CSAT, 0-10 NPS).",
        },
        "RatingQuestion": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", "text", "stage", "scale"],
            "properties": {
                "key": {**_SLUG, "description": "Unique across journeys; rating events name it as `metric`."},
                "text": {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION_TEXT},
                "stage": {**_SLUG, "description": "One of the journey's stages: where the question is asked."},
                "scale": _ref("QuestionScale"),
            },
        },
        "JourneyDefinition": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", "name", "stages"],
            "properties": _DEFINITION_PROPERTIES,
        },
        "JourneyPatch": {
            "type": "object",
            "additionalProperties": False,
            "description": "`null` resets a field to its default; the key cannot change.",
            "properties": {
                name: schema if name in ("key", "kind") else {"anyOf": [schema, {"type": "null"}]}
                for name, schema in _DEFINITION_PROPERTIES.items()
            },
        },
        "Journey": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                *(name for name in _DEFINITION_PROPERTIES if name != "kind"),
                "created_at",
                "updated_at",
            ],
            "properties": {
                **{name: schema for name, schema in _DEFINITION_PROPERTIES.items() if name != "kind"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "notices": {"type": "array", "items": {"type": "string"}, "description": "What should be known."},
                "audit": {
                    "type": "array",
                    "items": _ref("JourneyAuditEntry"),
                    "description": "Newest first; on GET only.",
                },
            },
        },
        "JourneyList": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref("Journey")}},
        },
        "JourneyAuditEntry": {
            "type": "object",
            "required": ["at", "actor", "action", "journey", "details"],
            "properties": {
                "at": {"type": "string", "format": "date-time"},
                "actor": {"type": "string", "description": "`user:<email>`, `key:<prefix>`, `cli` or `demo`"},
                "action": {"type": "string", "enum": ["created", "updated"]},
                "journey": {"type": "string"},
                "details": {"type": "object", "description": "`updated`: {changes: {field: {from, to}}}"},
            },
        },
        "JourneyAuditLog": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref("JourneyAuditEntry")}},
        },
    },
}
