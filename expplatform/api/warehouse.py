"""Warehouse sources over JSON: /api/v1/warehouse-sources.

Same callers as the other definitions: an admin-scope key, or a logged-in user
(viewer to read, editor to change). The URL's password never appears in a response:
sources are shown with the URL masked (``warehouse.sources.masked_url``). Creating
or changing a source reads the warehouse's catalog first (unless the body says
``"check": false``), outside the write transaction.
"""

from __future__ import annotations

from typing import Any

from flask import url_for

from ..db import get_db, get_session
from ..definitions import MAX_NAME, SLUG
from ..warehouse import sources as service
from ..warehouse.mapping import EVENT_ROLES, EXPOSURE_ROLES, Role
from . import bp, schemas
from .bodies import json_object
from .experiments import _actor, _json, _ref, _request_body, read_access, write_access


def _body(session, source, **kwargs: Any) -> dict[str, Any]:
    return schemas.warehouse_source(source, experiments=service.experiments_using(session, source), **kwargs)


@bp.get("/warehouse-sources")
@read_access
def list_warehouse_sources():
    session = get_session()
    return {"items": [_body(session, source) for source in service.list_sources(session)]}


@bp.post("/warehouse-sources")
@write_access
def create_warehouse_source():
    prepared = service.prepare(service.parse_source(json_object()))
    with get_db().write() as session:
        saved = service.create_source(session, prepared, _actor())
        body = _body(session, saved.source, notices=saved.notices)
    return body, 201, {"Location": url_for("api.get_warehouse_source", key=saved.source.key)}


@bp.get("/warehouse-sources/<key>")
@read_access
def get_warehouse_source(key: str):
    session = get_session()
    source = service.get_source(session, key)
    return _body(session, source, audit=service.audit_log(session, source))


@bp.patch("/warehouse-sources/<key>")
@write_access
def update_warehouse_source(key: str):
    definition, stored_url = service.update_definition(get_session(), key, json_object())
    prepared = service.prepare(definition, stored_url=stored_url)
    with get_db().write() as session:
        saved = service.update_source(session, key, prepared, _actor())
        return _body(session, saved.source, notices=saved.notices)


@bp.delete("/warehouse-sources/<key>")
@write_access
def delete_warehouse_source(key: str):
    with get_db().write() as session:
        service.delete_source(session, key, _actor())
    return "", 204


@bp.post("/warehouse-sources/<key>/check")
@write_access
def check_warehouse_source(key: str):
    json_object(optional=True)
    report = service.check_source(service.get_source(get_session(), key))
    return {"ok": report.ok, "message": report.message, "problems": dict(report.problems)}


@bp.get("/warehouse-sources/<key>/audit")
@read_access
def warehouse_source_audit(key: str):
    session = get_session()
    source = service.get_source(session, key)
    return {"items": [schemas.warehouse_audit_entry(entry) for entry in service.audit_log(session, source)]}


# -- OpenAPI ---------------------------------------------------------------------------


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request: not JSON, not an object, or the wrong content type",
        401: "No credentials, or an unknown key",
        403: "A client-scope key, or a user whose role is too low",
        404: "No warehouse source with that key (`warehouse_source_not_found`)",
        409: "`duplicate_key`, `key_immutable`, or `source_in_use` (an experiment reads from the source)",
        422: "Invalid source (`validation_failed`; `fields` names each bad field), or the warehouse does not "
        "match it (`warehouse_check_failed`: `fields` names the table or `events_columns.<role>` that is "
        "missing or of the wrong type, or `url` when the warehouse cannot be reached)",
    }
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


def _columns_schema(roles: tuple[Role, ...], table: str, nullable: bool) -> dict[str, Any]:
    column: dict[str, Any] = {"type": ["string", "null"] if nullable else "string", "maxLength": 63}
    return {
        "type": "object",
        "additionalProperties": False,
        "description": f"Role -> column of the {table} table. A required role left out is the column of its "
        "own name; an optional one left out is the same-named column if the table has one (when checked), "
        "`null` leaves it unmapped.",
        "properties": {
            role.name: {
                **column,
                "description": f"{role.meaning} ({role.family}{', required' if role.required else ''})",
            }
            for role in roles
        },
    }


_SLUG = {"type": "string", "pattern": SLUG.pattern}
_TABLE = {
    "type": "string",
    "maxLength": 127,
    "description": "A table name, optionally schema-qualified (`analytics.events`).",
}
_URL_DESCRIPTION = (
    "A SQLAlchemy URL: `postgresql://`, `postgresql+psycopg://`, `duckdb:///path/file.duckdb`, "
    "`clickhousedb://user:password@host:8123/db` or `chdb:///path/folder`. Never shown back: responses carry "
    "it with the password masked (`***`); sending the masked URL back unchanged keeps the stored URL."
)
_DEFINITION_PROPERTIES: dict[str, Any] = {
    "key": {**_SLUG, "description": "Unique and immutable; experiments name it as `warehouse_source`."},
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
    "url": {"type": "string", "minLength": 1, "maxLength": service.MAX_URL, "description": _URL_DESCRIPTION},
    "events_table": _TABLE,
    "events_columns": _columns_schema(EVENT_ROLES, "events", True),
    "exposures_table": _TABLE,
    "exposures_columns": _columns_schema(EXPOSURE_ROLES, "exposures", True),
    "clock_skew_seconds": {
        "type": "number",
        "minimum": 0,
        "maximum": service.MAX_CLOCK_SKEW,
        "default": service.DEFAULT_CLOCK_SKEW,
        "description": "How far an event may be ahead of its exposure by the client's clock.",
    },
    "export_exposures": {
        "type": "boolean",
        "default": True,
        "description": "The platform copies each attached experiment's exposures into `exposures_table` before "
        "computing; `false`: that table is the warehouse's own exposure table.",
    },
}
_CHECK = {
    "type": "boolean",
    "default": True,
    "description": "Read the warehouse's catalog first and refuse a mapping it does not hold; `false` "
    "stores the source unchecked (its shape is still validated).",
}
_EXAMPLE = {
    "key": "analytics",
    "name": "Analytics warehouse",
    "url": "postgresql+psycopg://reader:secret@warehouse.internal/analytics",
    "events_table": "platform.events",
    "exposures_table": "platform.exposures",
    "events_columns": {"customer_id": "user_id"},
    "check": False,
}
_KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": _SLUG}
_STORED_PROPERTIES = {
    **_DEFINITION_PROPERTIES,
    "url": {"type": "string", "description": "The URL with its password masked (`***`)."},
    "dialect": {"type": "string", "enum": ["postgresql", "duckdb", "clickhouse"]},
    "experiments": {"type": "array", "items": _SLUG, "description": "The experiments reading from it."},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "notices": {"type": "array", "items": {"type": "string"}},
    "audit": {"type": "array", "items": _ref("WarehouseSourceAuditEntry"), "description": "Newest first; GET only."},
}


OPENAPI: dict[str, Any] = {
    "paths": {
        "/warehouse-sources": {
            "get": {
                "summary": "List warehouse sources, by key",
                "responses": {"200": _json(_ref("WarehouseSourceList"), "Every source"), **_errors(401, 403)},
            },
            "post": {
                "summary": "Define a warehouse source (checked against the warehouse first)",
                "requestBody": _request_body("WarehouseSourceDefinition", {"analytics": _EXAMPLE}),
                "responses": {
                    "201": {
                        **_json(_ref("WarehouseSource"), "Created; `Location` points at it"),
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 409, 422),
                },
            },
        },
        "/warehouse-sources/{key}": {
            "parameters": [_KEY_PARAM],
            "get": {
                "summary": "A warehouse source with its audit log",
                "responses": {"200": _json(_ref("WarehouseSource"), "The source"), **_errors(401, 403, 404)},
            },
            "patch": {
                "summary": "Change some fields of a warehouse source",
                "description": "Each field given replaces the stored one (a column mapping replaces the whole "
                "mapping); `url` left out or `null` keeps the stored URL. Checked against the warehouse unless "
                "`check` is false.",
                "requestBody": _request_body(
                    "WarehouseSourcePatch", {"rename": {"name": "Analytics (EU)", "check": False}}
                ),
                "responses": {
                    "200": _json(_ref("WarehouseSource"), "Updated"),
                    **_errors(400, 401, 403, 404, 409, 422),
                },
            },
            "delete": {
                "summary": "Delete a warehouse source no experiment reads from",
                "responses": {"204": {"description": "Deleted"}, **_errors(401, 403, 404, 409)},
            },
        },
        "/warehouse-sources/{key}/check": {
            "parameters": [_KEY_PARAM],
            "post": {
                "summary": "Check a stored source against its warehouse now",
                "description": "No body needed. The answer says what is missing or of the wrong type, or that "
                "the warehouse cannot be reached; nothing is changed.",
                "responses": {
                    "200": _json(_ref("WarehouseCheck"), "What the check found"),
                    **_errors(400, 401, 403, 404),
                },
            },
        },
        "/warehouse-sources/{key}/audit": {
            "parameters": [_KEY_PARAM],
            "get": {
                "summary": "Who changed the source and how, newest first",
                "responses": {
                    "200": _json(_ref("WarehouseSourceAuditLog"), "The audit log"),
                    **_errors(401, 403, 404),
                },
            },
        },
    },
    "schemas": {
        "WarehouseSourceDefinition": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", "name", "url", "events_table", "exposures_table"],
            "properties": {**_DEFINITION_PROPERTIES, "check": _CHECK},
        },
        "WarehouseSourcePatch": {
            "type": "object",
            "additionalProperties": False,
            "description": "`null` resets a field to its default (`url`: keeps the stored one); the key cannot change.",
            "properties": {
                **{
                    name: schema if name == "key" else {"anyOf": [schema, {"type": "null"}]}
                    for name, schema in _DEFINITION_PROPERTIES.items()
                },
                "check": _CHECK,
            },
        },
        "WarehouseSource": {
            "type": "object",
            "additionalProperties": False,
            "required": [*_DEFINITION_PROPERTIES, "dialect", "experiments", "created_at", "updated_at"],
            "properties": _STORED_PROPERTIES,
        },
        "WarehouseSourceList": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref("WarehouseSource")}},
        },
        "WarehouseCheck": {
            "type": "object",
            "required": ["ok", "message", "problems"],
            "properties": {
                "ok": {"type": "boolean"},
                "message": {"type": "string"},
                "problems": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Field (`events_table`, `events_columns.<role>`, `url`) -> what is wrong.",
                },
            },
        },
        "WarehouseSourceAuditEntry": {
            "type": "object",
            "required": ["at", "actor", "action", "source", "details"],
            "properties": {
                "at": {"type": "string", "format": "date-time"},
                "actor": {"type": "string", "description": "`user:<email>`, `key:<prefix>` or `cli`"},
                "action": {"type": "string", "enum": ["created", "updated", "deleted"]},
                "source": {"type": "string"},
                "details": {
                    "type": "object",
                    "description": "`created`/`deleted`: {values}; `updated`: {changes: {field: {from, to}}}; "
                    "the URL always masked.",
                },
            },
        },
        "WarehouseSourceAuditLog": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref("WarehouseSourceAuditEntry")}},
        },
    },
}
