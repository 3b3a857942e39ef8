"""journeys, rating questions and journey counters

Every existing experiment moves into a journey: experiments with the same stage list
share one (the default five stages make the journey ``default``), and each
experiment's satisfaction scale becomes that journey's rating question at each of
its stages (``<stage>-rating`` for the first scale seen at a stage, then
``<stage>-rating-<min>-<max>``). The outcome rows and counters are keyed by
experiment and stage, as before, so stored ratings count exactly as they did. A
stored rating that a report counts, at a stage that now has several questions, is
marked with its experiment's question so that a rebuild counts it the same way.
The journey map's counters start empty: ``expplatform events rebuild`` fills them
from the stored events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 03:42:27.328288
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reviewed: the journey tables, then existing experiments moved into journeys (below).
    op.create_table(
        "journey_outcomes",
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("rated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rating_event_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("journey_id", "customer_id", "stage", "metric", name=op.f("pk_journey_outcomes")),
    )
    op.create_table(
        "journeys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("persona_attribute", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journeys")),
        sa.UniqueConstraint("key", name=op.f("uq_journeys_key")),
    )
    op.create_table(
        "journey_audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("journey_id", sa.Integer(), nullable=True),
        sa.Column("journey_key", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=300), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["journey_id"], ["journeys.id"], name=op.f("fk_journey_audit_log_journey_id_journeys"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_audit_log")),
    )
    with op.batch_alter_table("journey_audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_journey_audit_log_journey_id"), ["journey_id"], unique=False)

    op.create_table(
        "journey_counts",
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("customers", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('converted', 'rating')", name=op.f("ck_journey_counts_kind")),
        sa.ForeignKeyConstraint(
            ["journey_id"], ["journeys.id"], name=op.f("fk_journey_counts_journey_id_journeys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "journey_id", "stage", "metric", "persona", "day", "kind", "value", name=op.f("pk_journey_counts")
        ),
    )
    op.create_table(
        "journey_personas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["journey_id"], ["journeys.id"], name=op.f("fk_journey_personas_journey_id_journeys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_personas")),
        sa.UniqueConstraint("journey_id", "key", name=op.f("uq_journey_personas_journey_id_key")),
    )
    op.create_table(
        "journey_stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("touchpoints", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["journey_id"], ["journeys.id"], name=op.f("fk_journey_stages_journey_id_journeys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_stages")),
        sa.UniqueConstraint("journey_id", "key", name=op.f("uq_journey_stages_journey_id_key")),
    )
    with op.batch_alter_table("journey_stages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_journey_stages_key"), ["key"], unique=False)

    op.create_table(
        "rating_questions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("scale_min", sa.Integer(), nullable=False),
        sa.Column("scale_max", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint("scale_min < scale_max", name=op.f("ck_rating_questions_scale")),
        sa.ForeignKeyConstraint(
            ["journey_id"], ["journeys.id"], name=op.f("fk_rating_questions_journey_id_journeys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rating_questions")),
        sa.UniqueConstraint("key", name=op.f("uq_rating_questions_key")),
    )
    with op.batch_alter_table("rating_questions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rating_questions_stage"), ["stage"], unique=False)

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metric", sa.String(length=64), nullable=True))

    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("journey_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("metrics", sa.JSON(), nullable=True))

    _experiments_into_journeys(op.get_bind())

    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.alter_column("journey_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("metrics", existing_type=sa.JSON(), nullable=False)
        batch_op.create_index(batch_op.f("ix_experiments_journey_id"), ["journey_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_experiments_journey_id_journeys"), "journeys", ["journey_id"], ["id"]
        )
        batch_op.drop_constraint(batch_op.f("ck_experiments_scale"), type_="check")
        batch_op.drop_column("scale_max")
        batch_op.drop_column("scale_min")


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scale_min", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("scale_max", sa.Integer(), nullable=True))

    _scales_back(op.get_bind())

    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.alter_column("scale_min", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("scale_max", existing_type=sa.Integer(), nullable=False)
        batch_op.create_check_constraint(batch_op.f("ck_experiments_scale"), "scale_min < scale_max")
        batch_op.drop_constraint(batch_op.f("fk_experiments_journey_id_journeys"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_experiments_journey_id"))
        batch_op.drop_column("metrics")
        batch_op.drop_column("journey_id")

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("metric")

    with op.batch_alter_table("rating_questions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rating_questions_stage"))

    op.drop_table("rating_questions")
    with op.batch_alter_table("journey_stages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journey_stages_key"))

    op.drop_table("journey_stages")
    op.drop_table("journey_personas")
    op.drop_table("journey_counts")
    with op.batch_alter_table("journey_audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journey_audit_log_journey_id"))

    op.drop_table("journey_audit_log")
    op.drop_table("journeys")
    op.drop_table("journey_outcomes")


# Frozen copies of the rules as they were when this migration was written: the
# application's own may change later, a migration must not.
_DEFAULT_STAGES = ["awareness", "consideration", "purchase", "retention", "advocacy"]

_journeys = sa.table(
    "journeys",
    sa.column("id", sa.Integer),
    sa.column("key", sa.String),
    sa.column("name", sa.String),
    sa.column("description", sa.Text),
    sa.column("persona_attribute", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
_stages = sa.table(
    "journey_stages",
    sa.column("journey_id", sa.Integer),
    sa.column("key", sa.String),
    sa.column("name", sa.String),
    sa.column("position", sa.Integer),
    sa.column("goal", sa.Text),
    sa.column("touchpoints", sa.JSON),
)
_questions = sa.table(
    "rating_questions",
    sa.column("journey_id", sa.Integer),
    sa.column("key", sa.String),
    sa.column("stage", sa.String),
    sa.column("text", sa.Text),
    sa.column("scale_min", sa.Integer),
    sa.column("scale_max", sa.Integer),
    sa.column("position", sa.Integer),
)
_experiments = sa.table(
    "experiments",
    sa.column("id", sa.Integer),
    sa.column("stages", sa.JSON),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("scale_min", sa.Integer),
    sa.column("scale_max", sa.Integer),
    sa.column("journey_id", sa.Integer),
    sa.column("metrics", sa.JSON),
    sa.column("target_stage", sa.String),
)


def _stage_name(key: str) -> str:
    return key.replace("-", " ").replace("_", " ").capitalize()


def _free(candidates: list[str], taken: set[str]) -> str:
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    base = candidates[-1][:58]
    return next(f"{base}-{n}" for n in range(2, 10**6) if f"{base}-{n}" not in taken)


def _experiments_into_journeys(bind: Any) -> None:
    rows = bind.execute(
        sa.select(
            _experiments.c.id,
            _experiments.c.stages,
            _experiments.c.scale_min,
            _experiments.c.scale_max,
            _experiments.c.created_at,
        ).order_by(_experiments.c.id)
    ).all()
    journey_of: dict[tuple[str, ...], int] = {}
    journey_keys: set[str] = set()
    question_keys: set[str] = set()
    # (journey id, stage, min, max) -> question key; questions per (journey, stage).
    question_of: dict[tuple[int, str, int, int], str] = {}
    per_stage: dict[tuple[int, str], int] = {}
    positions: dict[int, int] = {}
    for experiment_id, stages, scale_min, scale_max, created_at in rows:
        stages = json.loads(stages) if isinstance(stages, str) else stages
        shape = tuple(stages)
        if shape not in journey_of:
            default = list(shape) == _DEFAULT_STAGES
            digest = hashlib.sha1("\n".join(shape).encode()).hexdigest()[:10]
            key = _free(["default" if default else f"journey-{digest}"], journey_keys)
            journey_keys.add(key)
            name = "Default journey" if default else ("Journey: " + " → ".join(shape))[:200]
            journey_id = bind.execute(
                _journeys.insert()
                .values(
                    key=key,
                    name=name,
                    description="Made from the stages of existing experiments when journeys were introduced.",
                    persona_attribute="persona",
                    created_at=created_at,
                    updated_at=created_at,
                )
                .returning(_journeys.c.id)
            ).scalar_one()
            bind.execute(
                _stages.insert(),
                [
                    {
                        "journey_id": journey_id,
                        "key": stage,
                        "name": _stage_name(stage),
                        "position": i,
                        "goal": "",
                        "touchpoints": [],
                    }
                    for i, stage in enumerate(shape)
                ],
            )
            journey_of[shape] = journey_id
            positions[journey_id] = 0
        journey_id = journey_of[shape]
        metrics: dict[str, str] = {}
        for stage in shape:
            found = question_of.get((journey_id, stage, scale_min, scale_max))
            if found is None:
                trimmed = stage[: 64 - len(f"-rating-{scale_min}-{scale_max}")]
                found = _free([f"{stage[:57]}-rating", f"{trimmed}-rating-{scale_min}-{scale_max}"], question_keys)
                question_keys.add(found)
                bind.execute(
                    _questions.insert().values(
                        journey_id=journey_id,
                        key=found,
                        stage=stage,
                        text=f"How would you rate the {_stage_name(stage).lower()} step? ({scale_min}-{scale_max})",
                        scale_min=scale_min,
                        scale_max=scale_max,
                        position=positions[journey_id],
                    )
                )
                positions[journey_id] += 1
                question_of[(journey_id, stage, scale_min, scale_max)] = found
                per_stage[(journey_id, stage)] = per_stage.get((journey_id, stage), 0) + 1
            metrics[stage] = found
        bind.execute(
            _experiments.update()
            .where(_experiments.c.id == experiment_id)
            .values(journey_id=journey_id, metrics=metrics)
        )
    _mark_ambiguous_ratings(bind, {key for key, n in per_stage.items() if n > 1})


def _mark_ambiguous_ratings(bind: Any, ambiguous: set[tuple[int, str]]) -> None:
    """Name the question of each counted rating at a stage that now has several."""
    if not ambiguous:
        return
    experiments = bind.execute(sa.select(_experiments.c.id, _experiments.c.journey_id, _experiments.c.metrics)).all()
    for experiment_id, journey_id, metrics in experiments:
        metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
        for stage, question in metrics.items():
            if (journey_id, stage) not in ambiguous:
                continue
            bind.execute(
                sa.text(
                    "UPDATE events SET metric = :question WHERE metric IS NULL AND id IN "
                    "(SELECT rating_event_id FROM outcomes WHERE experiment_id = :experiment AND stage = :stage "
                    "AND rating_event_id IS NOT NULL)"
                ),
                {"question": question, "experiment": experiment_id, "stage": stage},
            )


def _scales_back(bind: Any) -> None:
    """Each experiment's scale from the question it measured at its target stage."""
    scales = {
        key: (lo, hi)
        for key, lo, hi in bind.execute(sa.select(_questions.c.key, _questions.c.scale_min, _questions.c.scale_max))
    }
    for experiment_id, metrics, target in bind.execute(
        sa.select(_experiments.c.id, _experiments.c.metrics, _experiments.c.target_stage)
    ).all():
        metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
        question = metrics.get(target) or next(iter(metrics.values()), None)
        lo, hi = scales.get(question, (1, 5))
        bind.execute(_experiments.update().where(_experiments.c.id == experiment_id).values(scale_min=lo, scale_max=hi))
