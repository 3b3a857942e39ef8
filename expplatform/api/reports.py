"""Lift reports over JSON and CSV, and full-model fits: /api/v1/experiments/<key>/...

Reading needs an admin-scope key or a logged-in viewer; queueing a fit an admin key
or an editor, whose session requests must be ``application/json`` (a cross-site
HTML form cannot send that, see ``api/experiments.py``).
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request, url_for

from .. import experiments as experiments_service
from ..aggregation import experiment_stats
from ..auth import api_access, current_principal
from ..db import get_db, get_session
from ..errors import Conflict, NotFound
from ..job_records import get_job, recent_jobs
from ..jobs import FitParams, get_runner
from ..reports.build import Report, build_report
from ..reports.decisions import check_full_model
from ..reports.options import ReportOptions
from ..reports.render import CSV_COLUMNS, job_dict, report_dict, to_csv
from ..reports.views import report_rows
from ..warehouse.freshness import freshness
from ..warehouse.refresh import request_cancel, request_refresh
from . import bp
from .bodies import json_object

read_access = api_access(scope="admin", session_role="viewer")
fit_access = api_access(scope="admin", session_role="editor")

MAX_JOB_ID = 2**31 - 1  # analysis_jobs.id is an INTEGER


def _report(key: str) -> Report:
    options = ReportOptions.parse(request.args)
    session = get_session()
    return build_report(session, experiments_service.get_experiment(session, key), options)


@bp.get("/experiments/<key>/report")
@read_access
def get_report(key: str):
    return report_dict(_report(key))


@bp.get("/experiments/<key>/report.csv")
@read_access
def get_report_csv(key: str):
    text = to_csv(report_rows(_report(key)))
    return Response(
        text, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{key}-report.csv"'}
    )


@bp.post("/experiments/<key>/full-model")
@fit_access
def queue_full_model(key: str):
    params = FitParams.parse(json_object(optional=True), current_app.extensions["settings"])
    session = get_session()
    check_full_model(experiment_stats(session, experiments_service.get_experiment(session, key)))
    principal = current_principal()
    job, created = get_runner(current_app).queue(key, principal.actor, params)  # type: ignore[union-attr]
    location = url_for("api.get_full_model_job", key=key, job_id=job.id)
    return job_dict(job), 202 if created else 200, {"Location": location}


@bp.get("/experiments/<key>/full-model")
@read_access
def list_full_model_jobs(key: str):
    session = get_session()
    experiment = experiments_service.get_experiment(session, key)
    return {"jobs": [job_dict(job) for job in recent_jobs(get_db(), session, experiment, limit=10)]}


# Ids past the column's INTEGER are no job of ours: the route itself answers 404.
@bp.get(f"/experiments/<key>/full-model/<int(max={MAX_JOB_ID}):job_id>")
@read_access
def get_full_model_job(key: str, job_id: int):
    session = get_session()
    experiment = experiments_service.get_experiment(session, key)
    recent_jobs(get_db(), session, experiment, limit=1)  # marks a dead worker's job failed first
    job = get_job(session, experiment, job_id)
    if job is None:
        raise NotFound(f"No full-model job {job_id} for experiment {key!r}.", code="job_not_found")
    return job_dict(job)


def _warehouse_experiment(key: str):
    session = get_session()
    experiment = experiments_service.get_experiment(session, key)
    if experiment.warehouse_source_id is None:
        raise Conflict("no_warehouse_source", f"Experiment {key!r} reads the built-in events, not a warehouse.")
    return session, experiment


@bp.post("/experiments/<key>/warehouse/refresh")
@fit_access
def refresh_warehouse_statistics(key: str):
    json_object(optional=True)
    session, experiment = _warehouse_experiment(key)
    request_refresh(session, experiment)
    session.commit()
    found = freshness(session, experiment)
    assert found is not None
    return found.to_dict(), 202


@bp.post("/experiments/<key>/warehouse/cancel")
@fit_access
def cancel_warehouse_refresh(key: str):
    json_object(optional=True)
    session, experiment = _warehouse_experiment(key)
    if not request_cancel(session, experiment):
        raise Conflict("not_running", f"No warehouse refresh of {key!r} is running.")
    session.commit()
    found = freshness(session, experiment)
    assert found is not None
    return found.to_dict(), 202


# -- OpenAPI -------------------------------------------------------------------------------

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
_NUMBER = {"type": ["number", "null"]}
_ESTIMATE = {"oneOf": [{"$ref": "#/components/schemas/Estimate"}, {"type": "null"}]}
_SCALE = {
    "type": "object",
    "required": ["min", "max"],
    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
}
_QUESTION = {
    "description": (
        "The rating question the experiment measures at this stage (its key, text and scale), or null where it "
        "measures none: the stage then has conversion only. In reports (live and segments), not in stored fits."
    ),
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["key", "text", "scale"],
            "properties": {"key": {"type": "string"}, "text": {"type": "string"}, "scale": _SCALE},
        },
    ],
}
_READ_ERRORS = {
    "401": {"description": "No credentials", **_ERROR},
    "403": {"description": "Not an admin key or a viewer", **_ERROR},
    "404": {"description": "No such experiment (experiment_not_found)", **_ERROR},
}
_OPTIONS = [
    _KEY,
    {
        "name": "segment",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": "Break the report down by this exposure attribute (persona, platform, country...). For "
        "an experiment whose outcomes live in a warehouse, the segments are those of its last full recomputation "
        "(warehouse.segments_at), and a 400 says why when there are none.",
    },
    {
        "name": "credible_level",
        "in": "query",
        "schema": {"type": "number", "minimum": 0.5, "maximum": 0.999},
        "description": "Width of every credible interval (default: the experiment's, usually 0.95).",
    },
    {
        "name": "full_model",
        "in": "query",
        "schema": {"type": "boolean", "default": True},
        "description": "Include the latest full-model job and its results.",
    },
]
_DECISION = {
    "type": "object",
    "description": (
        "The call and what it rests on: the headline's words come from the decision, with the anytime-valid "
        "interval it rests on; per treatment at the stage under test, the decision, its reason, and whether there "
        "is data; each stage's role (only the stage under test decides) and which variants have outcome data "
        "(a conversion or a rating) at each stage."
    ),
    "required": ["headline", "action", "variant", "interval", "stage", "treatments", "stage_roles", "outcome_data"],
    "properties": {
        "headline": {"type": "string"},
        "action": {"enum": ["ship", "keep_control", "keep_running", "not_enough_data", "investigate"]},
        "variant": {"type": ["string", "null"]},
        "interval": _ESTIMATE,
        "interval_level": _NUMBER,
        "interval_scale": {"type": ["string", "null"]},
        "stage": {"type": "string"},
        "metric": {"const": "conversion"},
        "treatments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["treatment", "has_data", "decision", "decision_basis", "rests_on"],
                "properties": {
                    "treatment": {"type": "string"},
                    "has_data": {"type": "boolean"},
                    "decision": {"enum": ["ship", "harmful", "keep_running", "not_enough_data", None]},
                    "decision_basis": {"type": ["string", "null"]},
                    "rests_on": {"type": "string"},
                    "always_valid_interval": _ESTIMATE,
                    "always_valid_level": _NUMBER,
                    "always_valid_scale": {"type": ["string", "null"]},
                },
            },
        },
        "stage_roles": {
            "type": "object",
            "additionalProperties": {"enum": ["balance_check", "decides", "guardrail"]},
        },
        "outcome_data": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
}
_FORECAST = {
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "description": (
                "A running experiment's 'about N more days at the current rate' per treatment, from the customers "
                "exposed per arm per day since the start and the current estimate at the stage under test."
            ),
            "required": ["per_arm_per_day", "per_day", "measured_over_days", "treatments"],
            "properties": {
                "per_arm_per_day": {"type": "number"},
                "per_day": {"type": "number"},
                "measured_over_days": {"type": "number"},
                "treatments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["treatment", "more_days", "p_decision_by_then", "decided_now"],
                        "properties": {
                            "treatment": {"type": "string"},
                            "more_days": {"type": ["integer", "null"]},
                            "p_decision_by_then": {"type": "number"},
                            "p_ship_by_then": {"type": "number"},
                            "p_harmful_by_then": {"type": "number"},
                            "horizon_days": {"type": "integer"},
                            "assumed_lift": _NUMBER,
                            "decided_now": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    ]
}
_WHEN = {"type": ["string", "null"], "format": "date-time"}
_FRESHNESS = {
    "type": "object",
    "required": ["source", "source_name", "engine", "state", "computed_at", "seconds", "error"],
    "properties": {
        "source": {"type": "string", "description": "The warehouse source's key."},
        "source_name": {"type": "string"},
        "engine": {"type": "string", "enum": ["PostgreSQL", "DuckDB", "ClickHouse", "unknown"]},
        "state": {
            "type": "string",
            "enum": ["never", "fresh", "failed", "requested", "running"],
            "description": "failed: the last refresh failed (error says why); the statistics shown are those of "
            "computed_at, if any.",
        },
        "computed_at": _WHEN,
        "full_at": {
            **_WHEN,
            "description": "The last full recomputation; refreshes since then added what changed.",
        },
        "seconds": {"type": ["number", "null"], "description": "How long the last computation took."},
        "error": {"type": ["string", "null"]},
        "failed_at": _WHEN,
        "requested_at": _WHEN,
        "running_since": _WHEN,
        "segments_at": {
            **_WHEN,
            "description": "The full recomputation the segments are from (they are computed at full "
            "recomputations only); null: none computed yet.",
        },
        "attributes_mapped": {
            "type": "boolean",
            "description": "Whether the source maps an attributes column of its exposures; without one, no segments.",
        },
    },
}
_WAREHOUSE_ACTION: dict[str, Any] = {
    "parameters": [_KEY],
    "responses": {
        "202": {
            "description": "Asked for; the fit worker does it",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WarehouseFreshness"}}},
        },
        "400": {"description": "A body that is not a JSON object", **_ERROR},
        "401": _READ_ERRORS["401"],
        "403": {"description": "Not an admin key or an editor", **_ERROR},
        "404": _READ_ERRORS["404"],
    },
}
_JOB = {
    "type": "object",
    "required": ["id", "status", "requested_by", "params", "created_at", "progress"],
    "properties": {
        "id": {"type": "integer"},
        "status": {"type": "string", "enum": ["queued", "running", "finished", "failed"]},
        "requested_by": {"type": "string"},
        "params": {
            "type": "object",
            "properties": {k: {"type": "integer"} for k in ("draws", "tune", "chains", "seed")},
        },
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "heartbeat_at": {"type": ["string", "null"], "format": "date-time"},
        "error": {"type": ["string", "null"]},
        "snapshot": {
            "description": "The data the fit saw: when, and the counts.",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["taken_at", "exposed", "converted", "rated"],
                    "properties": {
                        "taken_at": {"type": "string", "format": "date-time"},
                        "exposed": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "converted": {"type": "object"},
                        "rated": {"type": "object"},
                        "scales": {
                            "type": "object",
                            "description": "Per stage, its rating scale; null: no rating question there.",
                            "additionalProperties": {"oneOf": [{"type": "null"}, _SCALE]},
                        },
                        "questions": {
                            "type": "object",
                            "description": "Per stage, the key of the rating question measured there, or null.",
                            "additionalProperties": {"type": ["string", "null"]},
                        },
                    },
                },
            ],
        },
        "result": {
            "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/AnalysisResult"}],
            "description": "The full model's result, in the same shape as the conjugate one.",
        },
        "progress": {
            "description": (
                "How far the sampler is, written by the worker at most twice a second; null while the job is "
                "queued. Poll this job until `status` is `finished` or `failed`."
            ),
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["draws_done", "draws_total", "elapsed_seconds", "eta_seconds"],
                    "properties": {
                        "draws_done": {
                            "type": "integer",
                            "description": "Sampler iterations done, tuning included, over every chain (0: the "
                            "model is being built and compiled).",
                        },
                        "draws_total": {"type": "integer", "description": "chains * (tune + draws)."},
                        "elapsed_seconds": {
                            "type": "number",
                            "description": "Since a worker took the job (until it ended, once it has).",
                        },
                        "eta_seconds": {
                            "type": ["number", "null"],
                            "description": "Seconds left at the rate sampled so far; null before sampling began "
                            "and once the job has ended.",
                        },
                    },
                },
            ],
        },
    },
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/experiments/{key}/report": {
            "get": {
                "summary": "The lift report of an experiment",
                "description": (
                    "Per stage x variant x metric (conversion; where the experiment measures a rating question at "
                    "the stage, the mean rating, top-box share, and NPS on 0-10 questions, on that question's scale; "
                    "each stage names its question): "
                    "posterior, relative lift and absolute difference against the control with credible intervals, "
                    "P(better), P(best), expected loss, decision; the journey; the sample-ratio check; the "
                    "recommendation; warnings; the daily series of the target stage's conversion; optionally a "
                    "segment breakdown and the latest full-model fit. The daily series and segments of large "
                    "experiments are computed in the background: their status is then 'computing' until ready."
                ),
                "parameters": _OPTIONS,
                "responses": {
                    "200": {
                        "description": "The report",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Report"}}},
                    },
                    "400": {"description": "A bad option (validation_failed, with fields)", **_ERROR},
                    **_READ_ERRORS,
                },
            }
        },
        "/experiments/{key}/report.csv": {
            "get": {
                "summary": "The report as CSV: one row per stage x variant x metric",
                "description": (
                    "Columns: "
                    + ", ".join(CSV_COLUMNS)
                    + ". A stage has conversion rows, and rating rows (mean_rating, top_box, nps on 0-10) only where "
                    "the experiment measures a rating question there; a rating row names its question (question, "
                    "question_text) and scale (scale_min, scale_max). credible_level is the level of the posterior "
                    "and lift intervals. With `segment`, each segment's rows follow."
                ),
                "parameters": _OPTIONS[:3],
                "responses": {
                    "200": {
                        "description": "CSV with a header row",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "400": {"description": "A bad option", **_ERROR},
                    **_READ_ERRORS,
                },
            }
        },
        "/experiments/{key}/warehouse/refresh": {
            "post": {
                "summary": "Recompute a warehouse experiment's statistics soon",
                "description": "The fit worker runs the statistics query in the experiment's warehouse and stores "
                "the result; the report then says when. Asking again while one is asked for changes nothing.",
                **_WAREHOUSE_ACTION,
                "responses": {
                    **_WAREHOUSE_ACTION["responses"],
                    "409": {"description": "The experiment reads the built-in events (no_warehouse_source)", **_ERROR},
                },
            }
        },
        "/experiments/{key}/warehouse/cancel": {
            "post": {
                "summary": "Cancel a running warehouse refresh",
                "description": "The running query is interrupted; the earlier statistics stay.",
                **_WAREHOUSE_ACTION,
                "responses": {
                    **_WAREHOUSE_ACTION["responses"],
                    "409": {
                        "description": "No warehouse source (no_warehouse_source), or no refresh running (not_running)",
                        **_ERROR,
                    },
                },
            }
        },
        "/experiments/{key}/full-model": {
            "post": {
                "summary": "Queue a full-model (PyMC) fit",
                "description": (
                    "Runs outside the request, one fit at a time per worker. While the experiment has a queued or "
                    "running fit, that job is returned (200) instead of a new one. A fit whose worker dies is marked "
                    "failed; queue another to run it again. Session callers must send application/json."
                ),
                "parameters": [_KEY],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "draws": {"type": "integer", "minimum": 100, "maximum": 10000},
                                    "tune": {"type": "integer", "minimum": 100, "maximum": 10000},
                                    "chains": {"type": "integer", "minimum": 1, "maximum": 8},
                                    "seed": {"type": "integer", "minimum": 0},
                                },
                            },
                            "example": {"draws": 1000, "chains": 4},
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "Queued",
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FullModelJob"}}},
                    },
                    "200": {
                        "description": "A fit is already queued or running: that job",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FullModelJob"}}},
                    },
                    "400": {"description": "Bad options or body", **_ERROR},
                    "409": {
                        "description": "No variant has any outcome data yet (no_data): a fit would repeat its prior",
                        **_ERROR,
                    },
                    "401": _READ_ERRORS["401"],
                    "403": {"description": "Not an admin key or an editor", **_ERROR},
                    "404": _READ_ERRORS["404"],
                },
            },
            "get": {
                "summary": "The experiment's latest full-model jobs, newest first",
                "parameters": [_KEY],
                "responses": {
                    "200": {
                        "description": "Jobs",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["jobs"],
                                    "properties": {
                                        "jobs": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/FullModelJob"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    **_READ_ERRORS,
                },
            },
        },
        "/experiments/{key}/full-model/{job_id}": {
            "get": {
                "summary": "One full-model job: status, and when finished its result and data snapshot",
                "parameters": [
                    _KEY,
                    {
                        "name": "job_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_JOB_ID},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The job",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FullModelJob"}}},
                    },
                    **_READ_ERRORS,
                },
            }
        },
    },
    "schemas": {
        "Estimate": {
            "type": "object",
            "required": ["mean", "low", "high"],
            "properties": {"mean": _NUMBER, "low": _NUMBER, "high": _NUMBER},
            "description": "Posterior mean and equal-tailed credible interval.",
        },
        "Arm": {
            "type": "object",
            "required": ["variant", "n", "observed", "posterior", "p_best", "expected_loss", "expected_loss_relative"],
            "properties": {
                "variant": {"type": "string"},
                "n": {"type": "integer", "minimum": 0},
                "observed": _NUMBER,
                "posterior": _ESTIMATE,
                "p_best": _NUMBER,
                "expected_loss": _NUMBER,
                "expected_loss_relative": _NUMBER,
                "conjugate_params": {"type": ["array", "null"], "items": {"type": "number"}},
            },
        },
        "Comparison": {
            "type": "object",
            "required": [
                "treatment",
                "status",
                "relative_lift",
                "absolute_difference",
                "p_better",
                "expected_loss",
                "decision",
            ],
            "properties": {
                "treatment": {"type": "string"},
                "status": {"type": "string"},
                "relative_lift": _ESTIMATE,
                "absolute_difference": _ESTIMATE,
                "p_better": _NUMBER,
                "p_better_error": _NUMBER,
                "expected_loss": _NUMBER,
                "expected_loss_relative": _NUMBER,
                "decision": {"enum": ["ship", "harmful", "keep_running", "not_enough_data", None]},
                "has_data": {
                    "type": "boolean",
                    "description": "False when an arm has no exposed customers or no ratings: no numbers, no decision.",
                },
                "always_valid_interval": {
                    **_ESTIMATE,
                    "description": "Anytime-valid interval of the effect (its ends hold at every look at once).",
                },
                "always_valid_scale": {"enum": ["relative_lift", "absolute_difference", None]},
                "always_valid_level": _NUMBER,
                "decision_basis": {"type": ["string", "null"], "description": "Why the decision is what it is."},
            },
        },
        "AnalysisResult": {
            "type": "object",
            "required": [
                "method",
                "status",
                "control",
                "target_stage",
                "credible_level",
                "stages",
                "journey",
                "sample_ratio",
                "recommendation",
                "notes",
            ],
            "properties": {
                "method": {"enum": ["conjugate", "hierarchical"]},
                "status": {"type": "string"},
                "control": {"type": "string"},
                "target_stage": {"type": "string"},
                "credible_level": {"type": "number"},
                "draws": {"type": "integer"},
                "stages": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["stage", "metrics"],
                        "properties": {
                            "stage": {"type": "string"},
                            "scale": {
                                "description": "The stage's rating scale; null: no rating question, conversion only.",
                                "oneOf": [{"type": "null"}, _SCALE],
                            },
                            "question": _QUESTION,
                            "metrics": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["stage", "metric", "status", "arms", "comparisons"],
                                    "properties": {
                                        "stage": {"type": "string"},
                                        "metric": {"enum": ["conversion", "mean_rating", "top_box", "nps"]},
                                        "status": {"type": "string"},
                                        "arms": {"type": "array", "items": {"$ref": "#/components/schemas/Arm"}},
                                        "comparisons": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Comparison"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "journey": {"type": "object", "description": "End-to-end conversion, funnel steps and pain points."},
                "sample_ratio": {
                    "type": "object",
                    "required": ["observed", "expected", "p_value", "flagged"],
                    "properties": {
                        "observed": {"type": "array", "items": {"type": "integer"}},
                        "expected": {"type": "array", "items": {"type": "number"}},
                        "p_value": _NUMBER,
                        "flagged": {"type": "boolean"},
                    },
                },
                "recommendation": {
                    "type": ["object", "null"],
                    "description": "Null in a segment's result: a segment breakdown makes no call of its own.",
                    "required": ["action", "variant", "summary", "reasons"],
                    "properties": {
                        "action": {"enum": ["ship", "keep_control", "keep_running", "not_enough_data", "investigate"]},
                        "variant": {"type": ["string", "null"]},
                        "summary": {"type": "string"},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                        "guardrails": {"type": "array"},
                    },
                },
                "notes": {"type": "array", "items": {"type": "object", "required": ["code", "message"]}},
                "diagnostics": {
                    "type": ["object", "null"],
                    "description": "Full model only: R-hat, ESS, divergences, sampler, timings.",
                },
            },
        },
        "FullModelJob": _JOB,
        "WarehouseFreshness": _FRESHNESS,
        "Report": {
            "type": "object",
            "required": [
                "experiment",
                "generated_at",
                "settings",
                "warnings",
                "data_quality",
                "exposed",
                "result",
                "time_series",
                "segments",
                "recorded_attributes",
                "full_model",
                "warehouse",
                "decision",
                "forecast",
            ],
            "properties": {
                "experiment": {
                    "type": "object",
                    "required": ["key", "name", "status", "stages", "target_stage", "control", "variants"],
                    "properties": {
                        "journey": {"type": "string", "description": "The key of the journey it belongs to."},
                        "stages": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "generated_at": {"type": "string", "format": "date-time"},
                "settings": {"type": "object", "required": ["prior", "decision", "seed"]},
                "warnings": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {
                                "enum": [
                                    "sample_ratio_mismatch",
                                    "multiple_exposures",
                                    "unmatched_events",
                                    "events_before_exposure",
                                    "events_after_stop",
                                    "forced_customers_excluded",
                                    "not_enough_data",
                                ]
                            },
                            "message": {"type": "string"},
                        },
                    },
                },
                "data_quality": {
                    "type": "object",
                    "required": ["forced_customers", "mismatched_customers", "mismatches", "stages"],
                },
                "exposed": {"type": "object", "additionalProperties": {"type": "integer"}},
                "result": {"$ref": "#/components/schemas/AnalysisResult"},
                "decision": _DECISION,
                "forecast": _FORECAST,
                "time_series": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["status", "stage", "metric", "points"],
                            "properties": {
                                "status": {"enum": ["ready", "computing", "failed"]},
                                "computed_at": {"type": ["string", "null"], "format": "date-time"},
                                "points": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["day", "variant", "relative_lift", "p_better"],
                                        "properties": {
                                            "day": {"type": "string", "format": "date"},
                                            "variant": {"type": "string"},
                                            "exposed": {"type": "integer"},
                                            "control_exposed": {"type": "integer"},
                                            "relative_lift": _ESTIMATE,
                                            "p_better": _NUMBER,
                                        },
                                    },
                                },
                            },
                        },
                    ]
                },
                "segments": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["attribute", "status", "values"],
                            "properties": {
                                "attribute": {"type": "string"},
                                "status": {"enum": ["ready", "computing", "failed"]},
                                "exploratory": {"const": True},
                                "looked_at": {"type": "integer", "description": "Segments looked at (the split)."},
                                "alpha": {"type": "number"},
                                "stage": {"type": "string"},
                                "differences": {
                                    "type": "array",
                                    "description": (
                                        "Per segment x treatment x metric at the stage under test: does its effect "
                                        "differ from the other segments' together (anytime-valid, the budget split "
                                        "over looked_at)? Exploratory: no decision."
                                    ),
                                    "items": {
                                        "type": "object",
                                        "required": ["segment", "treatment", "metric", "status", "flagged"],
                                        "properties": {
                                            "segment": {"type": "string"},
                                            "treatment": {"type": "string"},
                                            "metric": {"enum": ["conversion", "mean_rating"]},
                                            "status": {"enum": ["ok", "no_data", "not_enough_data"]},
                                            "effect": _NUMBER,
                                            "rest_effect": _NUMBER,
                                            "difference": _ESTIMATE,
                                            "flagged": {"type": "boolean"},
                                            "alpha": {"type": "number"},
                                            "scale": {"type": "string"},
                                        },
                                    },
                                },
                                "values": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["value", "exposed", "result"],
                                        "properties": {
                                            "value": {"type": ["string", "null"]},
                                            "exposed": {"type": "integer"},
                                            "result": {"$ref": "#/components/schemas/AnalysisResult"},
                                        },
                                    },
                                },
                            },
                        },
                    ]
                },
                "recorded_attributes": {"type": "array", "items": {"type": "string"}},
                "full_model": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/FullModelJob"}]},
                "warehouse": {
                    "description": "Where the statistics were computed, for an experiment whose outcomes live in a "
                    "warehouse (null: the built-in events, always current).",
                    "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/WarehouseFreshness"}],
                },
            },
        },
    },
}
