"""From posterior draws to the result types, shared by the conjugate path and the
full model so that a report can show either.

Draws come per stage x variant on the last axis. The conjugate path's arms are
independent and it passes P(better) computed exactly or by a rank statistic; the
full model's draws are joint, and everything comparing arms is computed draw by
draw.

Each stage has the metrics of its own rating scale (conversion alone at a stage
without a rating question): a rating metric is summarised over the stages that share
a scale, together, and its draws are NaN on the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import SupportsFloat, cast

import numpy as np

from . import messages
from . import sequential as seq
from .checks import sample_ratio
from .decision import GuardBounds, guardrail_checks, recommend
from .quantiles import central_interval
from .types import (
    DECIDING_METRICS,
    ArmSummary,
    Comparison,
    Decision,
    DecisionRule,
    Diagnostics,
    Estimate,
    ExperimentResult,
    ExperimentStats,
    FunnelStep,
    Journey,
    JourneyVariant,
    Method,
    Metric,
    MetricResult,
    Note,
    SampleRatio,
    Scale,
    StageResult,
)


@dataclass(frozen=True)
class MetricSpec:
    """How a metric reads the statistics: a weight per category of either the
    conversion outcome (not converted, converted) or the rating histogram."""

    name: Metric
    from_ratings: bool
    weights: np.ndarray
    relative: bool  # positive on the posterior, so a relative lift means something (not NPS)
    what: str  # how the messages name its data


METRICS: tuple[Metric, ...] = ("conversion", "mean_rating", "top_box", "nps")
"""Every metric, in the order a stage lists those it has."""


def metric_specs(scale: Scale | None) -> tuple[MetricSpec, ...]:
    """The metrics of a stage whose rating question has ``scale``: conversion, then
    (with a scale) the mean rating and the top-box share, and NPS on the 0-10 scale.
    Without a rating question (None), conversion alone."""
    specs = [MetricSpec("conversion", False, np.array([0.0, 1.0]), True, "exposed customers")]
    if scale is None:
        return tuple(specs)
    ratings = np.arange(scale.min, scale.max + 1, dtype=float)
    specs += [
        MetricSpec("mean_rating", True, ratings, True, "ratings"),
        MetricSpec("top_box", True, (ratings >= scale.top_box_min).astype(float), True, "ratings"),
    ]
    if scale.has_nps:
        nps = np.where(ratings >= 9, 100.0, np.where(ratings <= 6, -100.0, 0.0))
        specs.append(MetricSpec("nps", True, nps, False, "ratings"))
    return tuple(specs)


def rating_specs(scale: Scale) -> tuple[MetricSpec, ...]:
    """The metrics read from the histograms of ``scale``."""
    return metric_specs(scale)[1:]


@dataclass(frozen=True)
class ScaleGroup:
    """The stages that share one rating scale: their rows (indices into the stages,
    ascending) and their histograms, (rows, variants, categories)."""

    scale: Scale
    rows: tuple[int, ...]
    ratings: np.ndarray


@dataclass
class Counts:
    """The statistics as arrays: exposed and converted (stages, variants); the rating
    histograms per group of stages sharing a scale (stages without a rating question
    are in no group). A single-scale experiment has one group of every stage."""

    exposed: np.ndarray
    converted: np.ndarray
    groups: tuple[ScaleGroup, ...]

    @classmethod
    def of(cls, stats: ExperimentStats) -> Counts:
        cells = [[stats.cells[s][v] for v in stats.variants] for s in stats.stages]
        rows: dict[Scale, list[int]] = {}
        for i, stage in enumerate(stats.stages):
            scale = stats.scale_of(stage)
            if scale is not None:
                rows.setdefault(scale, []).append(i)
        return cls(
            exposed=np.array([[c.exposed for c in row] for row in cells], dtype=np.int64),
            converted=np.array([[c.converted for c in row] for row in cells], dtype=np.int64),
            groups=tuple(
                ScaleGroup(
                    scale,
                    tuple(members),
                    np.array([[c.ratings for c in cells[i]] for i in members], dtype=np.int64).reshape(
                        len(members), len(stats.variants), scale.categories
                    ),
                )
                for scale, members in rows.items()
            ),
        )


def take_rows(x: np.ndarray, rows: tuple[int, ...]) -> np.ndarray:
    """``x`` on the stages ``rows`` (first axis); ``x`` itself when those are all of them
    in order, so that a single-scale experiment is computed exactly as it always was."""
    if rows == tuple(range(x.shape[0])):
        return x
    return x[list(rows)]


def put_rows(into: np.ndarray | None, part: np.ndarray, rows: tuple[int, ...], stages: int) -> np.ndarray:
    """``part`` (one group's rows) placed into a (stages, ...) array, NaN on the stages of
    no group so far; ``part`` itself when it covers every stage in order."""
    if into is None:
        if rows == tuple(range(stages)):
            return part
        into = np.full((stages, *part.shape[1:]), np.nan, dtype=part.dtype)
    into[list(rows)] = part
    return into


@dataclass
class Posterior:
    """Draws of every metric, (stages, variants, draws) with NaN on the stages where the
    metric does not apply, plus what the path knows better than the draws: P(better)
    with its Monte Carlo error (stages, variants), and per stage the conjugate params
    (variants, params), None where the metric does not apply."""

    values: dict[Metric, np.ndarray]
    p_better: dict[Metric, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    conjugate_params: dict[Metric, list[np.ndarray | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Slice:
    """One metric on the stages that share its definition: every stage for conversion,
    the stages of one scale for a rating metric."""

    spec: MetricSpec
    rows: tuple[int, ...]
    histogram: np.ndarray  # (rows, variants, categories of the metric's outcome)
    scale: Scale | None


def _slices(counts: Counts, name: Metric) -> list[_Slice]:
    if name == "conversion":
        histogram = np.stack([counts.exposed - counts.converted, counts.converted], axis=-1)
        return [_Slice(metric_specs(None)[0], tuple(range(counts.exposed.shape[0])), histogram, None)]
    return [
        _Slice(spec, group.rows, group.ratings, group.scale)
        for group in counts.groups
        for spec in rating_specs(group.scale)
        if spec.name == name
    ]


def summarize(
    stats: ExperimentStats,
    rule: DecisionRule,
    posterior: Posterior,
    *,
    method: Method,
    draws: int,
    diagnostics: Diagnostics | None = None,
    sequential: seq.SequentialDesign | None = seq.SequentialDesign(),
) -> ExperimentResult:
    """The result of either path; its status is the most serious experiment-level code.

    ``sequential`` is the design of the peeking-safe decisions (``analysis.sequential``);
    None gives the fixed-horizon Bayesian rule alone (valid for one look only)."""
    counts = Counts.of(stats)
    control = stats.variants.index(stats.control)
    notes: list[Note] = []
    guard: GuardBounds | None = {} if sequential is not None else None
    by_stage: list[list[MetricResult]] = [[] for _ in stats.stages]
    for name in METRICS:
        stage_notes: dict[int, list[Note]] = {}
        for part in _slices(counts, name):
            for i, result in _metric(stats, rule, counts, part, posterior, control, stage_notes, sequential, guard):
                by_stage[i].append(result)
        for i in sorted(stage_notes):  # a metric's notes in stage order, whatever the scales
            notes += stage_notes[i]
    stages = tuple(
        StageResult(stage, tuple(by_stage[i]), stats.scale_of(stage)) for i, stage in enumerate(stats.stages)
    )
    journey = _journey(stats, rule, counts, posterior.values["conversion"], control, stages[-1].metric("conversion"))
    srm = sample_ratio(stats.stages, counts.exposed, stats.weights, rule.srm_alpha)

    raised = _experiment_notes(stats, counts, srm, diagnostics)
    codes = {n.code for n in raised}
    status = next(code for code in messages.SEVERITY if code in codes or code == messages.OK)
    no_data = bool(codes & {messages.NO_EXPOSURES, messages.SINGLE_VARIANT})
    recommendation = recommend(stats, rule, stages, srm, no_data=no_data, guard=guard)
    return ExperimentResult(
        method=method,
        status=status,
        control=stats.control,
        target_stage=stats.target_stage,
        credible_level=rule.credible_level,
        draws=draws,
        stages=stages,
        journey=journey,
        sample_ratio=srm,
        recommendation=recommendation,
        notes=tuple(raised + notes),
        diagnostics=diagnostics,
    )


def _experiment_notes(
    stats: ExperimentStats, counts: Counts, srm: SampleRatio, diagnostics: Diagnostics | None
) -> list[Note]:
    raised: list[Note] = []
    with_exposures = [v for j, v in enumerate(stats.variants) if counts.exposed[:, j].sum() > 0]
    if not with_exposures:
        raised.append(messages.note(messages.NO_EXPOSURES))
    elif len(with_exposures) == 1:
        raised.append(messages.note(messages.SINGLE_VARIANT, variant=with_exposures[0], what="exposed customers"))
    if srm.flagged:
        observed = ", ".join(f"{v} {n}" for v, n in zip(stats.variants, srm.observed, strict=True))
        raised.append(
            messages.note(messages.SAMPLE_RATIO_MISMATCH, stage=srm.stage, observed=observed, p_value=srm.p_value)
        )
    if diagnostics is not None and not diagnostics.passed:
        raised.append(
            messages.note(
                messages.DIAGNOSTICS_FAILED,
                r_hat=_fmt(diagnostics.r_hat_max),
                ess_bulk=_fmt(diagnostics.ess_bulk_min, 0),
                ess_tail=_fmt(diagnostics.ess_tail_min, 0),
                divergences=diagnostics.divergences,
            )
        )
    return raised


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass
class _Vectors:
    """One metric's summaries for every stage and variant, computed array-wise."""

    n: np.ndarray
    has_data: np.ndarray
    observed: np.ndarray
    arm: tuple[np.ndarray, np.ndarray, np.ndarray]  # mean, low, high: (stages, variants)
    p_best: np.ndarray
    loss: np.ndarray
    loss_relative: np.ndarray | None
    difference: list[list[Estimate | None]]  # [stage][treatment]
    lift: list[list[Estimate | None]] | None
    shortfall: np.ndarray  # (stages, treatments)
    shortfall_relative: np.ndarray | None
    p_better: np.ndarray
    p_error: np.ndarray | None
    extreme: np.ndarray

    @classmethod
    def of(
        cls,
        rule: DecisionRule,
        part: _Slice,
        posterior: Posterior,
        control: int,
        treatments: list[int],
    ) -> _Vectors:
        spec, histogram = part.spec, part.histogram
        n = histogram.sum(-1)
        has_data = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            observed = histogram @ spec.weights / n
        x = take_rows(posterior.values[spec.name], part.rows)
        lo_q, hi_q = (1 - rule.credible_level) / 2, (1 + rule.credible_level) / 2
        low, high = central_interval(x, lo_q, hi_q)
        p_best, loss, loss_relative = _abn(x, has_data, spec.relative)
        xt, xc = x[:, treatments], x[:, [control]]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            diff = xt - xc
            lift = xt / xc - 1 if spec.relative else None
        if spec.name in posterior.p_better:
            p_all, error_all = posterior.p_better[spec.name]
            p_all = take_rows(p_all, part.rows)
            error_all = take_rows(error_all, part.rows) if error_all is not None else None
            p_better, p_error = p_all[:, treatments], (error_all[:, treatments] if error_all is not None else None)
        else:  # joint draws: compare draw by draw
            p_better, p_error = (diff > 0).mean(-1), None
        return cls(
            n=n,
            has_data=has_data,
            observed=observed,
            arm=(x.mean(-1), low, high),
            p_best=p_best,
            loss=loss,
            loss_relative=loss_relative,
            difference=_estimates(diff, lo_q, hi_q),
            lift=_estimates(lift, lo_q, hi_q) if lift is not None else None,
            shortfall=np.maximum(-diff, 0.0).mean(-1),
            shortfall_relative=np.maximum(-lift, 0.0).mean(-1) if lift is not None else None,
            p_better=p_better,
            p_error=p_error,
            extreme=has_data & ((observed == spec.weights.min()) | (observed == spec.weights.max())),
        )


def _metric(
    stats: ExperimentStats,
    rule: DecisionRule,
    counts: Counts,
    part: _Slice,
    posterior: Posterior,
    control: int,
    stage_notes: dict[int, list[Note]],
    design: seq.SequentialDesign | None,
    guard: GuardBounds | None,
) -> list[tuple[int, MetricResult]]:
    """This metric at each stage of ``part``: (stage index, result); the notes go to
    ``stage_notes`` under the stage's index."""
    spec = part.spec
    treatments = [j for j in range(len(stats.variants)) if j != control]
    v = _Vectors.of(rule, part, posterior, control, treatments)
    anytime = _anytime(stats, rule, counts, part, control, treatments, design)
    codes = _decisions(rule, spec, v, anytime, control, treatments)
    if anytime is not None and guard is not None:
        for r, i in enumerate(part.rows):
            for k, j in enumerate(treatments):
                guard[(stats.stages[i], spec.name, stats.variants[j])] = (
                    float(anytime.guard_high[r, k]),
                    anytime.guard_alpha,
                )
    params = posterior.conjugate_params.get(spec.name)
    results = []
    for r, i in enumerate(part.rows):  # r: the row among the part's arrays, i: the stage
        stage = stats.stages[i]
        notes = stage_notes.setdefault(i, [])
        cell_params = params[i] if params is not None else None
        arms = tuple(
            ArmSummary(
                variant=variant,
                n=int(v.n[r, j]),
                observed=_num(v.observed[r, j]) if v.has_data[r, j] else None,
                posterior=Estimate(*(_num(a[r, j]) for a in v.arm)) if v.has_data[r, j] else None,
                p_best=_num(v.p_best[r, j]),
                expected_loss=_num(v.loss[r, j]),
                expected_loss_relative=_num(v.loss_relative[r, j]) if v.loss_relative is not None else None,
                conjugate_params=tuple(float(a) for a in cell_params[j]) if cell_params is not None else None,
            )
            for j, variant in enumerate(stats.variants)
        )
        comparisons = tuple(
            _comparison(stats, rule, spec, v, anytime, codes, i, r, k, j, control, notes)
            for k, j in enumerate(treatments)
        )
        with_data = [stats.variants[j] for j in range(len(stats.variants)) if v.has_data[r, j]]
        if not with_data:
            status = messages.NO_DATA
            notes.append(messages.note(status, stage=stage, variant="any variant", metric=spec.name, what=spec.what))
        elif len(with_data) == 1:
            status = messages.SINGLE_VARIANT
            notes.append(messages.note(status, stage=stage, variant=with_data[0], metric=spec.name, what=spec.what))
        else:
            status = messages.OK
        results.append((i, MetricResult(stage, spec.name, status, arms, comparisons)))
    return results


def _decisions(
    rule: DecisionRule, spec: MetricSpec, v: _Vectors, anytime: _Anytime | None, control: int, treatments: list[int]
) -> np.ndarray | None:
    """The rule for every stage and treatment at once (``sequential.decisions``, the
    function the simulations of ``analysis.operating`` apply): codes into
    ``sequential.DECISION_CODES``, (stages, treatments); None for metrics that do not
    decide. Comparisons without data are overridden by the caller."""
    if spec.name not in DECIDING_METRICS or not treatments:
        return None
    loss = v.shortfall_relative if v.shortfall_relative is not None else np.full(v.p_better.shape, np.nan)
    return seq.decisions(
        smallest_n=np.minimum(v.n[:, treatments], v.n[:, [control]]),
        min_exposed=rule.min_exposed,
        p_better=v.p_better,
        ship_probability=rule.ship_probability,
        harm_probability=rule.harm_probability,
        loss_relative=loss,
        max_expected_loss=rule.max_expected_loss,
        low=anytime.low if anytime is not None else None,
        high=anytime.high if anytime is not None else None,
    )


@dataclass
class _Anytime:
    """Peeking-safe bounds of one deciding metric, (rows, treatments), on the
    display scale (relative lift for conversion, difference for the mean rating)."""

    scale: str
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    guard_high: np.ndarray
    alpha_ship: float
    alpha_harm: float
    guard_alpha: float

    @property
    def level(self) -> float:
        return 1.0 - self.alpha_ship - self.alpha_harm


def _anytime(
    stats: ExperimentStats,
    rule: DecisionRule,
    counts: Counts,
    part: _Slice,
    control: int,
    treatments: list[int],
    design: seq.SequentialDesign | None,
) -> _Anytime | None:
    """Anytime-valid bounds for conversion (log relative risk, shown as a relative
    lift) and the mean rating (difference in means; the mixing scale from the width of
    the stages' own scale); None for the other metrics or without a sequential design.
    The ship and harm budgets are split over the treatments (Bonferroni), the
    guardrail budget over one treatment's guardrails."""
    spec = part.spec
    if design is None or spec.name not in DECIDING_METRICS or not treatments:
        return None
    k = len(treatments)
    alpha_ship = seq.split(1.0 - rule.ship_probability, k)
    alpha_harm = seq.split(rule.harm_probability, k)
    guard_alpha = seq.split(rule.guardrail_probability, guardrail_checks(stats))
    if spec.name == "conversion":
        exposed, converted = take_rows(counts.exposed, part.rows), take_rows(counts.converted, part.rows)
        estimate, variance = seq.conversion_effect(
            exposed[:, treatments],
            converted[:, treatments],
            exposed[:, [control]],
            converted[:, [control]],
        )
        tau = design.conversion_mixture_sd

        def show(x: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.expm1(x)
            return out

        scale = "relative_lift"
    else:
        assert part.scale is not None  # rating metrics exist on stages with a scale only
        estimate, variance = seq.mean_effect(part.histogram[:, treatments], part.histogram[:, [control]], spec.weights)
        tau = design.rating_tau(part.scale.max - part.scale.min)

        def show(x: np.ndarray) -> np.ndarray:
            return x

        scale = "absolute_difference"
    b = seq.bounds(estimate, variance, tau, alpha_ship, alpha_harm)
    guard_high = estimate + seq.radius(variance, tau, guard_alpha)
    with np.errstate(over="ignore", invalid="ignore"):
        return _Anytime(
            scale, show(b.estimate), show(b.low), show(b.high), show(guard_high), alpha_ship, alpha_harm, guard_alpha
        )


def _comparison(
    stats: ExperimentStats,
    rule: DecisionRule,
    spec: MetricSpec,
    v: _Vectors,
    anytime: _Anytime | None,
    codes: np.ndarray | None,
    i: int,
    r: int,
    k: int,
    j: int,
    control: int,
    notes: list[Note],
) -> Comparison:
    """Treatment ``j`` (the ``k``-th treatment) against the control at stage ``i``, row
    ``r`` of the metric's arrays."""
    stage, variant = stats.stages[i], stats.variants[j]
    deciding = spec.name in DECIDING_METRICS
    if not (v.has_data[r, j] and v.has_data[r, control]):
        missing = variant if not v.has_data[r, j] else stats.control
        if v.has_data[r].any():  # a stage without any data gets one note for the metric
            notes.append(
                messages.note(messages.NO_DATA, stage=stage, variant=missing, metric=spec.name, what=spec.what)
            )
        return Comparison(
            treatment=variant,
            status=messages.NO_DATA,
            relative_lift=None,
            absolute_difference=None,
            p_better=None,
            p_better_error=None,
            expected_loss=None,
            expected_loss_relative=None,
            decision="not_enough_data" if deciding else None,
            has_data=False,
            decision_basis=f"No data: {missing} has no {spec.what} at {stage}; nothing to compare or decide."
            if deciding
            else None,
        )
    status = messages.OK
    relative = v.lift[r][k] if v.lift is not None else None
    if spec.relative and v.observed[r, control] == 0:
        status, relative = messages.ZERO_BASELINE, None
        notes.append(messages.note(status, stage=stage, variant=variant, metric=spec.name, what=_successes(spec)))
    elif v.extreme[r, j] or v.extreme[r, control]:
        status = messages.BOUNDARY_RATE
        for arm in (j, control):
            if v.extreme[r, arm]:
                what = _boundary(spec, at_top=v.observed[r, arm] == spec.weights.max())
                where = {"stage": stage, "variant": stats.variants[arm], "metric": spec.name}
                notes.append(messages.note(status, what=what, **where))
    p = float(v.p_better[r, k])
    loss_relative = _num(v.shortfall_relative[r, k]) if v.shortfall_relative is not None else None
    interval = None
    decision: Decision | None = None
    basis = None
    if deciding:
        assert codes is not None  # computed for every deciding metric
        decision = cast(Decision, seq.DECISION_CODES[int(codes[r, k])])
        if anytime is not None:
            interval = Estimate(_num(anytime.estimate[r, k]), _num(anytime.low[r, k]), _num(anytime.high[r, k]))
        basis = _basis(rule, spec, decision, p, loss_relative, anytime, interval)
    return Comparison(
        treatment=variant,
        status=status,
        relative_lift=relative,
        absolute_difference=v.difference[r][k],
        p_better=p,
        p_better_error=_num(v.p_error[r, k]) if v.p_error is not None else None,
        expected_loss=_num(v.shortfall[r, k]),
        expected_loss_relative=loss_relative,
        decision=decision,
        has_data=True,
        always_valid_interval=interval,
        always_valid_scale=anytime.scale if anytime is not None else None,
        always_valid_level=anytime.level if anytime is not None else None,
        decision_basis=basis,
    )


def _basis(
    rule: DecisionRule,
    spec: MetricSpec,
    decision: Decision,
    p: float,
    loss: float | None,
    anytime: _Anytime | None,
    iv: Estimate | None,
) -> str:
    """The decision in words: which conditions hold and which do not."""
    what = "ratings" if spec.from_ratings else "exposed customers"
    if decision == "not_enough_data":
        return f"Not enough data: fewer than {rule.min_exposed} {what} in an arm; no call before that."
    loss_text = f"{loss:.2%}" if loss is not None else "n/a"
    bayes = (
        f"P(better) {p:.3f} (ship at >= {rule.ship_probability:g}, harmful at <= {rule.harm_probability:g}), "
        f"expected relative loss {loss_text} (ship below {rule.max_expected_loss:.0%})"
    )
    if anytime is None or iv is None:
        return f"Fixed-horizon Bayesian rule (valid for a single look only): {bayes}."
    fmt = "{:+.1%}" if anytime.scale == "relative_lift" else "{:+.3f}"
    low = fmt.format(iv.low) if iv.low is not None else "-inf"
    high = fmt.format(iv.high) if iv.high is not None else "+inf"
    name = "relative lift" if anytime.scale == "relative_lift" else "difference"
    cs = (
        f"anytime-valid {anytime.level:.0%} interval of the {name} {low} to {high} "
        f"(ends at {1 - anytime.alpha_ship:.2%} / {1 - anytime.alpha_harm:.2%}, valid at every look)"
    )
    if decision == "ship":
        return f"Ship: the {cs} lies above 0, and {bayes}."
    if decision == "harmful":
        return f"Harmful: the {cs} lies below 0, and {bayes}."
    if iv.low is not None and iv.low > 0:
        return f"Keep running: the {cs} lies above 0 but the Bayesian condition is not met: {bayes}."
    if iv.high is not None and iv.high < 0:
        return f"Keep running: the {cs} lies below 0 but P(better) is not low enough: {bayes}."
    return f"Keep running: the {cs} still contains 0; {bayes}."


def _successes(spec: MetricSpec) -> str:
    return {"conversion": "converted customers", "top_box": "top-box ratings"}.get(spec.name, "ratings above zero")


def _boundary(spec: MetricSpec, at_top: bool) -> str:
    if spec.name == "conversion":
        return "converted all of its customers" if at_top else "converted none of its customers"
    if spec.name == "top_box":
        return "only top-box ratings" if at_top else "no top-box ratings"
    return "only top ratings" if at_top else "only bottom ratings"


def _abn(x: np.ndarray, has_data: np.ndarray, relative: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """P(best) and expected loss of choosing each variant among those with data
    (stages with fewer than two get None)."""
    masked = np.where(has_data[..., None], x, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    winner = masked.argmax(axis=1)  # (stages, draws)
    variants = x.shape[1]
    p_best = np.stack([(winner == j).mean(-1) for j in range(variants)], axis=1)
    gap = np.where(has_data[..., None], best - x, 0.0)
    loss = gap.mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss_rel = (gap / best).mean(-1) if relative else None
    enough = (has_data.sum(axis=1) >= 2)[:, None] & has_data
    nan = np.full_like(loss, np.nan)
    return (
        np.where(enough, p_best, nan),
        np.where(enough, loss, nan),
        np.where(enough, loss_rel, nan) if loss_rel is not None else None,
    )


def _estimates(x: np.ndarray, lo_q: float, hi_q: float) -> list[list[Estimate | None]]:
    """Estimates over the last axis, as nested lists over the leading two."""
    mean = x.mean(-1)
    low, high = central_interval(x, lo_q, hi_q)
    return [[_estimate(mean[i, k], low[i, k], high[i, k]) for k in range(x.shape[1])] for i in range(x.shape[0])]


def _estimate(mean: float, low: float, high: float) -> Estimate | None:
    values = (_num(mean), _num(low), _num(high))
    return None if any(v is None for v in values) else Estimate(*values)


def _num(x: SupportsFloat) -> float | None:
    value = float(x)
    return value if np.isfinite(value) else None


def _journey(
    stats: ExperimentStats,
    rule: DecisionRule,
    counts: Counts,
    conversion: np.ndarray,
    control: int,
    final: MetricResult,
) -> Journey:
    """The funnel: each stage's conversion given the previous stage, as the ratio of
    the two stages' conversion rates (draw by draw)."""
    lo_q, hi_q = (1 - rule.credible_level) / 2, (1 + rule.credible_level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = counts.converted / counts.exposed
    steps = conversion.copy()
    steps[1:] = conversion[1:] / conversion[:-1]
    observed = rates.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        observed[1:] = rates[1:] / rates[:-1]
    usable = counts.exposed > 0
    usable[1:] &= (counts.exposed[:-1] > 0) & (counts.converted[:-1] > 0)
    step_est = _estimates(steps, lo_q, hi_q)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        step_lift = _estimates(steps / steps[:, [control]] - 1, lo_q, hi_q)
    variants = []
    for j, variant in enumerate(stats.variants):
        funnel = []
        for i, stage in enumerate(stats.stages):
            ok = usable[i, j]
            lift = step_lift[i][j] if ok and usable[i, control] and j != control else None
            funnel.append(FunnelStep(stage, _num(observed[i, j]) if ok else None, step_est[i][j] if ok else None, lift))
        lifts = [(s.lift.mean, s.stage) for s in funnel if s.lift is not None and s.lift.mean is not None]
        gain = max(lifts, default=None)
        loss = min(lifts, default=None)
        variants.append(
            JourneyVariant(
                variant=variant,
                end_to_end=final.arm(variant).posterior,
                steps=tuple(funnel),
                largest_gain_stage=gain[1] if gain is not None and gain[0] > 0 else None,
                largest_loss_stage=loss[1] if loss is not None and loss[0] < 0 else None,
            )
        )
    return Journey(final_stage=stats.stages[-1], variants=tuple(variants), end_to_end=final.comparisons)
