"""The attribution rules as SQL, once, for every database the statistics are
computed on: the built-in events (``ingest.rebuild`` recomputes the counters with
it) and a warehouse's (``refresh`` computes a warehouse experiment's statistics).

The rules are ingest's (``ingest.attribution``): an event counts for an experiment
when its customer has a non-forced exposure made no later than the event's cutoff
(``least(occurred_at + clock skew, received_at)``, fixed when the event arrived),
the experiment measures its stage (and, for a rating, the question it answers,
within that question's scale), it names the experiment or none, and it occurred
before the experiment stopped. Per customer and stage, the first conversion and the
latest rating (by event time, then by storage order) are the outcome; an outcome
is dated by its UTC day, never before the exposure's.

The statements take relations whose columns are named by role
(``mapping.EVENT_ROLES``; ``sequence`` orders ties, ``cutoff`` is the exposure
cutoff) so the same code reads the ``events`` table and a warehouse's table mapped
column by column. What differs between engines is in ``dialects``. Only portable
constructs are used, with ClickHouse's traps in mind: inner joins only (its outer
joins fill defaults, not NULLs), no ``CAST(NULL AS String)``, each relation
referenced once (its CTEs are inlined per reference), ``row_number()`` for the
tuple-wise first copy and latest rating (never per-column ``min``/``max``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, false, func, literal_column, null, or_, select, union_all
from sqlalchemy.sql import ColumnElement, FromClause, Select, Subquery, TableClause

from ..counters import not_before
from . import dialects
from .dialects import Name

RATING_KINDS = ("satisfaction", "rating")


def constant(value: str | int) -> ColumnElement[Any]:
    """A constant written into the SQL, not bound: some engines take no parameter
    where a constant may stand (DuckDB's GROUP BY), and the statement reads plainly."""
    if isinstance(value, int):
        return literal_column(str(int(value)))
    assert value.replace("_", "").isalnum() or value == "", value
    return literal_column(f"'{value}'")


@dataclass(frozen=True)
class Question:
    """The rating question an experiment measures at a stage. ``only_one``: the
    journey asks no other question there, so a rating naming none answers it."""

    key: str
    scale_min: int
    scale_max: int
    only_one: bool


@dataclass(frozen=True)
class Rules:
    """What decides which events count for one experiment."""

    experiment_key: str
    stages: tuple[str, ...]
    questions: Mapping[str, Question]  # measured stage -> its question
    stopped_at: datetime | None


@dataclass(frozen=True)
class Pruning:
    """Bounds that keep a warehouse scan proportional to the experiment, not to the
    history: no event occurring before ``started_at - skew`` can follow one of its
    exposures, and copies of one event share their event time (retries resend the
    same event), so the first copy of every event that can count is inside."""

    started_at: datetime
    skew_seconds: float


def _earliest(dialect: Name, occurred: Any, pruning: Pruning) -> ColumnElement[bool]:
    return occurred >= dialects.timestamp(dialect, pruning.started_at - timedelta(seconds=pruning.skew_seconds))


def id_key(dialect: Name, text: Any) -> ColumnElement[Any]:
    """What an increment matches sets of ids by (``events_of``): their 64-bit hash on
    the engines that have one, the text elsewhere. A set of numbers is a fraction of
    the text's size and faster to probe (on chdb at 50M events, the increment's
    outcome statement took 4.6 s rather than 5.3 s). It stays exact: every copy of an
    event shares its hash, so none is missed, and a colliding id only brings in
    another customer's events, which the join to the increment's customers' own
    exposures (matched by text) leaves out."""
    return dialects.id_hash(dialect, text) if dialects.windows_repeated_ids_only(dialect) else text


def event_copies(
    dialect: Name,
    table: TableClause,
    columns: Mapping[str, str],
    *,
    skew_seconds: float,
    pruning: Pruning | None,
    received_before: datetime | None = None,
    event_ids: Select[Any] | None = None,
) -> Select[Any]:
    """A warehouse's stored event rows (every copy), columns named by role: as the
    warehouse held them at ``received_before`` (copies received later are not
    there yet), and only the events ``event_ids`` when given."""
    c = table.c
    mapped = {role: c[name] for role, name in columns.items()}
    occurred, received = mapped["occurred_at"], mapped["received_at"]
    cutoff: ColumnElement[Any] = (
        mapped["exposure_cutoff"]
        if "exposure_cutoff" in mapped
        else func.least(dialects.plus_seconds(dialect, occurred, skew_seconds), received)
    )
    sequence = mapped.get("sequence")
    rows = select(
        mapped["event_id"].label("event_id"),
        (sequence if sequence is not None else constant(0)).label("sequence"),
        mapped["customer_id"].label("customer_id"),
        mapped["stage"].label("stage"),
        mapped["kind"].label("kind"),
        (mapped["metric"] if "metric" in mapped else null()).label("metric"),
        (mapped["value"] if "value" in mapped else null()).label("value"),
        occurred.label("occurred_at"),
        received.label("received_at"),
        cutoff.label("cutoff"),
        (mapped["experiment"] if "experiment" in mapped else null()).label("experiment"),
    )
    if pruning is not None:
        rows = rows.where(_earliest(dialect, occurred, pruning))
    if received_before is not None:
        rows = rows.where(received < dialects.timestamp(dialect, received_before))
    if event_ids is not None:
        rows = rows.where(id_key(dialect, mapped["event_id"]).in_(event_ids))
    return rows


def role_events(dialect: Name, copies: Select[Any], *, sequenced: bool, subset: bool) -> Subquery:
    """A warehouse's events as one row per event: the first stored copy of each
    ``event_id`` among ``copies`` (``event_copies``), earliest received, then lowest
    ``sequence``. ``subset``: the copies are a few events' (an increment's)."""
    # A subset is referenced once: splitting it would make engines that inline a
    # subquery per reference select it three times.
    repeated_only = not subset and dialects.windows_repeated_ids_only(dialect)
    return first_copies(dialect, copies.subquery("copies"), sequenced=sequenced, repeated_only=repeated_only)


@dataclass(frozen=True)
class Bucket:
    """One of ``of`` parts of the ids (customers', events'), told apart by a hash: the
    statistics of a bucket of customers need only its own customers' events and
    exposures, so they can be computed bucket by bucket in a fraction of the memory."""

    index: int
    of: int

    def holds(self, dialect: Name, key: Any) -> ColumnElement[bool]:
        return dialects.id_hash(dialect, key) % constant(self.of) == constant(self.index)


def repeated_ids(dialect: Name, copies: Subquery, *, part: Bucket | None = None) -> Select[Any]:
    """The hashes of the event ids stored more than once among ``copies`` (``id_hash``;
    two ids sharing a hash only make both be treated as repeated, which is safe);
    only those in ``part`` of the hashes when given."""
    hashed = dialects.id_hash(dialect, copies.c.event_id)
    found = select(hashed.label("id_hash"))
    if part is not None and part.of > 1:
        found = found.where(part.holds(dialect, copies.c.event_id))
    return found.group_by(hashed).having(func.count() > 1)


# The roles a mapping may leave out, which ``event_copies`` gives as NULL.
OPTIONAL_EVENT_ROLES = ("metric", "value", "experiment")


def repeated_first_copies(
    dialect: Name, copies: Subquery, repeated: FromClause, columns: Mapping[str, str], *, sequenced: bool
) -> Select[Any]:
    """The first copy of each repeated event (``repeated``: see ``repeated_ids``),
    with the columns ``bucket_events`` reads, but for the optional roles the mapping
    leaves out (a column of NULLs is refused in a table by ClickHouse)."""
    k = copies.c
    hashed = dialects.id_hash(dialect, k.event_id)
    among = select(copies).where(hashed.in_(select(repeated.c.id_hash))).subquery("copies")
    # Not partitioned by the ids' hash first: for these copies (every one of an id
    # stored more than once) that took chdb 5.0 s rather than 4.0 s at 50M events.
    first = first_copies(dialect, among, sequenced=sequenced, repeated_only=False, hash_first=False)
    return select(*(c for c in first.c if c.name in columns or c.name not in OPTIONAL_EVENT_ROLES))


def bucket_events(
    dialect: Name, copies: Subquery, repeated: FromClause, firsts: FromClause, bucket: Bucket
) -> Subquery:
    """The first copies (see ``role_events``) of the events of ``bucket``'s customers:
    those stored once, and the repeated events' first copies, found once for all
    buckets (``firsts``, from ``repeated_first_copies``)."""
    k = copies.c
    once = select(copies).where(
        bucket.holds(dialect, k.customer_id), dialects.id_hash(dialect, k.event_id).not_in(select(repeated.c.id_hash))
    )
    held = {c.name for c in firsts.c}
    theirs = select(*(firsts.c[c.name] if c.name in held else null().label(c.name) for c in k)).where(
        bucket.holds(dialect, firsts.c.customer_id)
    )
    return union_all(once, theirs).subquery("events")


def first_copies(
    dialect: Name,
    copies: Subquery,
    *,
    sequenced: bool,
    repeated_only: bool,
    repeated: FromClause | None = None,
    hash_first: bool = True,
) -> Subquery:
    """The first stored copy of each event among ``copies`` (earliest received,
    then lowest ``sequence``). ``repeated``: see ``first_rows``; ``hash_first``:
    where the engine ``sorts_ids_by_hash``."""
    k = copies.c
    order = [k.received_at, k.sequence] if sequenced else [k.received_at, k.customer_id, k.stage]
    hash_first = hash_first and dialects.sorts_ids_by_hash(dialect)
    return first_rows(
        dialect,
        copies,
        k.event_id,
        order,
        repeated_only=repeated_only,
        repeated=repeated,
        hash_first=hash_first,
        name="events",
    )


def first_rows(
    dialect: Name,
    rows: Subquery,
    key: Any,
    order: list[Any],
    *,
    repeated_only: bool,
    name: str,
    repeated: FromClause | None = None,
    hash_first: bool = False,
) -> Subquery:
    """The first of ``rows`` in ``order`` for each ``key``. ``repeated_only``: order
    only the rows of keys held more than once (most events arrive once and most
    customers are exposed once, and ordering every row costs more than the rest of
    the statistics); it reads ``rows`` three times, which engines that inline
    subqueries per reference repeat, and finds those keys twice unless ``repeated``
    holds them (``repeated_ids``, in a temporary table). ``hash_first``: partition
    by the key's hash, then the key (see ``dialects.sorts_ids_by_hash``)."""
    partition = [dialects.id_hash(dialect, key), key] if hash_first else [key]
    first = func.row_number().over(partition_by=partition, order_by=order)
    columns = list(rows.c)
    if not repeated_only:
        ranked = select(rows, first.label("first")).subquery("ranked")
        return select(*(ranked.c[column.name] for column in columns)).where(ranked.c.first == 1).subquery(name)
    # Keys told apart by a 64-bit hash: a set of numbers is a fraction of the size of
    # the keys' text, and two keys sharing a hash only send both through the window.
    hashed = dialects.id_hash(dialect, key)
    held = select(hashed).group_by(hashed).having(func.count() > 1) if repeated is None else select(repeated.c.id_hash)
    once = select(rows).where(hashed.not_in(held))
    ranked = select(rows, first.label("first")).where(hashed.in_(held)).subquery("ranked")
    firsts = select(*(ranked.c[column.name] for column in columns)).where(ranked.c.first == 1)
    return union_all(once, firsts).subquery(name)


def arrived_from(
    dialect: Name, table: TableClause, columns: Mapping[str, str], *, since: datetime, before: datetime
) -> Select[Any]:
    """The earliest event time among the copies received in [since, before): their
    earlier copies are no earlier (copies of an event share its time), so a search
    for them can start there."""
    c = table.c
    received = c[columns["received_at"]]
    return select(func.min(c[columns["occurred_at"]])).where(
        received >= dialects.timestamp(dialect, since), received < dialects.timestamp(dialect, before)
    )


def arrival_copies(
    dialect: Name,
    table: TableClause,
    columns: Mapping[str, str],
    *,
    before: datetime,
    arrived_from: datetime,
    pruning: Pruning | None,
) -> Select[Any]:
    """Every copy of the events that arrived in a period, and of others of their
    time (copies of an event share it): from ``arrived_from`` (see ``arrived_from``)
    on, received before ``before``. The first copies among them received since the
    period began are the events that arrived."""
    c = table.c
    occurred, received = c[columns["occurred_at"]], c[columns["received_at"]]
    sequence = c[columns["sequence"]] if "sequence" in columns else constant(0)
    copies = select(
        c[columns["event_id"]].label("event_id"),
        c[columns["customer_id"]].label("customer_id"),
        c[columns["stage"]].label("stage"),
        occurred.label("occurred_at"),
        received.label("received_at"),
        sequence.label("sequence"),
    ).where(occurred >= dialects.timestamp(dialect, arrived_from), received < dialects.timestamp(dialect, before))
    return copies if pruning is None else copies.where(_earliest(dialect, occurred, pruning))


def touched_customers(
    dialect: Name,
    copies: Subquery,
    exposures: TableClause,
    exposure_columns: Mapping[str, str],
    experiment_key: str,
    *,
    since: datetime,
    skew_seconds: float,
    sequenced: bool,
    repeated: FromClause | None = None,
) -> Select[Any]:
    """The customers whose outcomes the events received since ``since`` may change
    (``customer_id``, with their earliest exposure, ``exposed_at``): exposed to the
    experiment, with an event whose first copy arrived then and which occurred late
    enough to follow their exposure. ``copies``: ``arrival_copies``; ``repeated``:
    the hashes of the ids stored more than once among them, when held. A customer
    who only got later copies (a re-send, under them or another customer), or
    events from before their exposure, keeps their outcomes; leaving them out
    keeps the history an increment reads short."""
    repeated_only = dialects.windows_repeated_ids_only(dialect)
    first = first_copies(dialect, copies, sequenced=sequenced, repeated_only=repeated_only, repeated=repeated)
    a = first.c
    # Per customer, the latest of those events: if any of them can follow the
    # customer's exposure, the latest can (a superset, which is safe), and the join
    # to the exposures then holds one row per customer rather than per event.
    latest = [func.max(a.occurred_at).label("occurred_at"), func.max(a.received_at).label("received_at")]
    arrivals = (
        select(a.customer_id, *latest)
        .where(a.received_at >= dialects.timestamp(dialect, since))
        .group_by(a.customer_id)
        .subquery("arrivals")
    )
    x = {role: exposures.c[name] for role, name in exposure_columns.items()}
    return (
        select(x["customer_id"].label("customer_id"), func.min(x["exposed_at"]).label("exposed_at"))
        .select_from(exposures)
        .join(arrivals, arrivals.c.customer_id == x["customer_id"])
        .where(
            x["experiment"] == experiment_key,
            x["exposed_at"] <= dialects.plus_seconds(dialect, arrivals.c.occurred_at, skew_seconds),
            x["exposed_at"] <= arrivals.c.received_at,
        )
        .group_by(x["customer_id"])
    )


def events_of(
    dialect: Name, table: TableClause, columns: Mapping[str, str], customers: Select[Any], *, pruning: Pruning | None
) -> Select[Any]:
    """The ids of the ``customers``' events (with the copies of them stored under
    others, the first copy is still told from the later ones), as ``id_key``s: to
    be matched with ``event_copies(event_ids=...)``."""
    c = table.c
    listed = customers.subquery("customers")
    theirs = select(id_key(dialect, listed.c[0]))
    key = id_key(dialect, c[columns["event_id"]])
    ids = select(key).distinct().where(id_key(dialect, c[columns["customer_id"]]).in_(theirs))
    return ids if pruning is None else ids.where(_earliest(dialect, c[columns["occurred_at"]], pruning))


def role_exposures(
    dialect: Name,
    table: TableClause,
    columns: Mapping[str, str],
    experiment_key: str,
    *,
    customers: Select[Any] | None = None,
    bucket: Bucket | None = None,
) -> Subquery:
    """A warehouse's exposures to one experiment, one row per customer (the earliest:
    the first assignment), columns named by role; only the ``customers``' (or the
    ``bucket``'s) when given."""
    c = table.c
    mapped = {role: c[name] for role, name in columns.items()}
    forced = mapped.get("forced")
    rows = select(
        mapped["customer_id"].label("customer_id"),
        mapped["variant"].label("variant"),
        mapped["exposed_at"].label("exposed_at"),
        (forced if forced is not None else false()).label("forced"),
    ).where(mapped["experiment"] == experiment_key)
    if customers is not None:
        rows = rows.where(mapped["customer_id"].in_(customers))
    if bucket is not None:
        rows = rows.where(bucket.holds(dialect, mapped["customer_id"]))
    assignments = rows.subquery("assignments")
    x = assignments.c
    # A window over every row, not an aggregate picking the variant (text) by a key
    # (5-9 times as long on DuckDB and ClickHouse: 17 s against 2.3 s for 5M on chdb),
    # nor only over customers exposed more than once (ClickHouse then went over a
    # 2 GB bound at 50M events).
    return first_rows(
        dialect, assignments, x.customer_id, [x.exposed_at, x.variant], repeated_only=False, name="exposures"
    )


@dataclass(frozen=True)
class Attribution:
    """``candidates``: events of the experiment's stages and questions whose customer
    was exposed before they arrived (data quality looks at these); ``counted``: those
    that count."""

    candidates: Select[Any]
    counted: Select[Any]


def attribution(dialect: Name, events: FromClause, exposures: FromClause, rules: Rules) -> Attribution:
    e, x = events.c, exposures.c
    is_rating = e.kind.in_(RATING_KINDS)
    answers = [
        and_(
            e.stage == stage,
            or_(e.metric == q.key, e.metric.is_(None), e.metric == "") if q.only_one else e.metric == q.key,
        )
        for stage, q in rules.questions.items()
    ]
    within_scale = [
        and_(e.stage == stage, e.value.between(q.scale_min, q.scale_max)) for stage, q in rules.questions.items()
    ]
    candidates = (
        select(
            e.sequence,
            e.customer_id,
            e.stage,
            case((is_rating, constant("satisfaction")), else_=e.kind).label("kind"),
            e.value,
            e.occurred_at,
            e.received_at,
            e.cutoff,
            x.variant,
            x.exposed_at,
            x.forced,
        )
        .join(exposures, x.customer_id == e.customer_id)
        .where(
            e.stage.in_(rules.stages),
            or_(e.kind == "conversion", and_(is_rating, or_(false(), *answers))),
            or_(e.experiment.is_(None), e.experiment == "", e.experiment == rules.experiment_key),
            x.exposed_at <= e.received_at,
        )
    )
    counted = candidates.where(x.forced == false(), x.exposed_at <= e.cutoff)
    if rules.stopped_at is not None:
        counted = counted.where(e.occurred_at <= dialects.timestamp(dialect, rules.stopped_at))
    counted = counted.where(or_(e.kind == "conversion", or_(false(), *within_scale)))
    return Attribution(candidates, counted)


def outcome_rows(dialect: Name, counted: Select[Any], *, since: datetime | None = None) -> Subquery:
    """One row per customer x stage: the variant, the exposure time, the first
    conversion's time, and the latest rating with its time and storage order; with
    ``since``, also the same as of then (from the events received before it, columns
    suffixed ``_then``), so an increment reads the customers' events once."""
    c = counted.subquery("counted")
    if dialects.has_arg_extremes(dialect):
        return _outcome_aggregates(dialect, c, since)
    order = (c.c.occurred_at.desc(), c.c.sequence.desc())
    by = (c.c.customer_id, c.c.stage, c.c.kind)
    ranks = [func.row_number().over(partition_by=by, order_by=order).label("latest")]
    if since is not None:
        # The latest of those received before ``since`` comes first in this order.
        earlier = case((c.c.received_at < dialects.timestamp(dialect, since), 0), else_=1)
        ranks.append(func.row_number().over(partition_by=by, order_by=(earlier, *order)).label("latest_then"))
    ranked = select(c, *ranks).subquery("ranked")
    r = ranked.c

    def outcome(latest: ColumnElement[Any], suffix: str, only: ColumnElement[bool] | None = None) -> list[Any]:
        converted, rated = r.kind == "conversion", and_(r.kind == "satisfaction", latest == 1)
        if only is not None:
            converted, rated = and_(converted, only), and_(rated, only)
        return [
            func.min(case((converted, r.occurred_at))).label(f"converted_at{suffix}"),
            func.max(case((rated, r.value))).label(f"rating{suffix}"),
            func.max(case((rated, r.occurred_at))).label(f"rated_at{suffix}"),
            func.max(case((rated, r.sequence))).label(f"rating_sequence{suffix}"),
        ]

    columns = outcome(r.latest, "")
    if since is not None:
        columns += outcome(r.latest_then, "_then", r.received_at < dialects.timestamp(dialect, since))
    return (
        select(r.customer_id, r.stage, r.variant, func.min(r.exposed_at).label("exposed_at"), *columns)
        .group_by(r.customer_id, r.stage, r.variant)
        .subquery("outcomes")
    )


def _outcome_aggregates(dialect: Name, counted: Subquery, since: datetime | None) -> Subquery:
    """``outcome_rows`` as one aggregation: the latest rating by ``arg_max`` over
    (time, storage order) instead of a window."""
    r = counted.c

    def outcome(suffix: str, only: ColumnElement[bool] | None = None) -> list[Any]:
        converted, rated = r.kind == "conversion", r.kind == "satisfaction"
        if only is not None:
            converted, rated = and_(converted, only), and_(rated, only)
        return [
            func.min(case((converted, r.occurred_at))).label(f"converted_at{suffix}"),
            dialects.arg_max(dialect, r.value, r.occurred_at, r.sequence, rated).label(f"rating{suffix}"),
            func.max(case((rated, r.occurred_at))).label(f"rated_at{suffix}"),
            dialects.arg_max(dialect, r.sequence, r.occurred_at, r.sequence, rated).label(f"rating_sequence{suffix}"),
        ]

    columns = outcome("")
    if since is not None:
        columns += outcome("_then", r.received_at < dialects.timestamp(dialect, since))
    return (
        select(r.customer_id, r.stage, r.variant, func.min(r.exposed_at).label("exposed_at"), *columns)
        .group_by(r.customer_id, r.stage, r.variant)
        .subquery("outcomes")
    )


def outcome_cells(dialect: Name, outcomes: FromClause) -> list[Select[Any]]:
    """Customers per (kind, stage, variant, value, day) from outcome rows with columns
    stage, variant, exposed_at, converted_at, rating, rated_at: one statement for the
    converters, one for the ratings."""
    o = outcomes.c
    cells = []
    for kind, moment in (("converted", o.converted_at), ("rating", o.rated_at)):
        day = dialects.utc_day(dialect, not_before(moment, o.exposed_at))
        by = [o.stage, o.variant, day] if kind == "converted" else [o.stage, o.variant, o.rating, day]
        cells.append(
            select(
                constant(kind).label("kind"),
                o.stage,
                o.variant,
                (constant(0) if kind == "converted" else o.rating).label("value"),
                day.label("day"),
                func.count().label("n"),
            )
            .where(moment.is_not(None))
            .group_by(*by)
        )
    return cells


def counted_exposures(dialect: Name, exposures: FromClause, *, before: datetime | None = None) -> list[Any]:
    """Which exposures are in the denominators: not forced, and made before
    ``before`` when given (those the warehouse held at the refresh's watermark)."""
    x = exposures.c
    kept = [x.forced == false()]
    if before is not None:
        kept.append(x.exposed_at < dialects.timestamp(dialect, before))
    return kept


def exposure_cells(dialect: Name, exposures: FromClause, *, before: datetime | None = None) -> Select[Any]:
    """Exposed customers per variant and day (``kind = 'exposed'``; the stage is
    ''), of those exposed before ``before`` when given."""
    x = exposures.c
    day = dialects.utc_day(dialect, x.exposed_at)
    return (
        select(
            constant("exposed").label("kind"),
            constant("").label("stage"),
            x.variant,
            constant(0).label("value"),
            day.label("day"),
            func.count().label("n"),
        )
        .where(*counted_exposures(dialect, exposures, before=before))
        .group_by(x.variant, day)
    )


def outcome_days(dialect: Name, outcomes: FromClause) -> Select[Any]:
    """Customers per (stage, variant, conversion day, rating, rating day) from outcome
    rows: one pass over them gives both the converters' and the ratings' cells (an
    engine that inlines a subquery per reference would otherwise compute the outcome
    rows once for each). NULL day: no conversion, or no rating."""
    o = outcomes.c
    converted_day = dialects.utc_day(dialect, not_before(o.converted_at, o.exposed_at)).label("converted_day")
    rated_day = dialects.utc_day(dialect, not_before(o.rated_at, o.exposed_at)).label("rated_day")
    return select(o.stage, o.variant, converted_day, o.rating, rated_day, func.count().label("n")).group_by(
        o.stage, o.variant, converted_day, o.rating, rated_day
    )


@dataclass(frozen=True)
class Statistics:
    """The two statements of an experiment's statistics: exposed customers per
    variant and day (``exposure_cells``), and the outcomes per stage, variant and
    days (``outcome_days``). Summed over days they are what the built-in counters
    hold."""

    exposures: Select[Any]
    outcomes: Select[Any]


def statistics(
    dialect: Name,
    events: FromClause,
    exposures: FromClause,
    rules: Rules,
    *,
    exposed_before: datetime | None = None,
) -> Statistics:
    """``exposed_before`` bounds the exposures counted (those the warehouse held at
    the refresh's watermark)."""
    outcomes = outcome_rows(dialect, attribution(dialect, events, exposures, rules).counted)
    return Statistics(
        exposure_cells(dialect, exposures, before=exposed_before),
        outcome_days(dialect, outcomes),
    )


def exposure_changes(dialect: Name, exposures: FromClause, *, since: datetime, before: datetime) -> Select[Any]:
    """Exposed customers per variant and day as of ``since`` (``n_then``) and as of
    ``before`` (``n``), in one pass."""
    x = exposures.c
    day = dialects.utc_day(dialect, x.exposed_at)

    def exposed_before(moment: datetime) -> ColumnElement[Any]:
        return func.sum(case((x.exposed_at < dialects.timestamp(dialect, moment), constant(1)), else_=constant(0)))

    return (
        select(x.variant, day.label("day"), exposed_before(since).label("n_then"), exposed_before(before).label("n"))
        .where(*counted_exposures(dialect, exposures))
        .group_by(x.variant, day)
    )


def outcome_changes(
    dialect: Name, events: FromClause, exposures: FromClause, rules: Rules, *, since: datetime
) -> Select[Any]:
    """Customers per stage, variant, and outcome days now and then: the outcomes of
    the customers of ``exposures`` from ``events`` (their events' first copies as
    the warehouse holds them now), and as of ``since`` from those received before it
    (the first copy as of then is the first copy if it was received by then: copies
    are ordered by receipt). One pass gives both sides of the change."""
    o = outcome_rows(dialect, attribution(dialect, events, exposures, rules).counted, since=since).c

    def day(moment: ColumnElement[Any], name: str) -> ColumnElement[Any]:
        return dialects.utc_day(dialect, not_before(moment, o.exposed_at)).label(name)

    days = [
        day(o.converted_at, "converted_day"),
        o.rating,
        day(o.rated_at, "rated_day"),
        day(o.converted_at_then, "converted_day_then"),
        o.rating_then,
        day(o.rated_at_then, "rated_day_then"),
    ]
    return select(o.stage, o.variant, *days, func.count().label("n")).group_by(o.stage, o.variant, *days)
