"""warehouse_stats.segments and segments_at: a warehouse experiment's segments

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reviewed: nullable columns only; existing statistics have no segments until their next full recomputation.
    with op.batch_alter_table("warehouse_stats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("segments", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("segments_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("warehouse_stats", schema=None) as batch_op:
        batch_op.drop_column("segments_at")
        batch_op.drop_column("segments")
