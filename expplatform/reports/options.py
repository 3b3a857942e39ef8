"""What a caller may ask of a report, and the seed every report uses.

The page's query string, the API's and the command line's flags all go through
``ReportOptions.parse``, so the three accept the same values and name the same
fields when they refuse one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..aggregation import SEGMENT_ATTRIBUTE
from ..config import parse_flag
from ..errors import MalformedRequest

SEED = 0  # reports are reproducible: the same data and settings give the same numbers
CREDIBLE_LEVEL_BOUNDS = (0.5, 0.999)


@dataclass(frozen=True)
class ReportOptions:
    """What a caller may ask of a report (query string, CLI flags), validated here."""

    segment: str | None = None
    credible_level: float | None = None
    full_model: bool = True
    series: bool = True

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> ReportOptions:
        errors: dict[str, str] = {}
        segment = (args.get("segment") or "").strip() or None
        if segment is not None and not SEGMENT_ATTRIBUTE.match(segment):
            errors["segment"] = "must be an attribute name: letters, digits, '_' or '-' (1-64)"
        level = None
        raw_level = args.get("credible_level")
        if raw_level not in (None, ""):
            try:
                level = float(raw_level)
            except (TypeError, ValueError):
                level = math.nan
            low, high = CREDIBLE_LEVEL_BOUNDS
            if not low <= level <= high:
                errors["credible_level"] = f"must be a number from {low} to {high}"
        full_model = _flag(args.get("full_model"), default=True, name="full_model", errors=errors)
        if errors:
            raise MalformedRequest(fields=errors)
        return cls(segment=segment, credible_level=level, full_model=full_model)


def _flag(raw: Any, *, default: bool, name: str, errors: dict[str, str]) -> bool:
    if raw in (None, ""):
        return default
    if isinstance(raw, bool):
        return raw
    value = parse_flag(str(raw))
    if value is None:
        errors[name] = "must be true or false"
        return default
    return value
