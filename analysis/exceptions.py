"""Contract violations: inputs no correct caller can produce. Degenerate but valid
data (no traffic, 0% conversion) is not an error; it gets a status instead."""


class AnalysisInputError(ValueError):
    """Statistics or settings that break the contract (negative counts, converters
    above exposed, a histogram that does not fit the scale, unknown settings)."""
