"""Webhooks: a job's callback URL and its delivery record

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER most things in place (PostgreSQL just ALTERs).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_url", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("webhook_status", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("webhook_next_at", TZ, nullable=True))
        batch_op.add_column(sa.Column("webhook_last_status_code", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("webhook_last_error", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("webhook_delivered_at", TZ, nullable=True))
        batch_op.create_index("ix_jobs_webhook_status", ["webhook_status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_webhook_status")
        batch_op.drop_column("webhook_delivered_at")
        batch_op.drop_column("webhook_last_error")
        batch_op.drop_column("webhook_last_status_code")
        batch_op.drop_column("webhook_next_at")
        batch_op.drop_column("webhook_attempts")
        batch_op.drop_column("webhook_status")
        batch_op.drop_column("callback_url")
