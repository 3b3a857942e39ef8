"""Counting what a run did and saying it: per worker :class:`Tally`, merged into the
run's :class:`Summary` (the lines printed at the end, and the ``run`` of the truth file)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    """What one worker did (merged at the end; read roughly, unlocked, for progress)."""

    customers: int = 0
    events: int = 0  # events queued for sending, faults included
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (experiment, variant)
    not_enrolled: Counter[tuple[str, str]] = field(default_factory=Counter)  # (experiment, reason)
    duplicates_sent: int = 0
    late_sent: int = 0
    before_assignment: int = 0
    unknown_customers: int = 0
    sample_ratio_skipped: int = 0
    ratings_not_sent: int = 0  # --legacy: questions whose scale is not the legacy one

    def merge(self, other: Tally) -> None:
        for name in (
            "customers",
            "events",
            "duplicates_sent",
            "late_sent",
            "before_assignment",
            "unknown_customers",
            "sample_ratio_skipped",
            "ratings_not_sent",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.exposures.update(other.exposures)
        self.not_enrolled.update(other.not_enrolled)


@dataclass
class Summary:
    scenario: str
    planned: int
    tally: Tally
    accepted: int
    duplicates: int
    rejected: int
    rejections: dict[str, int]
    failed: int
    dropped: int
    elapsed: float
    ended: str  # "done", "time" (--max-seconds) or "interrupted"
    first_problems: list[str]

    @property
    def acknowledged(self) -> int:
        return self.accepted + self.duplicates + self.rejected

    def to_dict(self) -> dict[str, Any]:
        t = self.tally
        exposures: dict[str, dict[str, int]] = {}
        for (experiment, variant), n in sorted(t.exposures.items()):
            exposures.setdefault(experiment, {})[variant] = n
        not_enrolled: dict[str, dict[str, int]] = {}
        for (experiment, reason), n in sorted(t.not_enrolled.items()):
            not_enrolled.setdefault(experiment, {})[reason] = n
        return {
            "scenario": self.scenario,
            "customers": t.customers,
            "customers_planned": self.planned,
            "exposures": exposures,
            "not_enrolled": not_enrolled,
            "events_sent": t.events,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejections": self.rejections,
            "failed": self.failed,
            "dropped": self.dropped,
            "faults": {
                "duplicates_sent": t.duplicates_sent,
                "late_sent": t.late_sent,
                "before_assignment": t.before_assignment,
                "unknown_customers": t.unknown_customers,
                "sample_ratio_skipped": t.sample_ratio_skipped,
            },
            "ratings_not_sent": t.ratings_not_sent,
            "elapsed_seconds": round(self.elapsed, 3),
            "customers_per_second": round(t.customers / self.elapsed, 1) if self.elapsed else None,
            "events_per_second": round(self.acknowledged / self.elapsed, 1) if self.elapsed else None,
            "ended": self.ended,
        }

    def lines(self) -> list[str]:
        t = self.tally
        rate = self.acknowledged / self.elapsed if self.elapsed else 0.0
        ended = {"done": "", "time": " (stopped at --max-seconds)", "interrupted": " (interrupted)"}[self.ended]
        out = [
            f"simulated {t.customers:,} of {self.planned:,} customers in {self.elapsed:.1f} s{ended}: "
            f"{t.customers / self.elapsed if self.elapsed else 0:,.0f} customers/s, {rate:,.0f} events/s",
        ]
        exposures = self.to_dict()["exposures"]
        for experiment, variants in exposures.items():
            split = ", ".join(f"{v} {n:,}" for v, n in variants.items())
            out.append(f"  exposures {experiment}: {split}")
        for (experiment, reason), n in sorted(t.not_enrolled.items()):
            out.append(f"  not enrolled in {experiment}: {n:,} ({reason})")
        out.append(
            f"  events sent {t.events:,}: accepted {self.accepted:,}, duplicates {self.duplicates:,}, "
            f"rejected {self.rejected:,}"
            + (f" {dict(self.rejections)}" if self.rejections else "")
            + (f", given up {self.failed:,}" if self.failed else "")
            + (f", dropped {self.dropped:,}" if self.dropped else "")
        )
        out.append(
            f"  faults: {t.duplicates_sent:,} re-sent, {t.late_sent:,} late, {t.before_assignment:,} before "
            f"assignment, {t.unknown_customers:,} unknown customers, {t.sample_ratio_skipped:,} assign calls skipped"
        )
        if t.ratings_not_sent:
            out.append(f"  --legacy: {t.ratings_not_sent:,} ratings of questions off the legacy scale not sent")
        out.extend(f"  first problem: {p}" for p in self.first_problems)
        return out
