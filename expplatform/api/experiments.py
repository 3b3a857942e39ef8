"""Experiment definitions over JSON: /api/v1/experiments.

Callers: an admin-scope key, or a logged-in user (viewer to read, editor to change).
Session-authenticated changes must be sent as ``application/json``: a cross-site
HTML form cannot send that content type, which (with SameSite=Lax cookies) keeps
this CSRF-exempt blueprint safe for cookie sessions.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from flask import request, url_for

from analysis.types import DecisionRule, Prior

from .. import experiments as service
from ..auth import api_access, current_principal
from ..db import get_db, get_session
from ..definitions import (
    DEFAULT_STAGES,
    MAX_STAGES,
    MAX_VARIANTS,
    MIN_VARIANTS,
    OPERATORS,
    SLUG,
    parse_definition,
)
from ..errors import InvalidInput, MalformedRequest
from . import bp, schemas
from .bodies import json_object

MAX_PER_PAGE = 200
read_access = api_access(scope="admin", session_role="viewer")
write_access = api_access(scope="admin", session_role="editor")


def _actor() -> str:
    principal = current_principal()
    assert principal is not None  # guaranteed by api_access
    return principal.actor


MAX_PAGE_ARG = 1_000_000  # far past any real list; an offset beyond it would overflow the database's integers


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= len(str(MAX_PAGE_ARG))) or not (
        1 <= int(raw) <= MAX_PAGE_ARG
    ):
        raise MalformedRequest(fields={name: f"must be a whole number from 1 to {MAX_PAGE_ARG}"})
    return int(raw)


@bp.get("/experiments")
@read_access
def list_experiments():
    statuses = request.args.getlist("status")
    stage = request.args.get("stage")
    bad = {"status": f"must be one of {', '.join(service.STATUSES)}"} if set(statuses) - set(service.STATUSES) else {}
    if stage is not None and not SLUG.fullmatch(stage):
        bad["stage"] = "must be a stage slug"
    if bad:
        raise MalformedRequest(fields=bad)
    page = service.list_experiments(
        get_session(),
        statuses=statuses,
        stage=stage,
        page=_int_arg("page", 1),
        per_page=min(_int_arg("per_page", 50), MAX_PER_PAGE),
    )
    return schemas.experiment_page(page)


@bp.post("/experiments")
@write_access
def create_experiment():
    definition = parse_definition(json_object())
    with get_db().write() as session:
        saved = service.create_experiment(session, definition, _actor())
        body = schemas.experiment(saved.experiment, notices=saved.notices)
    return body, 201, {"Location": url_for("api.get_experiment", key=definition.key)}


@bp.get("/experiments/<key>")
@read_access
def get_experiment(key: str):
    session = get_session()
    experiment = service.get_experiment(session, key)
    return schemas.experiment(experiment, audit=service.audit_log(session, experiment))


@bp.patch("/experiments/<key>")
@write_access
def update_experiment(key: str):
    changes = json_object()
    with get_db().write() as session:
        saved = service.patch_experiment(session, key, changes, _actor())
        return schemas.experiment(saved.experiment, notices=saved.notices)


def _lifecycle(key: str, action: service.Action):
    json_object(optional=True)
    with get_db().write() as session:
        return schemas.experiment(service.change_status(session, key, action, _actor()))


@bp.post("/experiments/<key>/start")
@write_access
def start_experiment(key: str):
    return _lifecycle(key, "start")


@bp.post("/experiments/<key>/pause")
@write_access
def pause_experiment(key: str):
    return _lifecycle(key, "pause")


@bp.post("/experiments/<key>/resume")
@write_access
def resume_experiment(key: str):
    return _lifecycle(key, "resume")


@bp.post("/experiments/<key>/stop")
@write_access
def stop_experiment(key: str):
    return _lifecycle(key, "stop")


@bp.post("/experiments/<key>/clone")
@write_access
def clone_experiment(key: str):
    body = json_object(optional=True)
    unknown = {name: "unknown field" for name in body if name != "key"}
    if unknown:
        raise InvalidInput(unknown)
    new_key = body.get("key")
    if new_key is not None and not isinstance(new_key, str):
        raise InvalidInput({"key": "must be a slug"})
    with get_db().write() as session:
        saved = service.clone_experiment(session, key, _actor(), new_key=new_key)
        body = schemas.experiment(saved.experiment)
    return body, 201, {"Location": url_for("api.get_experiment", key=saved.experiment.key)}


@bp.get("/experiments/<key>/audit")
@read_access
def experiment_audit(key: str):
    session = get_session()
    experiment = service.get_experiment(session, key)
    return {"items": [schemas.audit_entry(entry) for entry in service.audit_log(session, experiment)]}


# -- OpenAPI ---------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _request_body(schema: str, examples: dict[str, Any]) -> dict[str, Any]:
    """A required JSON body of the named schema, with named examples."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref(schema),
                "examples": {name: {"value": value} for name, value in examples.items()},
            }
        },
    }


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request: not JSON, not an object, wrong content type or bad query parameter",
        401: "No credentials, or an unknown key",
        403: "A client-scope key, or a user whose role is too low",
        404: "No experiment with that key (`experiment_not_found`)",
        409: "Conflicts with the experiment's state: `duplicate_key`, `key_immutable`, `frozen_field`, "
        "`traffic_lowered`, `experiment_stopped`, `invalid_transition`, `layer_full`",
        422: "Invalid definition (`validation_failed`); `fields` names each bad field by dotted path",
    }
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


def _settings_schema(cls: type, about: str) -> dict[str, Any]:
    """Documented from the analysis settings dataclass itself, so defaults cannot drift."""
    properties = {}
    for setting in fields(cls):
        kind = "integer" if setting.type in (int, "int") else "number"
        properties[setting.name] = {"type": kind, "default": setting.default}
    return {"type": "object", "description": about, "additionalProperties": False, "properties": properties}


_SLUG = {"type": "string", "pattern": SLUG.pattern}
_SCALAR = {"type": ["string", "number", "boolean"]}
_DEFINITION_PROPERTIES: dict[str, Any] = {
    "key": {**_SLUG, "description": "Unique and immutable; also the hashing salt."},
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "hypothesis": {"type": "string", "default": ""},
    "journey": {
        **_SLUG,
        "description": "The journey the experiment belongs to. Without one, `stages` and `satisfaction_scale` "
        "name an implicit journey (the journey with exactly those stages, made if missing); responses always "
        "carry it.",
    },
    "stages": {
        "type": "array",
        "items": _SLUG,
        "minItems": 1,
        "maxItems": MAX_STAGES,
        "uniqueItems": True,
        "description": "The journey's stages measured, stored in journey order; default: all of them "
        f"(without a journey: {', '.join(DEFAULT_STAGES)}).",
    },
    "metrics": {
        "type": "array",
        "items": _SLUG,
        "maxItems": MAX_STAGES * 5,
        "uniqueItems": True,
        "description": "The journey's rating questions measured, at most one per measured stage; default: the "
        "first question of each measured stage; `[]`: none (conversion only). Needs `journey`.",
    },
    "target_stage": {**_SLUG, "description": "The stage whose variants are tested; one of `stages`."},
    "variants": {"type": "array", "items": _ref("Variant"), "minItems": MIN_VARIANTS, "maxItems": MAX_VARIANTS},
    "traffic": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
    "targeting": {"type": "array", "items": _ref("TargetingRule"), "default": []},
    "satisfaction_scale": {
        **_ref("SatisfactionScale"),
        "description": "Only without `journey`: the scale of the implicit journey's questions (default 1-5).",
    },
    "layer": {"type": ["string", "null"], "pattern": SLUG.pattern, "description": "Mutual-exclusion layer."},
    "layer_share": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "maximum": 1,
        "description": "Share of the layer's hash space; required with `layer`.",
    },
    "decision": _ref("DecisionSettings"),
    "prior": _ref("PriorSettings"),
    "forced_variants": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "QA overrides: customer id -> variant key (served, marked, excluded from analysis).",
    },
    "warehouse_source": {
        "type": ["string", "null"],
        "pattern": SLUG.pattern,
        "description": "The key of the warehouse source holding the experiment's events "
        "(`/warehouse-sources`); `null`: the built-in events.",
    },
}
_EXAMPLE = {
    "key": "checkout-button",
    "name": "Green checkout button",
    "hypothesis": "A green button makes more visitors buy.",
    "target_stage": "purchase",
    "variants": [
        {"key": "control", "description": "Grey button", "weight": 1},
        {"key": "green", "description": "Green button", "weight": 1},
    ],
    "traffic": 0.5,
    "targeting": [{"attribute": "platform", "op": "in", "value": ["web", "ios"]}],
}
_STATE_PROPERTIES: dict[str, Any] = {
    "status": {"type": "string", "enum": list(service.STATUSES)},
    "salt": {"type": "string"},
    "layer_ranges": {
        "type": ["array", "null"],
        "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "description": "Buckets [start, end) of the layer given when the experiment started.",
    },
    "cloned_from": {"type": ["string", "null"]},
    "simulated": {
        "type": "boolean",
        "description": "Its exposures and events were written by `expplatform simulate`, not by real customers.",
    },
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "started_at": {"type": ["string", "null"], "format": "date-time"},
    "stopped_at": {"type": ["string", "null"], "format": "date-time"},
    "notices": {"type": "array", "items": {"type": "string"}, "description": "What was adjusted or should be known."},
    "audit": {"type": "array", "items": _ref("AuditEntry"), "description": "Newest first; on GET only."},
}
_KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": _SLUG}
_ACTIONS = {
    "start": "Start a draft (gives it buckets of its layer, if any)",
    "pause": "Pause a running experiment (customers get the control experience)",
    "resume": "Resume a paused experiment",
    "stop": "Stop a running or paused experiment (read-only afterwards; frees its layer buckets)",
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/experiments": {
            "get": {
                "summary": "List experiments, newest first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "style": "form",
                        "explode": True,
                        "schema": {"type": "array", "items": {"type": "string", "enum": list(service.STATUSES)}},
                    },
                    {"name": "stage", "in": "query", "description": "Target stage", "schema": _SLUG},
                    {
                        "name": "page",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_ARG, "default": 1},
                    },
                    {
                        "name": "per_page",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "default": 50},
                        "description": f"Clamped to {MAX_PER_PAGE}.",
                    },
                ],
                "responses": {"200": _json(_ref("ExperimentPage"), "One page"), **_errors(400, 401, 403)},
            },
            "post": {
                "summary": "Create a draft experiment",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("ExperimentDefinition"),
                            "examples": {"checkout": {"value": _EXAMPLE}},
                        }
                    },
                },
                "responses": {
                    "201": {
                        **_json(_ref("Experiment"), "Created; `Location` points at it"),
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 409, 422),
                },
            },
        },
        "/experiments/{key}": {
            "parameters": [_KEY_PARAM],
            "get": {
                "summary": "An experiment with its audit log",
                "responses": {"200": _json(_ref("Experiment"), "The experiment"), **_errors(401, 403, 404)},
            },
            "patch": {
                "summary": "Change an experiment (as far as its status allows)",
                "description": "Each top-level field given replaces the stored one; `null` resets it to its "
                "default. Once started, variants, weights, journey, measured stages and questions, target stage "
                "and layer are frozen and traffic may only rise. A stopped experiment is read-only.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("ExperimentPatch"),
                            "examples": {"raise-traffic": {"value": {"traffic": 0.8}}},
                        }
                    },
                },
                "responses": {"200": _json(_ref("Experiment"), "Updated"), **_errors(400, 401, 403, 404, 409, 422)},
            },
        },
        **{
            f"/experiments/{{key}}/{action}": {
                "parameters": [_KEY_PARAM],
                "post": {
                    "summary": summary,
                    "description": "No body needed (an empty JSON object is accepted).",
                    "responses": {
                        "200": _json(_ref("Experiment"), "The experiment in its new status"),
                        **_errors(400, 401, 403, 404, 409),
                    },
                },
            }
            for action, summary in _ACTIONS.items()
        },
        "/experiments/{key}/clone": {
            "parameters": [_KEY_PARAM],
            "post": {
                "summary": "Clone as the next iteration: a new draft with the same definition",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": _ref("CloneRequest"),
                            "examples": {"named": {"value": {"key": "checkout-button-2025"}}},
                        }
                    },
                },
                "responses": {
                    "201": {
                        **_json(_ref("Experiment"), "The new draft"),
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 404, 409, 422),
                },
            },
        },
        "/experiments/{key}/audit": {
            "parameters": [_KEY_PARAM],
            "get": {
                "summary": "Who did what to the experiment, newest first",
                "responses": {"200": _json(_ref("AuditLog"), "The audit log"), **_errors(401, 403, 404)},
            },
        },
    },
    "schemas": {
        "Variant": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key"],
            "properties": {
                "key": _SLUG,
                "description": {"type": "string", "default": ""},
                "weight": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "default": 1,
                    "description": "Any positive number; weights are normalised to sum to 1 on save.",
                },
                "control": {"type": "boolean", "default": False, "description": "At most one; default the first."},
            },
        },
        "TargetingRule": {
            "type": "object",
            "additionalProperties": False,
            "required": ["attribute", "op", "value"],
            "properties": {
                "attribute": {"type": "string", "minLength": 1, "maxLength": 64},
                "op": {"type": "string", "enum": list(OPERATORS)},
                "value": {"oneOf": [_SCALAR, {"type": "array", "items": _SCALAR, "minItems": 1}]},
            },
        },
        "SatisfactionScale": {
            "type": "object",
            "additionalProperties": False,
            "required": ["min", "max"],
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
            "description": "Integer rating scale; max is 1 to 10 above min. Default 1..5.",
        },
        "DecisionSettings": _settings_schema(DecisionRule, "When a stage's result says ship or harmful."),
        "PriorSettings": _settings_schema(Prior, "Priors of the conjugate models."),
        "ExperimentDefinition": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", "name", "target_stage", "variants"],
            "properties": _DEFINITION_PROPERTIES,
        },
        "ExperimentPatch": {
            "type": "object",
            "additionalProperties": False,
            "description": "`null` resets a field to its default; the key cannot change.",
            "properties": {
                name: schema if name == "key" else {"anyOf": [schema, {"type": "null"}]}
                for name, schema in _DEFINITION_PROPERTIES.items()
            },
        },
        "Experiment": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                *(name for name in _DEFINITION_PROPERTIES if name != "satisfaction_scale"),
                "status",
                "salt",
                "layer_ranges",
                "cloned_from",
                "simulated",
                "created_at",
                "updated_at",
                "started_at",
                "stopped_at",
            ],
            "properties": {
                **_DEFINITION_PROPERTIES,
                "variants": {"type": "array", "items": _ref("StoredVariant")},
                **_STATE_PROPERTIES,
            },
        },
        "StoredVariant": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", "description", "weight", "control"],
            "properties": {
                "key": _SLUG,
                "description": {"type": "string"},
                "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "control": {"type": "boolean"},
            },
        },
        "ExperimentPage": {
            "type": "object",
            "required": ["items", "page", "per_page", "total"],
            "properties": {
                "items": {"type": "array", "items": _ref("Experiment")},
                "page": {"type": "integer"},
                "per_page": {"type": "integer"},
                "total": {"type": "integer"},
            },
        },
        "AuditEntry": {
            "type": "object",
            "required": ["at", "actor", "action", "experiment", "details"],
            "properties": {
                "at": {"type": "string", "format": "date-time"},
                "actor": {"type": "string", "description": "`user:<email>`, `key:<prefix>` or `cli`"},
                "action": {
                    "type": "string",
                    "enum": ["created", "updated", "started", "paused", "resumed", "stopped", "cloned"],
                },
                "experiment": {"type": "string"},
                "details": {"type": "object", "description": "`updated`: {changes: {field: {from, to}}}"},
            },
        },
        "AuditLog": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref("AuditEntry")}},
        },
        "CloneRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"key": {**_SLUG, "description": "Default: `<key>-vN`, one past the latest iteration."}},
        },
    },
}
