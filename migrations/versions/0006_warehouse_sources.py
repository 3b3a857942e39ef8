"""warehouse_sources, warehouse_source_audit_log, warehouse_stats; experiments.warehouse_source_id

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reviewed: new tables and one nullable column; no existing row changes meaning.
    op.create_table(
        "warehouse_sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events_table", sa.String(256), nullable=False),
        sa.Column("events_columns", sa.JSON(), nullable=False),
        sa.Column("exposures_table", sa.String(256), nullable=False),
        sa.Column("exposures_columns", sa.JSON(), nullable=False),
        sa.Column("export_exposures", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("clock_skew_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "warehouse_source_audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source_id", sa.Integer(), sa.ForeignKey("warehouse_sources.id", ondelete="SET NULL"), nullable=True),
        sa.Column("source_key", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_warehouse_source_audit_log_source_id", "warehouse_source_audit_log", ["source_id"])
    op.create_table(
        "warehouse_stats",
        sa.Column(
            "experiment_id",
            sa.Integer(),
            sa.ForeignKey("experiments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("source_id", sa.Integer(), sa.ForeignKey("warehouse_sources.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cells", sa.JSON(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rules_key", sa.String(64), nullable=True),
        sa.Column("full_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exported_through", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("running_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warehouse_source_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_experiments_warehouse_source_id", "warehouse_sources", ["warehouse_source_id"], ["id"]
        )
        batch_op.create_index("ix_experiments_warehouse_source_id", ["warehouse_source_id"])


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index("ix_experiments_warehouse_source_id")
        batch_op.drop_constraint("fk_experiments_warehouse_source_id", type_="foreignkey")
        batch_op.drop_column("warehouse_source_id")
    op.drop_table("warehouse_stats")
    op.drop_index("ix_warehouse_source_audit_log_source_id", "warehouse_source_audit_log")
    op.drop_table("warehouse_source_audit_log")
    op.drop_table("warehouse_sources")
