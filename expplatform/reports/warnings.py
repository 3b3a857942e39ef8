"""The report's warnings: everything in the data that should make an analyst doubt
the result or wait for more, each with a stable code (API clients switch on it) and
a sentence that says what to check.

They are read from the analysis result and the data-quality counters only, so they
cost nothing beyond what the report has already read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analysis.types import DecisionRule, ExperimentResult, ExperimentStats

from ..aggregation import DataQuality, StageQuality


def _are(number: int) -> str:
    return "is" if number == 1 else "are"


def _count(number: int, noun: str) -> str:
    """``1 event``, ``2,000 events``."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


@dataclass(frozen=True)
class ReportWarning:
    """One warning: a stable code for programs and a sentence for people."""

    code: str
    message: str


def collect_warnings(
    stats: ExperimentStats, quality: DataQuality, result: ExperimentResult, rule: DecisionRule
) -> list[ReportWarning]:
    """Everything that should make an analyst doubt or wait, most serious first."""
    warnings: list[ReportWarning] = []
    if result.sample_ratio.flagged:
        note = next((n for n in result.notes if n.code == "sample_ratio_mismatch"), None)
        warnings.append(ReportWarning("sample_ratio_mismatch", note.message if note else "Sample-ratio mismatch."))
    if quality.mismatched_customers:
        warnings.append(
            ReportWarning(
                "multiple_exposures",
                f"{_count(quality.mismatched_customers, 'customer')} would since have been assigned another variant "
                f"than the one recorded ({_count(quality.mismatches, 'time')} in all); they are served and counted in "
                "their first variant. Weights or salts may have been edited in the database.",
            )
        )
    unmatched = sum(q.unmatched + q.not_exposed for q in quality.stages.values())
    if unmatched:
        per_stage = _per_stage(quality, lambda q: q.unmatched + q.not_exposed)
        warnings.append(
            ReportWarning(
                "unmatched_events",
                f"{_count(unmatched, 'event')} at this experiment's stages matched no exposure ({per_stage}): "
                "clients may send events for customers they never assigned, or with other customer ids.",
            )
        )
    before = sum(q.before_exposure for q in quality.stages.values())
    if before:
        per_stage = _per_stage(quality, lambda q: q.before_exposure)
        warnings.append(
            ReportWarning(
                "events_before_exposure",
                f"{_count(before, 'event')} happened before the customer's exposure ({per_stage}) "
                f"and {_are(before)} not counted: check that clients assign before they show the journey step.",
            )
        )
    after = sum(q.after_stop for q in quality.stages.values())
    if after:
        warnings.append(
            ReportWarning(
                "events_after_stop",
                f"{_count(after, 'event')} arrived after the experiment stopped and {_are(after)} not counted.",
            )
        )
    if quality.forced_customers:
        forced_events = sum(q.forced for q in quality.stages.values())
        warnings.append(
            ReportWarning(
                "forced_customers_excluded",
                f"{_count(quality.forced_customers, 'forced (QA) customer')} and their "
                f"{_count(forced_events, 'event')} are excluded from the analysis.",
            )
        )
    exposed = {v: stats.cells[stats.target_stage][v].exposed for v in stats.variants}
    short = [v for v, n in exposed.items() if n < rule.min_exposed]
    if short:
        warnings.append(
            ReportWarning(
                "not_enough_data",
                "Not enough data yet: "
                + ", ".join(f"{v} has {exposed[v]:,}" for v in short)
                + f" exposed customers; no decision is made below {rule.min_exposed:,} per variant.",
            )
        )
    return warnings


def _per_stage(quality: DataQuality, count: Callable[[StageQuality], int]) -> str:
    return ", ".join(f"{stage}: {count(q):,}" for stage, q in quality.stages.items() if count(q))
