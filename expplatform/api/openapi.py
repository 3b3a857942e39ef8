"""The OpenAPI 3 document of the JSON API, assembled from each feature module's
``OPENAPI`` fragment ({"paths": ..., "schemas": ...}) so that the description lives
next to the handlers it describes. Tests validate real responses against it."""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

from ..auth import public
from . import assign, bp, events, experiments, journey_map, journeys, reports, warehouse

# The feature modules whose ``OPENAPI`` fragments make up the document, in its order.
FEATURES: tuple[ModuleType, ...] = (experiments, journeys, journey_map, events, assign, reports, warehouse)

COMMON_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "Stable machine-readable code."},
            "message": {"type": "string", "description": "What went wrong, for people."},
            "fields": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

COMMON_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "summary": "Liveness probe",
            "security": [],
            "responses": {
                "200": {
                    "description": "Alive",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    paths: dict[str, Any] = dict(COMMON_PATHS)
    schemas: dict[str, Any] = dict(COMMON_SCHEMAS)
    for fragment in (module.OPENAPI for module in FEATURES):
        for path, operations in fragment.get("paths", {}).items():
            paths.setdefault(path, {}).update(operations)
        schemas.update(fragment.get("schemas", {}))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "expplatform API",
            "version": "1",
            "description": "Assignment, stage outcomes, experiment and journey definitions and lift reports.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    }


@bp.get("/openapi.json")
@public
def openapi_document():
    return document()
