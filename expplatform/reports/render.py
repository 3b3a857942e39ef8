"""The report for machines: JSON-ready values (the API's ``Report`` and
``FullModelJob``, and ``expplatform report --format json``) and CSV.

Both forms are a contract with scripts: the keys, columns and number formats here
are what ``api/reports.py`` documents in the OpenAPI document.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..aggregation import StageQuestion
from ..job_records import job_progress
from ..models import AnalysisJob, iso_z
from .build import Report
from .decisions import decision_dict
from .exploratory import exploration_dict, explore
from .options import SEED
from .planning import forecast_dict, forecasts
from .views import MetricRow

CSV_COLUMNS = tuple(f for f in MetricRow.__dataclass_fields__)


def job_dict(job: AnalysisJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.id,
        "status": job.status,
        "requested_by": job.requested_by,
        "params": job.params,
        "created_at": iso_z(job.created_at),
        "started_at": iso_z(job.started_at),
        "finished_at": iso_z(job.finished_at),
        "heartbeat_at": iso_z(job.heartbeat_at),
        "error": job.error,
        "snapshot": job.snapshot,
        "result": job.result,
        "progress": None if (progress := job_progress(job)) is None else progress.as_dict(),
    }


def question_dict(question: StageQuestion | None) -> dict[str, Any] | None:
    if question is None:
        return None
    scale = {"min": question.scale.min, "max": question.scale.max}
    return {"key": question.key, "text": question.text, "scale": scale}


def with_questions(result: dict[str, Any], questions: Mapping[str, StageQuestion | None]) -> dict[str, Any]:
    """An analysis result's JSON with each stage's rating question beside its scale."""
    for stage in result["stages"]:
        stage["question"] = question_dict(questions.get(stage["stage"]))
    return result


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready values (documented as ``Report`` in the API)."""
    experiment = report.experiment
    series = report.series
    segments = report.segments
    questions = report.questions
    return {
        "experiment": {
            "key": experiment.key,
            "name": experiment.name,
            "status": experiment.status,
            "journey": experiment.journey.key,
            "stages": list(report.stats.stages),
            "target_stage": report.stats.target_stage,
            "control": report.stats.control,
            "variants": [
                {"key": v.key, "weight": v.weight, "control": v.key == report.stats.control}
                for v in sorted(experiment.variants, key=lambda v: v.position)
            ],
            "started_at": iso_z(experiment.started_at),
            "stopped_at": iso_z(experiment.stopped_at),
        },
        "generated_at": iso_z(report.generated_at),
        "settings": {"prior": asdict(report.prior), "decision": asdict(report.rule), "seed": SEED},
        "warnings": [asdict(w) for w in report.warnings],
        "data_quality": {
            "forced_customers": report.quality.forced_customers,
            "mismatched_customers": report.quality.mismatched_customers,
            "mismatches": report.quality.mismatches,
            "stages": {stage: asdict(q) for stage, q in report.quality.stages.items()},
        },
        "exposed": {v: report.stats.cells[report.stats.stages[0]][v].exposed for v in report.stats.variants},
        "result": with_questions(report.result.to_dict(), questions),
        "decision": decision_dict(report),
        "forecast": forecast_dict(forecasts(report)),
        "time_series": None
        if series is None
        else {
            "status": series.status,
            "stage": report.stats.target_stage,
            "metric": "conversion",
            "computed_at": iso_z(series.computed_at),
            "points": [
                {
                    "day": p.day.isoformat(),
                    "variant": p.variant,
                    "exposed": p.exposed,
                    "control_exposed": p.control_exposed,
                    "relative_lift": p.relative_lift.to_dict() if p.relative_lift is not None else None,
                    "p_better": p.p_better,
                }
                for p in (series.value or ())
            ],
        },
        "segments": None
        if segments is None
        else {
            "attribute": report.options.segment,
            "status": segments.status,
            "computed_at": iso_z(segments.computed_at),
            "values": [
                {
                    "value": s.value,
                    "exposed": s.exposed,
                    "result": with_questions(exploratory_result(s.result.to_dict()), questions),
                }
                for s in (segments.value or ())
            ],
            **(exploration_dict(explore(report)) or {"exploratory": True, "looked_at": 0, "differences": []}),
        },
        "recorded_attributes": list(report.attributes),
        "warehouse": report.warehouse.to_dict() if report.warehouse is not None else None,
        "full_model": job_dict(report.job) if report.options.full_model else None,
    }


def exploratory_result(result: dict[str, Any]) -> dict[str, Any]:
    """A segment's analysis without calls: no recommendation and no decisions (a
    segment breakdown is exploratory and never ships anything on its own)."""
    for stage in result["stages"]:
        for metric in stage["metrics"]:
            for comparison in metric["comparisons"]:
                comparison["decision"] = None
                comparison["decision_basis"] = None
    result["recommendation"] = None
    return result


def to_csv(rows: Sequence[MetricRow]) -> str:
    """A header of ``CSV_COLUMNS`` and a line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else _csv_safe(value) for value in asdict(row).values()])
    return buffer.getvalue()


def _csv_safe(value: Any) -> Any:
    """Floats at full precision (repr round-trips), booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value
