"""Database tables. Columns and constraints only: the wire format lives in
``api/schemas.py`` and behaviour in the service modules."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .db import Base

# The vocabularies of the text columns, once: the services type with these, and each
# column's CHECK constraint is written from the same list.
Role = Literal["viewer", "editor", "admin"]
Scope = Literal["client", "admin"]
ExperimentStatus = Literal["draft", "running", "paused", "stopped"]
EventType = Literal["conversion", "satisfaction"]
OutcomeKind = Literal["converted", "rating"]
QualityKind = Literal["before_exposure", "after_stop", "forced", "not_exposed"]


def _one_of(column: str, vocabulary: Any) -> CheckConstraint:
    values = ", ".join(f"'{value}'" for value in get_args(vocabulary))
    return CheckConstraint(f"{column} IN ({values})", name=column)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime | None) -> str | None:
    """A stored (UTC) time as the API and the reports write it: ISO 8601 ending in Z."""
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases.

    SQLite keeps no zone, so values are normalised to UTC on the way in and marked
    UTC on the way out; comparisons then behave the same on SQLite and PostgreSQL.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Big integer ids on PostgreSQL, plain INTEGER (the rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When a login last succeeded (the accounts page lists it for admins).
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (_one_of("role", Role),)


class LoginSession(Base):
    """A logged-in browser. The cookie carries a random token and this table only its
    SHA-256, so a session can be ended on the server (logout, password change, expiry)
    and a copied cookie stops working with it. ``expires_at`` slides forward while
    the session is used."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LoginAttempt(Base):
    """A login attempt that failed (or is being checked): counted per account and per
    client address over a recent window to throttle password guessing, in the database
    so that every worker and machine sees the same counts. A success deletes its
    account's rows; rows older than the window are pruned."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)

    __table_args__ = (Index(None, "email", "at"), Index(None, "address", "at"))


class ApiKey(Base):
    """A bearer key. Only a SHA-256 digest is stored: keys are 256-bit random, so a
    fast digest is safe and keeps authentication off the assignment hot path's
    critical cost (a slow password hash would not)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(300))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When a request last authenticated with the key, to the minute: written off the
    # request path, at most once a minute per key (``key_usage``).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (_one_of("scope", Scope),)


class Journey(Base):
    """A customer journey: ordered stages met at touchpoints, the personas it is
    designed for, and the rating questions asked along it. Experiments belong to one
    and test one of its stages; events name its stages and questions."""

    __tablename__ = "journeys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # The customer attribute whose values are the personas (sent with assign calls).
    persona_attribute: Mapped[str] = mapped_column(String(64), default="persona")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    stages: Mapped[list[JourneyStage]] = relationship(
        back_populates="journey", order_by="JourneyStage.position", cascade="all, delete-orphan"
    )
    personas: Mapped[list[JourneyPersona]] = relationship(
        back_populates="journey", order_by="JourneyPersona.position", cascade="all, delete-orphan"
    )
    questions: Mapped[list[RatingQuestion]] = relationship(
        back_populates="journey", order_by="RatingQuestion.position", cascade="all, delete-orphan"
    )


class JourneyStage(Base):
    __tablename__ = "journey_stages"

    id: Mapped[int] = mapped_column(primary_key=True)
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    # The stage's conversion goal in words ("placed an order").
    goal: Mapped[str] = mapped_column(Text, default="")
    # Where customers meet the stage: screens, emails, calls.
    touchpoints: Mapped[list[str]] = mapped_column(JSON, default=list)

    journey: Mapped[Journey] = relationship(back_populates="stages")

    __table_args__ = (UniqueConstraint("journey_id", "key"),)


class JourneyPersona(Base):
    """A persona: one value of the journey's persona attribute, with a name."""

    __tablename__ = "journey_personas"

    id: Mapped[int] = mapped_column(primary_key=True)
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer)

    journey: Mapped[Journey] = relationship(back_populates="personas")

    __table_args__ = (UniqueConstraint("journey_id", "key"),)


class RatingQuestion(Base):
    """A rating question (a satisfaction metric) asked at one stage of a journey.
    Keys are unique across journeys, so a rating event names its question alone;
    ratings are validated against the question's scale, never an experiment's."""

    __tablename__ = "rating_questions"

    id: Mapped[int] = mapped_column(primary_key=True)
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64), unique=True)
    stage: Mapped[str] = mapped_column(String(64), index=True)
    text: Mapped[str] = mapped_column(Text)
    scale_min: Mapped[int] = mapped_column(Integer)
    scale_max: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)

    journey: Mapped[Journey] = relationship(back_populates="questions")

    __table_args__ = (CheckConstraint("scale_min < scale_max", name="scale"),)


class JourneyAuditEntry(Base):
    __tablename__ = "journey_audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    journey_id: Mapped[int | None] = mapped_column(ForeignKey("journeys.id", ondelete="SET NULL"), index=True)
    journey_key: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WarehouseSource(Base):
    """An analytical database holding customer events (and the exposures, exported
    there or its own), mapped column by column to what attribution needs."""

    __tablename__ = "warehouse_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # A SQLAlchemy URL, credentials included: never shown back (``warehouse.sources``).
    url: Mapped[str] = mapped_column(Text)
    events_table: Mapped[str] = mapped_column(String(256))
    # role -> column name (``warehouse.query.EVENT_ROLES``).
    events_columns: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    exposures_table: Mapped[str] = mapped_column(String(256))
    exposures_columns: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # The platform copies each warehouse experiment's exposures into exposures_table
    # before computing (``warehouse export``); False: the table is the warehouse's own.
    export_exposures: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The tolerance for an event time ahead of its exposure, for events without a
    # cutoff column: fixed with the source, never today's ingest setting.
    clock_skew_seconds: Mapped[float] = mapped_column(Float, default=5.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class WarehouseSourceAuditEntry(Base):
    """Who created, changed or deleted a warehouse source, and which fields; the URL
    appears only with its password masked (``warehouse.sources``)."""

    __tablename__ = "warehouse_source_audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("warehouse_sources.id", ondelete="SET NULL"), index=True)
    source_key: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WarehouseStats(Base):
    """The statistics last computed in an experiment's warehouse, with when and how
    long it took; a report reads these, never the warehouse itself."""

    __tablename__ = "warehouse_stats"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("warehouse_sources.id", ondelete="CASCADE"))
    # [kind, stage, variant key, value, ISO day, customers] per non-empty cell.
    cells: Mapped[list[list[Any]] | None] = mapped_column(JSON)
    computed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    seconds: Mapped[float | None] = mapped_column(Float)
    # The cells hold the events received before the watermark, under these rules
    # (``refresh.rules_key``); the last full recomputation's time (between two, a
    # refresh adds what changed since the watermark).
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rules_key: Mapped[str | None] = mapped_column(String(64))
    full_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The last exposure (id) copied into the warehouse (``export_exposures``).
    exported_through: Mapped[int | None] = mapped_column(BigInteger)
    # Per exposure attribute, its segments' cells, computed at the last full
    # recomputation (``warehouse.segments``: increments do not touch them), and when.
    segments: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    segments_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The last refresh's failure, shown on the report until one succeeds.
    error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A refresh asked for and not yet done (the fit worker takes it).
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    running_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id"), index=True)
    # The journey stages measured (in journey order) and, per measured stage that has
    # one, the rating question measured there: stage key -> question key.
    stages: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    target_stage: Mapped[str] = mapped_column(String(64), index=True)
    # Seed of every hash for this experiment; equal to the key unless set otherwise.
    salt: Mapped[str] = mapped_column(String(128))
    traffic: Mapped[float] = mapped_column(Float, default=1.0)
    targeting: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    layer: Mapped[str | None] = mapped_column(String(64), index=True)
    # Share of the layer's hash space this experiment holds, and the buckets it was
    # given ([[start, end), ...] out of LAYER_BUCKETS) when it joined the layer.
    layer_share: Mapped[float | None] = mapped_column(Float)
    layer_ranges: Mapped[list[list[int]] | None] = mapped_column(JSON)
    decision: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prior: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # QA overrides: customer id -> variant key. Served, marked, excluded from analysis.
    forced_variants: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    cloned_from: Mapped[str | None] = mapped_column(String(64))
    # Its exposures and events were written by the simulator (`expplatform simulate`,
    # the demo): every page that shows its data says so.
    simulated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Its outcomes live in this warehouse (``expplatform.warehouse``): its reports read
    # the statistics computed there, not the built-in counters.
    warehouse_source_id: Mapped[int | None] = mapped_column(ForeignKey("warehouse_sources.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    journey: Mapped[Journey] = relationship()
    warehouse_source: Mapped[WarehouseSource | None] = relationship()
    variants: Mapped[list[Variant]] = relationship(
        back_populates="experiment", order_by="Variant.position", cascade="all, delete-orphan"
    )

    __table_args__ = (
        _one_of("status", ExperimentStatus),
        CheckConstraint("traffic > 0 AND traffic <= 1", name="traffic"),
    )


class Variant(Base):
    __tablename__ = "variants"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    weight: Mapped[float] = mapped_column(Float)
    position: Mapped[int] = mapped_column(Integer)
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)

    experiment: Mapped[Experiment] = relationship(back_populates="variants")

    __table_args__ = (
        UniqueConstraint("experiment_id", "key"),
        CheckConstraint("weight > 0", name="weight"),
    )


class DefinitionsVersion(Base):
    """One row whose counter goes up on every experiment change, so every worker can
    tell with one primary-key read whether its cached definitions are stale."""

    __tablename__ = "definitions_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="SET NULL"), index=True)
    experiment_key: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Exposure(Base):
    """The first assignment of an enrolled customer: the denominator of every metric."""

    __tablename__ = "exposures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(String(256))
    exposed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    # Times this customer was later computed into another variant than recorded.
    mismatches: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        # Customer first: the same index answers "this customer's exposures" for the
        # assignment hot path and for event attribution, so no second index is kept.
        UniqueConstraint("customer_id", "experiment_id"),
        # Covers the exposed-per-variant count of every report (forced ones excluded).
        Index(None, "experiment_id", "variant_id", "forced"),
        # The few flagged exposures (QA, mismatched) that data quality counts: a report
        # reads them directly instead of scanning every exposure. The predicate is
        # spelled as the query spells it (SQLite matches partial indexes textually).
        Index(
            "ix_exposures_flagged",
            "experiment_id",
            sqlite_where=text("forced = 1 OR mismatches > 0"),
            postgresql_where=text("forced OR mismatches > 0"),
        ),
    )


class Event(Base):
    """A stage outcome as the client sent it: the source of truth for outcomes."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    customer_id: Mapped[str] = mapped_column(String(256))
    stage: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    # The rating question a satisfaction event answers; None for conversions, and for
    # ratings sent without one (each journey's one question at the stage, if single).
    metric: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    experiment_key: Mapped[str | None] = mapped_column(String(64))
    # How many experiments the event was attributed to (0: matched no exposure).
    attributed: Mapped[int] = mapped_column(Integer, default=0)
    # The latest exposure time this event can follow: min(occurred_at + clock skew,
    # received_at), fixed at ingest so a rebuild judges "exposed before" exactly alike.
    exposure_cutoff: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        _one_of("type", EventType),
        Index(None, "customer_id"),
    )


class Outcome(Base):
    """One row per experiment x customer x stage, kept exactly in step with the raw
    events at ingest so a report reads O(customers), not O(events). Rebuildable from
    ``events`` and ``exposures``.

    No foreign keys: rows are derived data written only by ingest and the rebuild,
    with ids read from ``exposures`` (which has them) in the same transaction, and
    experiments are never deleted. On PostgreSQL the per-row key checks share-locked
    the experiment and variant rows on every insert, a sixth of ingest time."""

    __tablename__ = "outcomes"

    experiment_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    variant_id: Mapped[int] = mapped_column(Integer)
    converted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rating: Mapped[int | None] = mapped_column(Integer)
    rated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # events.id of the rating kept: breaks ties between ratings given at the same time
    # (the one stored last wins), so ingest order and a rebuild always agree.
    rating_event_id: Mapped[int | None] = mapped_column(BigInteger)


class OutcomeCount(Base):
    """Customers per experiment x stage x variant x UTC day who converted that day
    (kind ``converted``, value 0) or whose latest rating, given that day, is
    ``value`` (kind ``rating``); an outcome is dated no earlier than its exposure.
    Moved in the same transaction as the outcome rows they summarise, so a report
    sums a few cells per day instead of grouping millions of outcome rows, and the
    daily series reads the same cells."""

    __tablename__ = "outcome_counts"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, primary_key=True)
    customers: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (_one_of("kind", OutcomeKind),)


class EventQualityCount(Base):
    """Events at one of an experiment's stages that did not count for it, by reason:
    ``before_exposure``, ``after_stop``, ``forced`` (QA customer) or ``not_exposed``
    (the event named the experiment, the customer was never exposed to it)."""

    __tablename__ = "event_quality_counts"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (_one_of("kind", QualityKind),)


class UnmatchedEventCount(Base):
    """Events, per UTC day received and stage, whose customer had no exposure to any
    experiment measuring that stage: they belong to no experiment, so they are kept
    by day and each report sums the days of its own run."""

    __tablename__ = "unmatched_event_counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, default=0)


class JourneyOutcome(Base):
    """One row per journey x customer x stage (``metric`` '') or question (``metric``
    the question key): the customer's first conversion at the stage, or latest rating
    to the question, whatever experiment they are in; kept at ingest like
    ``outcomes``, so the journey map counts each customer once. ``persona`` is the
    journey's persona attribute as the customer's exposures carried it when the row
    was made ('' when unknown or not one of the journey's personas)."""

    __tablename__ = "journey_outcomes"

    journey_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    persona: Mapped[str] = mapped_column(String(64), default="")
    converted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rating: Mapped[int | None] = mapped_column(Integer)
    rated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rating_event_id: Mapped[int | None] = mapped_column(BigInteger)


class JourneyCount(Base):
    """Customers per journey x stage x question ('' for conversions) x persona x UTC
    day: who first converted at the stage that day (kind ``converted``, value 0), or
    whose latest rating, given that day, is ``value`` (kind ``rating``). The journey
    map sums a period's days of these cells, whatever the number of events."""

    __tablename__ = "journey_counts"

    journey_id: Mapped[int] = mapped_column(ForeignKey("journeys.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    persona: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, primary_key=True)
    customers: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (_one_of("kind", OutcomeKind),)


class AnalysisJob(Base):
    """A full-model (PyMC) fit run outside the request."""

    __tablename__ = "analysis_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    requested_by: Mapped[str] = mapped_column(String(300))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The sampler's progress, written by the worker at most twice a second: iterations
    # done of the total (tuning included, all chains), when sampling began (after the
    # model was built and compiled) and when ``progress_done`` was last written.
    progress_done: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    sampling_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint("status IN ('queued', 'running', 'finished', 'failed')", name="status"),)
