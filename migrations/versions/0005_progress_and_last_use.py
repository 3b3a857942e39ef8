"""analysis_jobs progress; api_keys.last_used_at; users.last_login_at

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reviewed: nullable columns only; existing rows have no progress, use or login on record.
    with op.batch_alter_table("analysis_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress_done", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_total", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sampling_started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("last_login_at")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
    with op.batch_alter_table("analysis_jobs", schema=None) as batch_op:
        batch_op.drop_column("progress_at")
        batch_op.drop_column("sampling_started_at")
        batch_op.drop_column("progress_total")
        batch_op.drop_column("progress_done")
