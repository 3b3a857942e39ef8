"""The experiment service: every change to a definition or a lifecycle goes through
here, whether it comes from the JSON API, the web pages or the CLI.

Each function works in the caller's session and transaction (``Database.write()``)
and takes an already validated :class:`ExperimentDefinition`. Every mutating call
begins with ``bump_version``: on PostgreSQL that row lock serialises all definition
changes across workers, so the checks made after it (duplicate key, frozen fields,
free layer buckets) cannot race; on SQLite ``BEGIN IMMEDIATE`` already does.

Rules, in one place:
- keys are immutable (and are the hashing salt);
- a draft may change freely; once started (running or paused) the variants (keys,
  weights, control), journey, measured stages and questions, target stage, layer
  and layer share
  are frozen, because changing them would move or mis-measure enrolled customers:
  clone the experiment as its next iteration instead;
- while started, traffic may be raised but not lowered (lowering would drop enrolled
  customers); name, hypothesis, variant descriptions, decision, prior and forced
  variants may change; targeting may change too (it only decides who is enrolled
  from then on; customers already enrolled stay), and the response and audit log say so;
- a stopped experiment is read-only;
- lifecycle: draft -> running <-> paused, running|paused -> stopped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, selectinload

from analysis.types import DecisionRule, Prior

from . import journeys
from .bucketing import LayerFull, allocate_layer_ranges
from .definitions import (
    MAX_NAME,
    SLUG,
    WEIGHTS_NORMALISED,
    ExperimentDefinition,
    TargetingRule,
    VariantDefinition,
    definition_to_mapping,
    parse_definition,
)
from .errors import Conflict, InvalidInput, NotFound
from .models import AuditEntry, Experiment, Journey, Variant, utcnow
from .models import ExperimentStatus as Status
from .versioning import bump_version
from .warehouse import sources

STATUSES: tuple[Status, ...] = get_args(Status)
STARTED: tuple[Status, ...] = ("running", "paused")
Action = Literal["start", "pause", "resume", "stop"]
# action -> (statuses it may start from, status it leads to, audit verb)
TRANSITIONS: dict[str, tuple[tuple[Status, ...], Status, str]] = {
    "start": (("draft",), "running", "started"),
    "pause": (("running",), "paused", "paused"),
    "resume": (("paused",), "running", "resumed"),
    "stop": (("running", "paused"), "stopped", "stopped"),
}
FROZEN_FIELDS = (
    "variants",
    "journey",
    "stages",
    "metrics",
    "satisfaction_scale",
    "target_stage",
    "layer",
    "layer_share",
)
_ITERATION = re.compile(r"^(?P<base>.+)-v(?P<n>\d+)$")


@dataclass(frozen=True)
class Saved:
    """The outcome of a create/update/apply, for the caller to report."""

    experiment: Experiment
    action: Literal["created", "updated", "unchanged"]
    # field -> {"from": old, "to": new}, in the canonical (wire) form.
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    items: list[Experiment]
    total: int
    page: int
    per_page: int


# -- reading -------------------------------------------------------------------------


def _by_key(session: Session, key: str, *, fresh: bool = False) -> Experiment | None:
    query = (
        select(Experiment)
        .where(Experiment.key == key)
        .options(selectinload(Experiment.variants), selectinload(Experiment.journey).selectinload(Journey.questions))
    )
    if fresh:  # re-read after taking the lock, over anything the identity map holds
        query = query.execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def get_experiment(session: Session, key: str, *, fresh: bool = False) -> Experiment:
    experiment = _by_key(session, key, fresh=fresh)
    if experiment is None:
        raise NotFound(f"No experiment with key {key!r}.", code="experiment_not_found")
    return experiment


def list_experiments(
    session: Session,
    *,
    statuses: Iterable[str] = (),
    stage: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> Page:
    """Newest first. ``stage`` filters on the target stage (the stage being tested)."""
    conditions: list[ColumnElement[bool]] = []
    statuses = tuple(statuses)
    if statuses:
        conditions.append(Experiment.status.in_(statuses))
    if stage is not None:
        conditions.append(Experiment.target_stage == stage)
    total = session.scalar(select(func.count()).select_from(Experiment).where(*conditions)) or 0
    items = session.scalars(
        select(Experiment)
        .where(*conditions)
        .options(selectinload(Experiment.variants))
        .order_by(Experiment.created_at.desc(), Experiment.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return Page(items=list(items), total=total, page=page, per_page=per_page)


def audit_log(session: Session, experiment: Experiment) -> list[AuditEntry]:
    """Newest first."""
    return list(
        session.scalars(
            select(AuditEntry).where(AuditEntry.experiment_id == experiment.id).order_by(AuditEntry.id.desc())
        )
    )


def definition_of(experiment: Experiment) -> ExperimentDefinition:
    return ExperimentDefinition(
        key=experiment.key,
        name=experiment.name,
        hypothesis=experiment.hypothesis,
        journey=experiment.journey.key,
        stages=tuple(experiment.stages),
        metrics=tuple(experiment.metrics[s] for s in experiment.stages if s in experiment.metrics),
        target_stage=experiment.target_stage,
        variants=tuple(
            VariantDefinition(key=v.key, description=v.description, weight=v.weight, is_control=v.is_control)
            for v in experiment.variants
        ),
        traffic=experiment.traffic,
        targeting=tuple(
            TargetingRule(
                attribute=rule["attribute"],
                op=rule["op"],
                value=tuple(rule["value"]) if isinstance(rule["value"], list) else rule["value"],
            )
            for rule in experiment.targeting
        ),
        layer=experiment.layer,
        layer_share=experiment.layer_share,
        decision=DecisionRule.from_mapping(experiment.decision),
        prior=Prior.from_mapping(experiment.prior),
        forced_variants=MappingProxyType(dict(experiment.forced_variants)),
        warehouse_source=experiment.warehouse_source.key if experiment.warehouse_source is not None else None,
    )


def export_definition(experiment: Experiment) -> dict[str, Any]:
    """The experiment's definition in the canonical wire/TOML form: what the API
    returns, what ``experiments export`` writes, and what tests compare to show
    that the API, files and web form store identical experiments."""
    return definition_to_mapping(definition_of(experiment))


def with_changes(experiment: Experiment, changes: Mapping[str, Any]) -> ExperimentDefinition:
    """The definition after a partial update (the PATCH body or a form's fields):
    each top-level field given replaces the stored one; ``null`` resets a field to its
    default, and clearing ``layer`` also clears ``layer_share``."""
    merged = export_definition(experiment)
    if "journey" not in changes and ("stages" in changes or "satisfaction_scale" in changes):
        _as_implicit(experiment, merged, changes)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    if "layer" in changes and changes["layer"] is None and changes.get("layer_share") is None:
        merged.pop("layer_share", None)
    return parse_definition(merged)


def _as_implicit(experiment: Experiment, merged: dict[str, Any], changes: Mapping[str, Any]) -> None:
    """A patch of ``stages`` or ``satisfaction_scale`` without ``journey`` (the form
    from before journeys): stages of the current journey choose among them (the
    questions of stages left out go); otherwise, or with a scale, the experiment
    moves to the implicit journey of its stages and scale (``journeys``)."""
    stages = changes.get("stages")
    known = {stage.key for stage in experiment.journey.stages}
    if "satisfaction_scale" not in changes and isinstance(stages, list) and set(stages) <= known:
        at = {q.key: q.stage for q in experiment.journey.questions}
        merged["metrics"] = [key for key in merged.get("metrics", []) if at.get(key) in stages] or None
        return
    merged.pop("journey", None)
    merged.pop("metrics", None)
    if "satisfaction_scale" not in changes:
        target = experiment.metrics.get(experiment.target_stage)
        question = next((q for q in experiment.journey.questions if q.key == target), None)
        if question is not None:
            merged["satisfaction_scale"] = {"min": question.scale_min, "max": question.scale_max}


def diff(old: ExperimentDefinition, new: ExperimentDefinition) -> dict[str, dict[str, Any]]:
    before, after = definition_to_mapping(old), definition_to_mapping(new)
    return {
        name: {"from": before.get(name), "to": after.get(name)}
        for name in dict.fromkeys([*before, *after])
        if before.get(name) != after.get(name)
    }


# -- writing -------------------------------------------------------------------------


def _audit(session: Session, experiment: Experiment, actor: str, action: str, details: dict[str, Any]) -> None:
    session.add(
        AuditEntry(
            experiment_id=experiment.id,
            experiment_key=experiment.key,
            actor=actor,
            action=action,
            details=details,
            at=utcnow(),
        )
    )


def _store(session: Session, experiment: Experiment, definition: ExperimentDefinition) -> None:
    """Copy a resolved definition onto the row. Variants are matched by key and
    updated in place, so their ids (which exposures reference) survive edits."""
    data = definition_to_mapping(definition)
    experiment.name = definition.name
    experiment.hypothesis = definition.hypothesis
    experiment.journey = journeys.get_journey(session, data["journey"])
    experiment.stages = data["stages"]
    stage_of = {q.key: q.stage for q in experiment.journey.questions}
    experiment.metrics = {stage_of[key]: key for key in data["metrics"]}
    experiment.target_stage = definition.target_stage
    experiment.traffic = definition.traffic
    experiment.targeting = data["targeting"]
    experiment.layer = definition.layer
    experiment.layer_share = definition.layer_share
    experiment.decision = data["decision"]
    experiment.prior = data["prior"]
    experiment.forced_variants = data["forced_variants"]
    experiment.warehouse_source = sources.source_for_experiment(session, definition.warehouse_source)
    existing = {variant.key: variant for variant in experiment.variants}
    variants = []
    for position, spec in enumerate(definition.variants):
        variant = existing.get(spec.key) or Variant(key=spec.key)
        variant.description = spec.description
        variant.weight = spec.weight
        variant.position = position
        variant.is_control = spec.is_control
        variants.append(variant)
    experiment.variants = variants


def _create(session: Session, definition: ExperimentDefinition, actor: str, *, cloned_from: str | None = None) -> Saved:
    definition = journeys.resolve_definition(session, definition)
    if _by_key(session, definition.key) is not None:
        raise Conflict(
            "duplicate_key",
            f"An experiment with key {definition.key!r} exists already; keys are unique.",
            fields={"key": "is taken"},
        )
    now = utcnow()
    experiment = Experiment(
        key=definition.key, salt=definition.key, status="draft", cloned_from=cloned_from, created_at=now, updated_at=now
    )
    _store(session, experiment, definition)
    session.add(experiment)
    session.flush()
    _audit(session, experiment, actor, "created", {"cloned_from": cloned_from} if cloned_from else {})
    return Saved(experiment, "created", notices=definition.notices)


def create_experiment(session: Session, definition: ExperimentDefinition, actor: str) -> Saved:
    bump_version(session)
    return _create(session, definition, actor)


def _check_changes(
    experiment: Experiment, old: ExperimentDefinition, new: ExperimentDefinition, changes: Mapping[str, Any]
) -> tuple[str, ...]:
    """Raise for changes the experiment's status forbids; return what to tell the caller."""
    if experiment.status == "stopped":
        raise Conflict(
            "experiment_stopped", f"Experiment {experiment.key!r} is stopped and read-only; clone it to run it again."
        )
    if experiment.status not in STARTED:
        return ()
    frozen = [name for name in FROZEN_FIELDS if name in changes]
    if "variants" in frozen and _assignment_shape(old) == _assignment_shape(new):
        frozen.remove("variants")  # only descriptions changed
    if frozen:
        raise Conflict(
            "frozen_field",
            f"{', '.join(frozen)} cannot change once an experiment has started; clone it as its next iteration.",
            fields={name: "frozen since the experiment started" for name in frozen},
        )
    if new.traffic < old.traffic:
        raise Conflict(
            "traffic_lowered",
            f"Traffic may only be raised while the experiment runs ({old.traffic:g} -> {new.traffic:g} "
            "would drop enrolled customers); stop it or clone it instead.",
            fields={"traffic": f"must be at least {old.traffic:g}"},
        )
    if "targeting" in changes:
        return (
            "targeting changed while started: it applies to customers enrolled from now on; "
            "customers already enrolled stay in the experiment",
        )
    return ()


def _given_changes(old: ExperimentDefinition, new: ExperimentDefinition) -> dict[str, Any]:
    """The fields an unresolved definition gives that differ from the stored ones
    (a field it leaves to a default is not a change yet), so that a frozen field is
    reported as frozen before the new value is checked against the journey."""
    given = definition_to_mapping(new)
    changes = {name: value for name, value in diff(old, new).items() if name in given}
    if "journey" not in given:  # the implicit form: its journey, stages and questions may all move
        resolved = diff(old, replace(new, journey=old.journey, stages=new.stages or old.stages, metrics=old.metrics))
        if new.scale is not None and (old.journey, old.metrics) != (new.journey, new.metrics):
            changes["satisfaction_scale"] = {"to": given["satisfaction_scale"]}
        changes |= {name: value for name, value in resolved.items() if name in ("stages",)}
    return changes


def _assignment_shape(definition: ExperimentDefinition) -> tuple[tuple[str, float, bool], ...]:
    return tuple((v.key, v.weight, v.is_control) for v in definition.variants)


def _update(session: Session, experiment: Experiment, definition: ExperimentDefinition, actor: str) -> Saved:
    if definition.key != experiment.key:
        raise Conflict(
            "key_immutable",
            "An experiment's key cannot change; clone it to use another key.",
            fields={"key": f"must stay {experiment.key!r}"},
        )
    old = definition_of(experiment)
    if experiment.status in STARTED:
        _check_changes(experiment, old, definition, _given_changes(old, definition))
    definition = journeys.resolve_definition(session, definition)
    changes = diff(old, definition)
    notices = _check_changes(experiment, old, definition, changes)
    if not changes:
        return Saved(experiment, "unchanged", notices=_parser_notices(old, definition))
    _store(session, experiment, definition)
    experiment.updated_at = utcnow()  # also when only variant rows changed
    _audit(session, experiment, actor, "updated", {"changes": changes})
    session.flush()
    return Saved(experiment, "updated", changes=changes, notices=_parser_notices(old, definition) + notices)


def _parser_notices(old: ExperimentDefinition, new: ExperimentDefinition) -> tuple[str, ...]:
    """The parser's notices, less "weights normalised" when the normalised weights are
    the stored ones: an edit form sends the stored weights back rounded for display
    (three thirds sum to 0.999999), and the person changed nothing."""
    same_weights = [v.key for v in old.variants] == [v.key for v in new.variants] and all(
        abs(a.weight - b.weight) <= 1e-6 for a, b in zip(old.variants, new.variants, strict=True)
    )
    if not same_weights:
        return new.notices
    return tuple(notice for notice in new.notices if not notice.startswith(WEIGHTS_NORMALISED))


def update_experiment(session: Session, key: str, definition: ExperimentDefinition, actor: str) -> Saved:
    """Replace the definition of experiment ``key`` (as far as its status allows)."""
    bump_version(session)
    return _update(session, get_experiment(session, key, fresh=True), definition, actor)


def patch_experiment(session: Session, key: str, changes: Mapping[str, Any], actor: str) -> Saved:
    """Apply a partial update (see :func:`with_changes`), merged under the lock so two
    concurrent patches of different fields both survive."""
    bump_version(session)
    experiment = get_experiment(session, key, fresh=True)
    return _update(session, experiment, with_changes(experiment, changes), actor)


def apply_definition(session: Session, definition: ExperimentDefinition, actor: str) -> Saved:
    """Create, or update a draft, so that it matches ``definition``; the definition
    files' way in. An unchanged definition writes nothing (not even the version, so
    re-applying a folder does not make every worker reload)."""
    current = _by_key(session, definition.key)
    if current is not None and _resolves_to(session, current, definition):
        return Saved(current, "unchanged", notices=definition.notices)
    bump_version(session)
    current = _by_key(session, definition.key, fresh=True)
    if current is None:
        return _create(session, definition, actor)
    if current.status != "draft":
        if _resolves_to(session, current, definition):
            return Saved(current, "unchanged", notices=definition.notices)
        raise Conflict(
            "not_a_draft",
            f"Experiment {current.key!r} is {current.status}; definition files only update drafts. "
            "Change it through the API or the web pages, or clone it as its next iteration.",
        )
    return _update(session, current, definition, actor)


def _resolves_to(session: Session, experiment: Experiment, definition: ExperimentDefinition) -> bool:
    """Whether ``definition`` is what ``experiment`` holds already. Resolving an
    implicit journey may create it (and questions), so this runs in a savepoint
    that is rolled back: an unchanged file writes nothing."""
    if definition.journey is not None:
        return not diff(definition_of(experiment), journeys.resolve_definition(session, definition))
    savepoint = session.begin_nested()
    try:
        return not diff(definition_of(experiment), journeys.resolve_definition(session, definition))
    finally:
        savepoint.rollback()


def change_status(session: Session, key: str, action: Action, actor: str) -> Experiment:
    """Move an experiment through its lifecycle. Starting one in a layer gives it free
    buckets of the layer; stopping it frees them (the ranges stay on record)."""
    bump_version(session)
    experiment = get_experiment(session, key, fresh=True)
    allowed_from, target, verb = TRANSITIONS[action]
    if experiment.status not in allowed_from:
        raise Conflict(
            "invalid_transition",
            f"Cannot {action} experiment {key!r}: it is {experiment.status} "
            f"(only {' or '.join(allowed_from)} experiments can be {verb}).",
        )
    details: dict[str, Any] = {"from": experiment.status, "to": target}
    now = utcnow()
    if action == "start":
        if experiment.layer is not None:
            experiment.layer_ranges = _allocate(session, experiment)
            details["layer_ranges"] = experiment.layer_ranges
        experiment.started_at = now
    elif action == "stop":
        experiment.stopped_at = now
    experiment.status = target
    experiment.updated_at = now
    _audit(session, experiment, actor, verb, details)
    session.flush()
    return experiment


def _allocate(session: Session, experiment: Experiment) -> list[list[int]]:
    others = session.scalars(
        select(Experiment.layer_ranges).where(
            Experiment.layer == experiment.layer,
            Experiment.status.in_(STARTED),
            Experiment.id != experiment.id,
        )
    )
    taken = [bucket_range for ranges in others for bucket_range in (ranges or [])]
    try:
        return allocate_layer_ranges(taken, experiment.layer_share or 0.0)
    except LayerFull as exc:
        raise Conflict(
            "layer_full",
            f"Layer {experiment.layer!r} has no room for experiment {experiment.key!r}: {exc}. "
            "Stop another experiment in the layer or lower this one's layer_share.",
        ) from None


def next_iteration_key(session: Session, key: str) -> str:
    """``checkout`` -> ``checkout-v2``; ``checkout-v2`` -> ``checkout-v3``; always one
    past the highest iteration that exists."""
    match = _ITERATION.match(key)
    base = match.group("base") if match else key
    existing = session.scalars(select(Experiment.key).where(Experiment.key.startswith(f"{base}-v", autoescape=True)))
    numbers = [int(m.group("n")) for k in existing if (m := _ITERATION.match(k)) and m.group("base") == base]
    number = max([1, *numbers, int(match.group("n")) if match else 1]) + 1
    suffix = f"-v{number}"
    return base[: 64 - len(suffix)] + suffix


_ITERATION_NAME = re.compile(r"^(?P<base>.*?) \(iteration \d+\)$")


def iteration_name(name: str, new_key: str) -> str:
    """``One-page checkout`` cloned as ``checkout-v2`` -> ``One-page checkout
    (iteration 2)``, so the list tells the iterations apart; a clone under a key of
    another form keeps the name."""
    match = _ITERATION.match(new_key)
    if match is None:
        return name
    base_match = _ITERATION_NAME.match(name)
    base = base_match.group("base") if base_match else name
    suffix = f" (iteration {match.group('n')})"
    return base[: MAX_NAME - len(suffix)] + suffix


def clone_experiment(session: Session, key: str, actor: str, *, new_key: str | None = None) -> Saved:
    """Copy the definition into a new draft: the way to change what is frozen."""
    if new_key is not None and not (isinstance(new_key, str) and SLUG.fullmatch(new_key)):
        raise InvalidInput({"key": "must be a slug: 1-64 lowercase letters, digits, '-' or '_'"})
    bump_version(session)
    source = get_experiment(session, key, fresh=True)
    new_key = new_key or next_iteration_key(session, source.key)
    definition = definition_of(source)
    name = iteration_name(definition.name, new_key)
    saved = _create(session, replace(definition, key=new_key, name=name), actor, cloned_from=source.key)
    _audit(session, source, actor, "cloned", {"to": new_key})
    session.flush()
    return saved


__all__ = [
    "STATUSES",
    "TRANSITIONS",
    "Page",
    "Saved",
    "apply_definition",
    "audit_log",
    "change_status",
    "clone_experiment",
    "create_experiment",
    "definition_of",
    "diff",
    "export_definition",
    "get_experiment",
    "iteration_name",
    "list_experiments",
    "next_iteration_key",
    "patch_experiment",
    "update_experiment",
    "with_changes",
]
