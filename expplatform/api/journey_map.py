"""The live journey map over JSON: GET /api/v1/journeys/<key>/map.

Reading needs an admin-scope key or a logged-in viewer, as the reports do. The
options are the page's (``days`` or ``from``/``to``, ``persona``, ``compare``); a bad
one is a 400 ``validation_failed`` naming the field, an unknown journey a 404
``journey_not_found``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import request, url_for

from ..db import get_session
from ..journey_map import (
    MIN_CUSTOMERS,
    MIN_RATINGS,
    Difference,
    GroupMap,
    JourneyMap,
    MapOptions,
    StageExperiment,
    StageTests,
    journey_map,
    measure_stopped,
    persona_word,
    stage_tests,
    today_utc,
)
from ..journeys import get_journey
from ..models import iso_z
from . import bp
from .reports import read_access


@bp.get("/journeys/<key>/map")
@read_access
def get_journey_map(key: str):
    session = get_session()
    journey = get_journey(session, key)
    options = MapOptions.parse(request.args, [p.key for p in journey.personas], today_utc())
    built = journey_map(session, journey, options)
    return map_dict(built, stage_tests(session, journey, lambda experiment: measure_stopped(session, experiment)))


# -- the wire format ------------------------------------------------------------------------------


def map_dict(built: JourneyMap, tests: dict[str, StageTests]) -> dict[str, Any]:
    shape, options = built.shape, built.options
    entries = [(p.key, p.name, p.key) for p in shape.personas] + [(persona_word(""), shape.persona_name(""), "")]
    personas = [
        {"key": word, "name": name, "first_stage_customers": built.first_stage_customers.get(value, 0)}
        for word, name, value in entries
    ]
    return {
        "journey": {
            "key": shape.key,
            "name": shape.name,
            "description": shape.description,
            "persona_attribute": shape.persona_attribute,
        },
        "period": {
            "from": options.period.first.isoformat(),
            "to": options.period.last.isoformat(),
            "days": options.period.days,
        },
        "persona": persona_word(options.persona),
        "compare": None if options.compare is None else persona_word(options.compare),
        "credible_level": built.level,
        "min_customers": MIN_CUSTOMERS,
        "min_ratings": MIN_RATINGS,
        "personas": personas,
        "stages": [
            {
                "key": stage.key,
                "name": stage.name,
                "position": position,
                "goal": stage.goal,
                "touchpoints": list(stage.touchpoints),
                "questions": [
                    {"key": q.key, "text": q.text, "scale_min": q.scale.min, "scale_max": q.scale.max}
                    for q in shape.questions_at(stage.key)
                ],
                "experiments": _tests(tests.get(stage.key)),
            }
            for position, stage in enumerate(shape.stages)
        ],
        "groups": [_group(group) for group in built.groups],
        "differences": None
        if built.differences is None
        else [
            {
                "stage": d.stage,
                "conversion": _difference(d.conversion),
                "mean_ratings": [
                    {
                        "question": key,
                        **(_difference(diff) or {"observed": None, "difference": None, "credible": False}),
                    }
                    for key, diff in d.mean_ratings
                ],
            }
            for d in built.differences
        ],
        "generated_at": iso_z(built.generated_at),
    }


def _group(group: GroupMap) -> dict[str, Any]:
    return {
        "key": group.group.key,
        "label": group.group.label,
        "persona": None if group.group.persona is None else persona_word(group.group.persona),
        "excluding": None if group.group.excluding is None else persona_word(group.group.excluding),
        "stages": [
            {
                "stage": s.stage,
                "reached": s.reached,
                "step": None if s.step is None else asdict(s.step),
                "questions": [asdict(q) for q in s.questions],
                "satisfaction": None if s.satisfaction is None else asdict(s.satisfaction),
                "satisfaction_enough_data": s.satisfaction_enough_data,
                "observed_satisfaction": s.observed_satisfaction,
            }
            for s in group.stages
        ],
        "pain_points": {"drop_off": asdict(group.drop_off), "satisfaction": asdict(group.satisfaction)},
    }


def _difference(difference: Difference | None) -> dict[str, Any] | None:
    if difference is None:
        return None
    return {"observed": difference.observed, "difference": asdict(difference.estimate), "credible": difference.credible}


def _tests(tests: StageTests | None) -> dict[str, Any]:
    if tests is None:
        return {"active": [], "stopped": [], "stopped_total": 0, "iterations": []}
    return {
        "active": [_experiment(e) for e in tests.active],
        "stopped": [_experiment(e) for e in tests.stopped],
        "stopped_total": tests.stopped_total,
        "iterations": [
            {"earlier": earlier, "experiments": [_experiment(e) for e in chain]}
            for chain, earlier in zip(tests.iterations, tests.earlier, strict=True)
        ],
    }


def _experiment(e: StageExperiment) -> dict[str, Any]:
    return {
        "key": e.key,
        "name": e.name,
        "status": e.status,
        "target_stage": e.target_stage,
        "cloned_from": e.cloned_from,
        "started_at": iso_z(e.started_at),
        "stopped_at": iso_z(e.stopped_at),
        "report_url": url_for("web.report", key=e.key),
        "measured": None
        if e.measured is None
        else {
            "action": e.measured.action,
            "summary": e.measured.summary,
            "treatments": [
                {
                    "variant": t.variant,
                    "relative_lift": None if t.lift is None else asdict(t.lift),
                    "p_better": t.p_better,
                    "decision": t.decision,
                }
                for t in e.measured.treatments
            ],
        },
        "note": e.note,
    }


# -- OpenAPI -------------------------------------------------------------------------------

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ESTIMATE = {"oneOf": [{"$ref": "#/components/schemas/Estimate"}, {"type": "null"}]}
_NUMBER = {"type": ["number", "null"]}
_DIFFERENCE = {
    "type": "object",
    "required": ["observed", "difference", "credible"],
    "properties": {"observed": {"type": "number"}, "difference": _ESTIMATE, "credible": {"type": "boolean"}},
}
_EXPERIMENT = {
    "type": "object",
    "required": ["key", "name", "status", "target_stage", "report_url", "measured"],
    "properties": {
        "key": {"type": "string"},
        "name": {"type": "string"},
        "status": {"enum": ["draft", "running", "paused", "stopped"]},
        "target_stage": {"type": "string"},
        "cloned_from": {"type": ["string", "null"]},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "stopped_at": {"type": ["string", "null"], "format": "date-time"},
        "report_url": {"type": "string", "description": "The experiment's report page."},
        "measured": {
            "description": "A stopped experiment's report at its stage under test (null for the others).",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["action", "summary", "treatments"],
                    "properties": {
                        "action": {"enum": ["ship", "keep_control", "keep_running", "not_enough_data", "investigate"]},
                        "summary": {"type": "string"},
                        "treatments": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["variant", "relative_lift", "p_better", "decision"],
                                "properties": {
                                    "variant": {"type": "string"},
                                    "relative_lift": _ESTIMATE,
                                    "p_better": _NUMBER,
                                    "decision": {"enum": ["ship", "harmful", "keep_running", "not_enough_data", None]},
                                },
                            },
                        },
                    },
                },
            ],
        },
        "note": {"type": ["string", "null"]},
    },
}
_PAIN_POINT = {
    "type": "object",
    "required": ["kind", "status", "stage", "observed", "value", "p_worst", "message"],
    "properties": {
        "kind": {"enum": ["drop_off", "satisfaction"]},
        "status": {"enum": ["ok", "not_enough_data", "not_applicable"]},
        "stage": {"type": ["string", "null"]},
        "observed": {**_NUMBER, "description": "The observed drop-off (or 0-1 satisfaction) of that stage."},
        "value": {**_ESTIMATE, "description": "Its posterior mean and credible interval."},
        "p_worst": _NUMBER,
        "runner_up": {"type": ["string", "null"]},
        "p_runner_up": _NUMBER,
        "message": {"type": "string"},
    },
}
_QUESTION = {
    "type": "object",
    "required": ["key", "rated", "histogram", "observed_mean", "mean", "satisfaction", "top_box", "nps", "enough_data"],
    "properties": {
        "key": {"type": "string"},
        "text": {"type": "string"},
        "scale_min": {"type": "integer"},
        "scale_max": {"type": "integer"},
        "rated": {"type": "integer", "description": "Customers whose latest rating fell in the period."},
        "histogram": {"type": "array", "items": {"type": "integer"}},
        "observed_mean": _NUMBER,
        "mean": _ESTIMATE,
        "satisfaction": {**_ESTIMATE, "description": "The mean rescaled to 0-1: (mean - min) / (max - min)."},
        "top_box_min": {"type": "integer"},
        "observed_top_box": _NUMBER,
        "top_box": _ESTIMATE,
        "observed_nps": _NUMBER,
        "nps": {**_ESTIMATE, "description": "0-10 questions only, in points (-100 to 100)."},
        "enough_data": {"type": "boolean"},
    },
}
_STEP = {
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["to_stage", "reached", "continued", "observed", "conversion", "drop_off", "skipped"],
            "properties": {
                "to_stage": {"type": "string"},
                "reached": {"type": "integer"},
                "continued": {"type": "integer"},
                "observed": _NUMBER,
                "conversion": _ESTIMATE,
                "drop_off": _ESTIMATE,
                "skipped": {
                    "type": "boolean",
                    "description": "More customers reached the next stage than this one: customers skip stages.",
                },
                "enough_data": {"type": "boolean"},
            },
        },
    ]
}
_GROUP = {
    "type": "object",
    "required": ["key", "label", "persona", "excluding", "stages", "pain_points"],
    "properties": {
        "key": {"type": "string"},
        "label": {"type": "string"},
        "persona": {
            "type": ["string", "null"],
            "description": "The persona shown; null for everyone (or everyone but one).",
        },
        "excluding": {
            "type": ["string", "null"],
            "description": "Everyone but this persona (beside it in a comparison).",
        },
        "stages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["stage", "reached", "step", "questions", "satisfaction"],
                "properties": {
                    "stage": {"type": "string"},
                    "reached": {
                        "type": "integer",
                        "description": "Customers whose first conversion here fell in the period.",
                    },
                    "step": _STEP,
                    "questions": {"type": "array", "items": _QUESTION},
                    "satisfaction": {
                        **_ESTIMATE,
                        "description": "The posterior of the average of the stage's questions' 0-1 satisfaction.",
                    },
                    "satisfaction_enough_data": {"type": "boolean"},
                    "observed_satisfaction": _NUMBER,
                },
            },
        },
        "pain_points": {
            "type": "object",
            "required": ["drop_off", "satisfaction"],
            "properties": {"drop_off": _PAIN_POINT, "satisfaction": _PAIN_POINT},
        },
    },
}
_PARAMETERS = [
    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
    {
        "name": "days",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 366, "default": 28},
        "description": "The period: this many UTC days ending today (or ending `to`). Not with `from`.",
    },
    {
        "name": "from",
        "in": "query",
        "schema": {"type": "string", "format": "date"},
        "description": "First day of the period (with `to`, default today); at most 366 days long.",
    },
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}, "description": "Last day (UTC)."},
    {
        "name": "persona",
        "in": "query",
        "schema": {"type": "string", "default": "all"},
        "description": "A persona key of the journey, 'unknown' (no known persona) or 'all'.",
    },
    {
        "name": "compare",
        "in": "query",
        "schema": {"type": "string"},
        "description": (
            "A second persona (or 'unknown') shown beside the first, with differences marked credible when their "
            "95% interval excludes 0. Beside persona=all, the first group is everyone but this persona."
        ),
    },
]

OPENAPI: dict[str, Any] = {
    "paths": {
        "/journeys/{key}/map": {
            "get": {
                "summary": "The live journey map",
                "description": (
                    "For a period and a persona (or two side by side), from the journey counters: customers reaching "
                    "each stage (first conversion there in the period), conversion on to the next stage and the "
                    "drop-off with Beta credible intervals, each rating question's mean rating, top-box share and "
                    "NPS (0-10 scales) with Dirichlet credible intervals, each stage's satisfaction on a 0-1 axis, "
                    "the pain points (largest drop-off, lowest satisfaction) with the probability that each really "
                    "is the worst, and per stage the experiments testing it: running and paused ones, the latest "
                    "stopped ones with their measured lift and decision, and clone chains of iterations."
                ),
                "parameters": _PARAMETERS,
                "responses": {
                    "200": {
                        "description": "The map",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JourneyMap"}}},
                    },
                    "400": {"description": "A bad parameter (validation_failed, with fields)", **_ERROR},
                    "401": {"description": "No credentials", **_ERROR},
                    "403": {"description": "Not an admin key or a viewer", **_ERROR},
                    "404": {"description": "No such journey (journey_not_found)", **_ERROR},
                },
            }
        }
    },
    "schemas": {
        "JourneyMap": {
            "type": "object",
            "required": ["journey", "period", "persona", "compare", "personas", "stages", "groups", "differences"],
            "properties": {
                "journey": {
                    "type": "object",
                    "required": ["key", "name", "persona_attribute"],
                    "properties": {
                        "key": {"type": "string"},
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "persona_attribute": {"type": "string"},
                    },
                },
                "period": {
                    "type": "object",
                    "required": ["from", "to", "days"],
                    "properties": {
                        "from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"},
                        "days": {"type": "integer"},
                    },
                },
                "persona": {"type": "string"},
                "compare": {"type": ["string", "null"]},
                "credible_level": {"type": "number"},
                "min_customers": {"type": "integer"},
                "min_ratings": {"type": "integer"},
                "personas": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "name", "first_stage_customers"],
                        "properties": {
                            "key": {"type": "string"},
                            "name": {"type": "string"},
                            "first_stage_customers": {"type": "integer"},
                        },
                    },
                },
                "stages": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "name", "position", "goal", "touchpoints", "questions", "experiments"],
                        "properties": {
                            "key": {"type": "string"},
                            "name": {"type": "string"},
                            "position": {"type": "integer"},
                            "goal": {"type": "string"},
                            "touchpoints": {"type": "array", "items": {"type": "string"}},
                            "questions": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["key", "text", "scale_min", "scale_max"],
                                    "properties": {
                                        "key": {"type": "string"},
                                        "text": {"type": "string"},
                                        "scale_min": {"type": "integer"},
                                        "scale_max": {"type": "integer"},
                                    },
                                },
                            },
                            "experiments": {
                                "type": "object",
                                "required": ["active", "stopped", "stopped_total", "iterations"],
                                "properties": {
                                    "active": {"type": "array", "items": _EXPERIMENT},
                                    "stopped": {"type": "array", "items": _EXPERIMENT},
                                    "stopped_total": {"type": "integer"},
                                    "iterations": {
                                        "type": "array",
                                        "description": "Clone chains ending at this stage, oldest iteration first.",
                                        "items": {
                                            "type": "object",
                                            "required": ["earlier", "experiments"],
                                            "properties": {
                                                "earlier": {"type": "integer"},
                                                "experiments": {"type": "array", "items": _EXPERIMENT},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "groups": {"type": "array", "minItems": 1, "maxItems": 2, "items": _GROUP},
                "differences": {
                    "description": "With compare: the first group minus the second, per stage.",
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["stage", "conversion", "mean_ratings"],
                                "properties": {
                                    "stage": {"type": "string"},
                                    "conversion": {"oneOf": [{"type": "null"}, _DIFFERENCE]},
                                    "mean_ratings": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["question", "observed", "difference", "credible"],
                                            "properties": {
                                                "question": {"type": "string"},
                                                "observed": _NUMBER,
                                                "difference": _ESTIMATE,
                                                "credible": {"type": "boolean"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    ],
                },
                "generated_at": {"type": "string", "format": "date-time"},
            },
        }
    },
}
