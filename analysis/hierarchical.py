"""The full model (opt-in): one PyMC model over all stages that partially pools each
treatment's effect across stages, returning the same result types as ``analyze``.

- Conversion: ``converted ~ Binomial(exposed, p)``, ``logit p[s, v] = level[s]
  + effect[s, v] - mean_v effect[s, v]`` (the level is the stage's mean log-odds)
  with ``effect[s, control] = 0`` and, per treatment,
  ``effect[s, v] = mu[v] + tau[v] * z[s, v]`` (non-centred; mu ~ N(0, 0.5),
  z ~ N(0, 1), tau ~ Gamma(3, 30): mean 0.1, 95% below 0.21, so stage-to-stage
  differences in a treatment's log-odds effect beyond 0.4 are rare, and zero density
  at 0, a boundary-avoiding prior for a scale estimated from a handful of stages). A
  treatment that lifts most stages pulls a noisy stage towards its typical lift;
  with plenty of data per stage the stages speak for themselves. Levels ~ N(logit of
  the prior's mean rate, 2.5).
- Satisfaction: an ordered-logistic model on the rating histogram of each stage x
  variant, ``P(rating <= k) = sigmoid(cut[s, k] - shift[s, v])``, with per-stage
  ordered cutpoints (N(logit(k/K), 2.5)) and the shift pooled like the conversion
  effect; the likelihood is multinomial on the aggregated counts, so its cost does
  not grow with customers. Each stage has its own scale: K is that stage's number of
  categories (stages of one K share a cutpoint variable, ``cutpoints_k{K}`` when the
  stages do not all have the same K; the likelihood pads shorter scales with empty
  categories of probability 0), and a stage without a rating question has no ordinal
  likelihood and no shift (the shift is pooled over the stages with one).

On the benchmark data (5 stages x 3 variants, 20k customers each) this samples with
R-hat < 1.01 and no divergence in 4000 draws (seeds 1-4). Tried and dropped: the
control as reference level (posterior correlation of about -0.7 between it and every
effect: twice the leapfrog steps; with Gamma(2, 20) one chain stuck in the funnel),
the centred form (hundreds of divergences), HalfNormal(0.1) or Gamma(2, 20) for tau
(a divergence or two per fit, at large tau).

Effects are on the log-odds scale (0.1 is about +10% odds); the summaries are on the
same scales as the conjugate path (rates, mean rating, top-box share, NPS), computed
draw by draw. PyMC is imported here only, when a fit is asked for. nutpie is used
when installed, PyMC's NUTS otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, SupportsFloat, TypeAlias

import numpy as np
import numpy.typing as npt

from .exceptions import AnalysisInputError
from .summarize import Counts, Posterior, put_rows, rating_specs, summarize, take_rows
from .types import DecisionRule, Diagnostics, ExperimentResult, ExperimentStats, Metric, Prior

if TYPE_CHECKING:  # imported for annotations only: PyMC is loaded when a fit is asked for
    import arviz as az
    import pymc as pm
    import xarray as xr

Tensor: TypeAlias = Any
"""A PyTensor variable of the model: PyMC ships no types and PyTensor's tensor methods
are unannotated, so the symbolic algebra of the model is not type-checked."""

R_HAT_LIMIT = 1.01
ESS_PER_CHAIN = 100  # bulk and tail ESS of at least 100 per chain (Vehtari et al. 2021)
_FREE = ("level", "effect_mu", "effect_tau", "effect_z", "cutpoints", "shift_mu", "shift_tau", "shift_z")
_UNPOOLED = ("level", "effect_stage", "cutpoints", "shift_stage")


_PAD = 100.0
"""The cutpoint above a stage's last category in the padded likelihood: the sigmoid of
anything above 30 is exactly 1 in PyTensor (and its gradient 0), so categories past the
stage's own have probability 0 and no gradient, and they hold no ratings."""


@dataclass(frozen=True)
class _Ordinal:
    """Stages whose rating questions have the same number of categories ``K``: their
    cutpoints are one variable, (rows, K - 1), ``cutpoints`` when the group is every
    stage (the single-scale model) and ``cutpoints_k{K}`` otherwise."""

    categories: int
    rows: tuple[int, ...]  # stage indices, ascending
    ratings: np.ndarray  # (rows, variants, K)
    suffix: str

    @property
    def stage_dim(self) -> str:
        return f"stage{self.suffix}"


def _ordinal_groups(counts: Counts) -> list[_Ordinal]:
    """The stages with a rating question, grouped by their number of categories (stages
    of two scales of one length, 1-5 and 0-4, share the form of the likelihood)."""
    stages = counts.exposed.shape[0]
    by_k: dict[int, dict[int, np.ndarray]] = {}
    for group in counts.groups:
        for r, i in enumerate(group.rows):
            by_k.setdefault(group.scale.categories, {})[i] = group.ratings[r]
    single = len(by_k) == 1 and all(len(rows) == stages for rows in by_k.values())
    groups = []
    for k, histograms in by_k.items():
        rows = tuple(sorted(histograms))
        ratings = np.stack([histograms[i] for i in rows])
        groups.append(_Ordinal(k, rows, ratings, "" if single else f"_k{k}"))
    return groups


def build_model(stats: ExperimentStats, prior: Prior = Prior(), *, pooling: bool = True) -> pm.Model:
    """The PyMC model of ``stats`` (see the module docstring).

    ``pooling=False`` (and any single-stage experiment, where there is nothing to pool
    and the pooled form would only add a ridge between mu and z) gives every stage x
    treatment effect its own N(0, 0.5) prior instead. The rating shift is pooled over
    the stages with a rating question alone (unpooled when there is one).
    """
    pool_shift = pooling and sum(stats.scale_of(stage) is not None for stage in stats.stages) > 1
    pooling = pooling and len(stats.stages) > 1
    import pymc as pm
    import pytensor.tensor as pt

    counts = Counts.of(stats)
    stages, variants = counts.exposed.shape
    ordinal = _ordinal_groups(counts)
    rated = sorted(i for group in ordinal for i in group.rows)
    width = max((group.categories for group in ordinal), default=0)
    shift_dim = "stage" if len(rated) == stages else "rated_stage"
    control = stats.variants.index(stats.control)
    treatments = [j for j in range(variants) if j != control]
    prior_rate = prior.conversion_alpha / (prior.conversion_alpha + prior.conversion_beta)
    coords: dict[str, list[str] | list[int]] = {
        "stage": list(stats.stages),
        "variant": list(stats.variants),
        "treatment": [stats.variants[j] for j in treatments],
    }
    single = len(ordinal) == 1 and ordinal[0].suffix == ""  # one scale length at every stage, as always
    for group in ordinal:
        if group.stage_dim != "stage":
            coords[group.stage_dim] = [stats.stages[i] for i in group.rows]
        coords[f"cut{group.suffix}"] = list(range(group.categories - 1))
    if shift_dim != "stage" and rated:
        coords[shift_dim] = [stats.stages[i] for i in rated]
    if ordinal and not single:
        coords["category"] = list(range(width))
    with pm.Model(coords=coords) as model:
        level = pm.Normal("level", mu=np.log(prior_rate / (1 - prior_rate)), sigma=2.5, dims="stage")
        effect = _effects(pm, pt, "effect", stages, treatments, control, variants, pooling)
        # The level is the stage's mean log-odds over variants, not the control's: with
        # the control as reference every effect shares its noise, and the posterior
        # correlation (about -0.7) doubled NUTS trajectories on the benchmark data.
        centred = effect - effect.mean(axis=1, keepdims=True)
        p = pm.Deterministic("p", pm.math.sigmoid(level[:, None] + centred), dims=("stage", "variant"))
        pm.Binomial("converted", n=counts.exposed, p=p, observed=counts.converted, dims=("stage", "variant"))
        if not ordinal:  # no stage asks for a rating
            return model

        cutpoints = []
        for group in ordinal:  # each stage's cutpoints over its own number of categories
            k = group.categories
            start = np.log(np.arange(1, k) / (k - np.arange(1, k)))  # logits of k/K
            cutpoints.append(
                pm.Normal(
                    f"cutpoints{group.suffix}",
                    mu=start,
                    sigma=2.5,
                    dims=(group.stage_dim, f"cut{group.suffix}"),
                    transform=pm.distributions.transforms.ordered,
                    initval=np.tile(start, (len(group.rows), 1)),
                )
            )
        shift = _effects(pm, pt, "shift", len(rated), treatments, control, variants, pool_shift, shift_dim)
        centred = shift - shift.mean(axis=1, keepdims=True)  # cutpoints of the average variant, as above
        if len(ordinal) == 1:  # the group is every stage with a question
            cuts, ratings = cutpoints[0], ordinal[0].ratings
        else:
            cuts, ratings = _padded(pt, ordinal, cutpoints, rated, variants, width)
        rows = len(rated)
        below = pm.math.sigmoid(cuts[:, None, :] - centred[:, :, None])  # (stage, variant, K-1)
        cumulative = pt.concatenate(  # type: ignore[no-untyped-call]  # unannotated in PyTensor
            [pt.zeros((rows, variants, 1)), below, pt.ones((rows, variants, 1))], axis=-1
        )
        probs = pm.Deterministic(
            "rating_probs",
            cumulative[..., 1:] - cumulative[..., :-1],
            dims=None if single else (shift_dim, "variant", "category"),
        )
        # Multinomial kernel on the aggregated histogram (its coefficient is constant).
        pm.Potential("ratings", (ratings * pt.log(pt.maximum(probs, 1e-300))).sum())
    return model


def _padded(
    pt: ModuleType, ordinal: list[_Ordinal], cutpoints: list[Tensor], rated: list[int], variants: int, width: int
) -> tuple[Tensor, np.ndarray]:
    """Cutpoints and histograms of stages of different scale lengths in one array over
    the stages with a question, (rows, width - 1) and (rows, variants, width): each
    stage's own cutpoints, then ``_PAD`` (its padding categories get probability 0 and
    hold no ratings), so one vectorised likelihood serves every scale, gathered from the
    groups' variables by a constant index. Same log density and gradient as one
    likelihood per group (checked to 1e-12), about 10% cheaper per gradient with three
    scales."""
    flat = pt.concatenate([c.flatten() for c in cutpoints] + [pt.as_tensor([_PAD])])
    pad = sum(len(g.rows) * (g.categories - 1) for g in ordinal)
    index = np.full((len(rated), width - 1), pad, dtype=np.int64)
    ratings = np.zeros((len(rated), variants, width), dtype=np.int64)
    offset = 0
    for group in ordinal:
        k = group.categories
        for r, i in enumerate(group.rows):
            row = rated.index(i)
            index[row, : k - 1] = offset + r * (k - 1) + np.arange(k - 1)
            ratings[row, :, :k] = group.ratings[r]
        offset += len(group.rows) * (k - 1)
    return flat[index], ratings


def _effects(
    pm: ModuleType,
    pt: ModuleType,
    name: str,
    stages: int,
    treatments: list[int],
    control: int,
    variants: int,
    pooling: bool,
    stage_dim: str = "stage",
) -> Tensor:
    """Per-stage treatment effects (pooled per treatment, or not), zeros for the control."""
    if pooling:
        mu = pm.Normal(f"{name}_mu", 0.0, 0.5, dims="treatment")
        tau = pm.Gamma(f"{name}_tau", alpha=3.0, beta=30.0, dims="treatment")
        z = pm.Normal(f"{name}_z", 0.0, 1.0, dims=(stage_dim, "treatment"))
        pooled = mu + tau * z
    else:
        pooled = pm.Normal(f"{name}_stage", 0.0, 0.5, dims=(stage_dim, "treatment"))
    columns = []
    for j in range(variants):
        columns.append(pt.zeros(stages) if j == control else pooled[:, treatments.index(j)])
    return pm.Deterministic(name, pt.stack(columns, axis=1), dims=(stage_dim, "variant"))


def fit_full_model(
    stats: ExperimentStats,
    *,
    prior: Prior = Prior(),
    rule: DecisionRule = DecisionRule(),
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    sample_kwargs: dict[str, Any] | None = None,
    progressbar: bool = False,
    progress: Callable[[int, int], None] | None = None,
    pooling: bool = True,
) -> ExperimentResult:
    """Fit the full model by NUTS and summarise it like ``analyze``.

    ``sample_kwargs`` go to ``pymc.sample`` last (cores, target_accept, a callback...);
    ``progress(done, total)`` is called after every iteration of every chain,
    tuning included (PyMC's sampler only; nutpie reports none).
    """
    if min(draws, tune, chains) < 1 or draws < 10:
        raise AnalysisInputError("draws (at least 10), tune and chains must be positive")
    idata, diagnostics = sample(
        build_model(stats, prior, pooling=pooling),
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        sample_kwargs=sample_kwargs,
        progressbar=progressbar,
        progress=progress,
    )
    post = idata["posterior"]
    counts = Counts.of(stats)
    stages = len(stats.stages)
    values: dict[Metric, np.ndarray] = {"conversion": _cells_last(post["p"].values)}
    if counts.groups:
        # (stages with a question, variant, draws, categories: padded to the longest scale)
        probs = _cells_last(post["rating_probs"].values)
        rated = sorted(i for group in counts.groups for i in group.rows)
        for group in counts.groups:
            part = take_rows(probs, tuple(rated.index(i) for i in group.rows))
            if part.shape[-1] > group.scale.categories:
                part = part[..., : group.scale.categories]
            for spec in rating_specs(group.scale):
                values[spec.name] = put_rows(values.get(spec.name), part @ spec.weights, group.rows, stages)
    return summarize(
        stats, rule, Posterior(values=values), method="hierarchical", draws=draws * chains, diagnostics=diagnostics
    )


def _cells_last(x: np.ndarray) -> np.ndarray:
    """(chain, draw, stage, variant[, K]) -> (stage, variant, chain * draw[, K])."""
    chains, draws = x.shape[:2]
    flat = x.reshape((chains * draws, *x.shape[2:]))
    return np.moveaxis(flat, 0, 2)


def sample(
    model: pm.Model,
    *,
    draws: int,
    tune: int,
    chains: int,
    seed: int,
    sample_kwargs: dict[str, Any] | None = None,
    progressbar: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[az.InferenceData, Diagnostics]:
    """NUTS on ``model``: ``(InferenceData, Diagnostics)``, compile and sampling timed
    apart (PyMC's sampler; with nutpie the total is reported as sampling).

    target_accept defaults to 0.95 (PyMC's is 0.8): smaller steps cost about 10% more
    leapfrog steps here and remove most of the rare divergences from the mild funnel
    between the stage-effect scale and the effects."""
    import pymc as pm

    kwargs: dict[str, Any] = {
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "random_seed": seed,
        "progressbar": progressbar,
        "target_accept": 0.95,
        "compute_convergence_checks": False,
        "model": model,
        "cores": min(chains, len(os.sched_getaffinity(0))),  # PyMC assumes half the CPUs are hyperthreads
    }
    kwargs.update(sample_kwargs or {})
    compile_seconds = None
    if importlib.util.find_spec("nutpie") is not None and "step" not in kwargs:
        sampler = "nutpie"
        kwargs.setdefault("nuts_sampler", "nutpie")
        kwargs.pop("callback", None)
    else:
        sampler = "pymc"
        started = time.perf_counter()
        initial_points, step = pm.init_nuts(
            init="jitter+adapt_diag",
            chains=chains,
            random_seed=seed,
            model=model,
            target_accept=kwargs.pop("target_accept"),
        )
        compile_seconds = time.perf_counter() - started
        kwargs.update(step=step, initvals=initial_points)
        if progress is not None:
            kwargs["callback"] = _progress_callback(progress, chains * (draws + tune), kwargs.get("callback"))
    started = time.perf_counter()
    # A trajectory that blows up early in tuning overflows the kinetic energy; NUTS
    # counts it as a divergence, so numpy's warning (an error under -W error) is noise.
    with np.errstate(over="ignore"):
        idata = pm.sample(**kwargs)
    sampling_seconds = time.perf_counter() - started
    return idata, diagnose(idata, sampler, compile_seconds, sampling_seconds)


def _progress_callback(
    progress: Callable[[int, int], None], total: int, chained: Callable[..., object] | None
) -> Callable[..., None]:
    done = 0

    def callback(**kwargs: Any) -> None:
        nonlocal done
        done += 1
        progress(min(done, total), total)
        if chained is not None:
            chained(**kwargs)

    return callback


def diagnose(
    idata: az.InferenceData, sampler: str, compile_seconds: float | None, sampling_seconds: float | None
) -> Diagnostics:
    """R-hat, bulk and tail ESS over the free parameters, and divergences."""
    import arviz as az

    post = idata["posterior"]
    names = [n for n in _FREE + _UNPOOLED if n in post]
    names += sorted(str(n) for n in post.data_vars if str(n).startswith("cutpoints_k"))  # per-scale cutpoints
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    r_hat = ess_bulk = ess_tail = None
    if chains >= 2:
        r_hat = _extreme(az.rhat(post, var_names=names), max)  # type: ignore[no-untyped-call]  # unannotated in ArviZ
    ess_bulk = _extreme(az.ess(post, var_names=names, method="bulk"), min)  # type: ignore[no-untyped-call]  # idem
    ess_tail = _extreme(az.ess(post, var_names=names, method="tail"), min)  # type: ignore[no-untyped-call]  # idem
    sample_stats = getattr(idata, "sample_stats", None)
    divergences = 0
    if sample_stats is not None and "diverging" in sample_stats:
        divergences = int(sample_stats["diverging"].sum())
    passed = (
        r_hat is not None
        and r_hat < R_HAT_LIMIT
        and ess_bulk is not None
        and ess_bulk >= ESS_PER_CHAIN * chains
        and ess_tail is not None
        and ess_tail >= ESS_PER_CHAIN * chains
        and divergences == 0
    )
    return Diagnostics(
        r_hat_max=r_hat,
        ess_bulk_min=ess_bulk,
        ess_tail_min=ess_tail,
        divergences=divergences,
        draws=int(draws),
        chains=int(chains),
        sampler=sampler,
        passed=bool(passed),
        seconds_compile=compile_seconds,
        seconds_sampling=sampling_seconds,
    )


def _extreme(dataset: xr.Dataset, pick: Callable[[npt.NDArray[np.float64]], SupportsFloat]) -> float | None:
    values = np.concatenate([np.ravel(dataset[name].values) for name in dataset.data_vars])
    values = values[np.isfinite(values)]
    return float(pick(values)) if values.size else None
