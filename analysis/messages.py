"""Status codes of the analysis and the sentences shown for them.

Codes are stable strings (reports and API clients switch on them); the sentences are
for people. Degenerate data gets one of these instead of an exception.
"""

from __future__ import annotations

from .types import Note

OK = "ok"
# A stage x metric comparison, or a stage x metric as a whole:
NO_DATA = "no_data"
NOT_ENOUGH_DATA = "not_enough_data"  # segments: below the rule's min_exposed
SINGLE_VARIANT = "single_variant"
ZERO_BASELINE = "zero_baseline"
BOUNDARY_RATE = "boundary_rate"
# The experiment as a whole:
NO_EXPOSURES = "no_exposures"
SAMPLE_RATIO_MISMATCH = "sample_ratio_mismatch"
DIAGNOSTICS_FAILED = "diagnostics_failed"

TEXT = {
    OK: "Enough data for every estimate.",
    NO_DATA: "No {what} for {variant}{at} yet: comparisons there are left empty.",
    NOT_ENOUGH_DATA: "Fewer than the rule's minimum {what} for {variant}{at}: no comparison yet.",
    SINGLE_VARIANT: "Only {variant} has {what}{at}: there is nothing to compare it with.",
    ZERO_BASELINE: (
        "The control has no {what} at {stage}, so the relative lift of {variant} is undefined; "
        "the absolute difference and P(better) are still given."
    ),
    BOUNDARY_RATE: "{variant} {what} at {stage}: its estimate there leans on the prior.",
    NO_EXPOSURES: "No customer has been exposed to the experiment yet.",
    SAMPLE_RATIO_MISMATCH: (
        "Sample-ratio mismatch at {stage}: exposures {observed} differ from the configured weights "
        "(chi-square p = {p_value:.2g}). Assignment or exposure logging is likely broken; do not act on "
        "these results until it is explained."
    ),
    DIAGNOSTICS_FAILED: (
        "The sampler did not converge cleanly (max R-hat {r_hat}, min bulk ESS {ess_bulk}, min tail ESS "
        "{ess_tail}, {divergences} divergences): treat the full model's numbers with caution or refit "
        "with more tuning."
    ),
}

SEVERITY = (NO_EXPOSURES, SINGLE_VARIANT, SAMPLE_RATIO_MISMATCH, DIAGNOSTICS_FAILED, OK)
"""Experiment-level codes, most serious first: the result's ``status`` is the first raised."""


def note(
    code: str, *, stage: str | None = None, variant: str | None = None, metric: str | None = None, **context: object
) -> Note:
    """A Note with its sentence filled in from the code's template."""
    at = f" at {stage}" if stage else ""
    message = TEXT[code].format(stage=stage, variant=variant, metric=metric, at=at, **context)
    return Note(code=code, message=message, stage=stage, variant=variant, metric=metric)
